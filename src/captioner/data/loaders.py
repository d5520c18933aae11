"""Training batches: (image, caption) pairs, length-bucketed, from the feature cache or pixels."""
from __future__ import annotations

from typing import Callable, Iterator, Optional

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from .augment import AugmentConfig, augment_image
from .images import ImageReadError, PreprocessConfig, build_transform, load_image
from .sources import DatasetError, Example
from .vocab import Vocabulary


class CaptionPairs:
    """Every (image row, caption) pair of a split, captions encoded once (in their languages) into one
    padded array."""

    def __init__(self, examples: list[Example], rows: list[int], vocab: Vocabulary, max_length: int):
        encoded, image_rows, languages = [], [], []
        for example, row in zip(examples, rows):
            for caption, language in zip(example.captions, example.caption_languages(vocab.default_language)):
                encoded.append(vocab.encode(caption, max_length, language))
                image_rows.append(row)
                languages.append(vocab.check_language(language))
        self.lengths = np.array([len(ids) for ids in encoded], dtype=np.int64)
        # <start> [<2xx>] tokens <end>: a language token makes a caption one longer than max_length + 2
        self.tokens = np.full((len(encoded), int(self.lengths.max(initial=2))), vocab.pad_id, dtype=np.int64)
        for i, ids in enumerate(encoded):
            self.tokens[i, : len(ids)] = ids
        self.image_rows = np.array(image_rows, dtype=np.int64)
        self.languages = np.array(languages)  # each pair's caption language
        self.in_default_language = np.array([lang == vocab.default_language for lang in languages], dtype=bool)

    def __len__(self) -> int:
        return len(self.lengths)

    def epoch_pairs(self, epoch: int, seed: int, other_languages: int) -> np.ndarray:
        """The pairs an epoch trains on when images are captioned in many languages: every caption
        of each image in the default language, plus ``other_languages`` of its other captions drawn
        at random (a new draw each epoch, seeded): multilingual training at a few times the cost of
        one language's, every language seen over the epochs. The count is the same every epoch."""
        rng = np.random.default_rng((seed, epoch, 2))
        keys = rng.random(len(self.lengths))  # a random order within each image's other captions
        others = np.flatnonzero(~self.in_default_language)
        order = others[np.lexsort((keys[others], self.image_rows[others]))]  # by image, randomly within it
        first = np.searchsorted(self.image_rows[order], self.image_rows[order], side="left")
        picked = order[np.arange(len(order)) - first < other_languages]
        return np.sort(np.concatenate([np.flatnonzero(self.in_default_language), picked]))

    def captions(self, indices: np.ndarray) -> torch.Tensor:
        """Padded token ids (batch, longest in batch)."""
        longest = int(self.lengths[indices].max())
        return torch.from_numpy(self.tokens[indices, :longest])


