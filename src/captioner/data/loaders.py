"""Training batches: (image, caption) pairs, length-bucketed, from the feature cache or pixels."""
from __future__ import annotations

import math
from typing import Iterator

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from .images import PreprocessConfig, build_transform, load_image
from .sources import Example
from .vocab import Vocabulary


class CaptionPairs:
    """Every (image row, caption) pair of a split, captions encoded once into one padded array."""

    def __init__(self, examples: list[Example], rows: list[int], vocab: Vocabulary, max_length: int):
        encoded, image_rows = [], []
        for example, row in zip(examples, rows):
            for caption in example.captions:
                encoded.append(vocab.encode(caption, max_length))
                image_rows.append(row)
        self.lengths = np.array([len(ids) for ids in encoded], dtype=np.int64)
        self.tokens = np.full((len(encoded), max_length + 2), vocab.pad_id, dtype=np.int64)
        for i, ids in enumerate(encoded):
            self.tokens[i, : len(ids)] = ids
        self.image_rows = np.array(image_rows, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.lengths)

    def captions(self, indices: np.ndarray) -> torch.Tensor:
        """Padded token ids (batch, longest in batch)."""
        longest = int(self.lengths[indices].max())
        return torch.from_numpy(self.tokens[indices, :longest])


class BucketBatchSampler(Sampler[list[int]]):
    """Shuffled batches of similar caption length (less padding), sharded across ranks.

    Each epoch: shuffle, cut into pools of ``pool`` batches, sort each pool by length, cut
    into batches, shuffle the batches. Every rank gets the same number of batches.
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
    ):
        self.lengths = lengths
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.pool = pool
        self.shuffle = shuffle
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _all_batches(self) -> list[np.ndarray]:
        n = len(self.lengths)
        rng = np.random.default_rng((self.seed, self.epoch))
        order = rng.permutation(n) if self.shuffle else np.arange(n)
        pool_size = self.batch_size * self.pool
        batches = []
        for start in range(0, n, pool_size):
            chunk = order[start : start + pool_size]
            chunk = chunk[np.argsort(self.lengths[chunk], kind="stable")]
            pool = [chunk[i : i + self.batch_size] for i in range(0, len(chunk), self.batch_size)]
            if len(pool) > 1 and len(pool[-1]) == 1:
                # BatchNorm cannot train on one sample: fold a lone leftover into its neighbour.
                pool[-2:] = [np.concatenate(pool[-2:])]
            batches.extend(pool)
        if self.shuffle:
            batches = [batches[i] for i in rng.permutation(len(batches))]
        return batches

    def __iter__(self) -> Iterator[np.ndarray]:
        batches = self._all_batches()
        per_rank = len(self) if self.world_size > 1 else len(batches)
        if self.world_size > 1:
            # Pad by wrapping so every rank steps the same number of times (DDP needs it).
            batches = (batches * math.ceil(per_rank * self.world_size / max(len(batches), 1)))[
                : per_rank * self.world_size
            ]
        yield from batches[self.rank :: self.world_size]

    def __len__(self) -> int:
        n_batches = math.ceil(len(self.lengths) / self.batch_size)
        return math.ceil(n_batches / self.world_size)


class PixelPairs(Dataset):
    """(pixels, pair index) for training a fine-tuned encoder from images."""

    def __init__(self, paths: list[str], pairs: CaptionPairs, preprocess: PreprocessConfig, train: bool):
        self.paths = paths
        self.pairs = pairs
        self.transform = build_transform(preprocess, train=train)

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int):
        return self.transform(load_image(self.paths[self.pairs.image_rows[i]])), i


class ImageRows(Dataset):
    """Preprocessed pixels of a list of image paths (validation and batch captioning)."""

    def __init__(self, paths: list[str], preprocess: PreprocessConfig):
        self.paths = paths
        self.transform = build_transform(preprocess)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        return self.transform(load_image(self.paths[i])), i