class BucketBatchSampler(Sampler[list[int]]):
    """Shuffled batches of similar caption length (less padding), sharded across ranks.

    Each epoch: shuffle, cut into pools of ``pool`` global batches, sort each pool by length,
    cut into global batches of ``batch_size × world_size``, shuffle them; rank r takes every
    world-th pair of each global batch. So the union of the ranks' batches at a step is the
    batch one process would train on with ``batch_size × world_size`` (same seed): with
    gradients weighted by token share and synchronised BatchNorm, DDP computes the same
    update. Every rank steps the same number of times; no batch is repeated.
    """

    def __init__(
        self,
        lengths: np.ndarray,
        batch_size: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        pool: int = 50,
        shuffle: bool = True,
        epoch_pairs: Optional[Callable[[int], np.ndarray]] = None,
    ):
        self.world_size = world_size
        self.epoch_pairs = epoch_pairs  # epoch → the pairs it trains on (default: every pair)
        self.size = len(lengths) if epoch_pairs is None else len(epoch_pairs(0))
        if self.size < self._smallest:
            raise DatasetError(
                f"{len(lengths)} training caption(s) with {world_size} process(es): training needs at least "
                f"{self._smallest} (BatchNorm cannot learn from one sample, and every process needs one); add captions"
            )
        self.lengths = lengths
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.pool = pool
        self.shuffle = shuffle
        self.epoch = 0

    @property
    def global_batch_size(self) -> int:
        return self.batch_size * self.world_size

    @property
    def _smallest(self) -> int:
        # BatchNorm cannot train on one sample, and every rank needs at least one.
        return max(2, self.world_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _pool_sizes(self) -> list[int]:
        n, pool_size = self.size, self.global_batch_size * self.pool
        sizes = [min(pool_size, n - start) for start in range(0, n, pool_size)]
        if len(sizes) > 1 and sizes[-1] < self._smallest:
            sizes[-2:] = [sum(sizes[-2:])]  # too few to batch alone: join the previous pool
        return sizes

    def _cut(self, size: int) -> list[int]:
        """Batch boundaries of a pool of ``size`` pairs: a too-small leftover joins its neighbour."""
        bounds = list(range(0, size, self.global_batch_size)) + [size]
        if len(bounds) > 2 and bounds[-1] - bounds[-2] < self._smallest:
            del bounds[-2]
        return bounds

    def global_batches(self) -> list[np.ndarray]:
        """This epoch's batches over all ranks, in training order."""
        rng = np.random.default_rng((self.seed, self.epoch))
        pairs = np.arange(len(self.lengths)) if self.epoch_pairs is None else self.epoch_pairs(self.epoch)
        order = pairs[rng.permutation(len(pairs))] if self.shuffle else pairs
        batches, start = [], 0
        for size in self._pool_sizes():
            chunk = order[start : start + size]
            chunk = chunk[np.argsort(self.lengths[chunk], kind="stable")]
            bounds = self._cut(size)
            batches.extend(chunk[a:b] for a, b in zip(bounds[:-1], bounds[1:]))
            start += size
        if self.shuffle:
            batches = [batches[i] for i in rng.permutation(len(batches))]
        return batches

    def __iter__(self) -> Iterator[np.ndarray]:
        for batch in self.global_batches():
            # Strided, not contiguous: the batch is sorted by length, so each rank gets a
            # similar share of tokens (balanced step times).
            yield batch[self.rank :: self.world_size]

    def __len__(self) -> int:
        return sum(len(self._cut(size)) - 1 for size in self._pool_sizes())


class PixelPairs(Dataset):
    """(pixels, pair index) for training a fine-tuned encoder from images: item ``(i, view)`` is
    pair ``i``'s image (``view`` 0) or its augmented view ``view`` (1..K), the image the views
    cache of a frozen encoder holds there: ``augment_image`` with seed ``(view - 1) × images +
    position`` (``images``: the dataset's image count, ``positions``: each path's place in the
    dataset). Never a mirror image."""

    def __init__(self, paths: list[str], pairs: CaptionPairs, preprocess: PreprocessConfig,
                 augment: AugmentConfig | None = None, images: int = 0, positions: np.ndarray | None = None):
        self.paths = paths
        self.pairs = pairs
        self.transform = build_transform(preprocess)
        self.augment, self.images, self.positions = augment, images, positions

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, item: tuple[int, int]):
        i, view = item
        row = self.pairs.image_rows[i]
        if view == 0:
            return self.transform(self.paths[row]), i
        seed = (view - 1) * self.images + int(self.positions[row])
        return self.transform(augment_image(load_image(self.paths[row]), self.augment, seed=seed)), i


class ImageRows(Dataset):
    """Preprocessed pixels of a list of image paths: ``(pixels, index)`` per item.

    Validation and feature extraction read images that were checked beforehand, so a bad
    file raises there. Batch captioning passes ``report_errors=True``: each item is then
    ``(pixels or None, index, error or None)``, so one bad file never stops a batch; batch
    such items with :func:`collate_with_errors`.
    """

    def __init__(self, paths: list[str], preprocess: PreprocessConfig, report_errors: bool = False):
        self.paths = paths
        self.transform = build_transform(preprocess)
        self.report_errors = report_errors

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        if not self.report_errors:
            return self.transform(self.paths[i]), i
        try:
            return self.transform(self.paths[i]), i, None
        except ImageReadError as e:
            return None, i, str(e)
        except Exception as e:  # a decoder crash inside PIL for one file
            return None, i, f"{self.paths[i]}: {type(e).__name__}: {e}"


class AugmentedRows(Dataset):
    """``(pixels, index)`` of augmented views: item ``i`` is ``augment_image(paths[i], seed=i)``
    through the preprocessing (so any subset of the items gets the views the whole list would)."""

    def __init__(self, paths: list[str], preprocess: PreprocessConfig, augment: AugmentConfig):
        self.paths = paths
        self.augment = augment
        self.transform = build_transform(preprocess)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        image = augment_image(load_image(self.paths[i]), self.augment, seed=i)
        return self.transform(image), i


def collate_with_errors(items) -> tuple[torch.Tensor | None, list[int], list[tuple[int, str]]]:
    """Batch ``ImageRows(..., report_errors=True)`` items: (pixels of the readable images or
    None, their indices, (index, error) of the others)."""
    good = [(pixels, i) for pixels, i, error in items if pixels is not None]
    pixels = torch.stack([p for p, _ in good]) if good else None  # (readable, 3, H, W)
    return pixels, [i for _, i in good], [(i, error) for _, i, error in items if error is not None]
