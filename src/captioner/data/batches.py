"""Training batches as a train loop consumes them: (cached features, captions) for a frozen
encoder, (augmented pixels, captions) for a fine-tuned one; rows are caption pairs
(``CaptionPairs``) or, for objectives that score whole images, the images (``ImageTargets``)."""
from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader

from ..decoding import Features
from .examples import is_sample_ref
from .feature_cache import FeatureCache
from .loaders import BucketBatchSampler, CaptionPairs, PixelPairs
from .webdataset import ShardPairStream


class FeatureBatches:
    """Batches of (cached features, captions) — the frozen-encoder path, no pixels read.

    With ``views`` (a cache of K augmented views of every image of the dataset, view-major, in
    the dataset's order, so every split of one dataset shares it) and ``positions`` (each cache
    row's place in the dataset), each pair reads its image's clean features or one of its K
    views, drawn uniformly and anew each epoch (seeded by the sampler's seed and epoch)."""

    def __init__(self, cache: FeatureCache, pairs: CaptionPairs, sampler: BucketBatchSampler, device,
                 views: FeatureCache | None = None, view_count: int = 0, positions: np.ndarray | None = None):
        self.cache, self.pairs, self.sampler, self.device = cache, pairs, sampler, device
        self.views, self.view_count, self.positions = views, view_count, positions

    def __len__(self):
        return len(self.sampler)

    def _features(self, rows: np.ndarray, rng: np.random.Generator):
        if self.views is None:
            return self.cache.rows(rows)
        images = len(self.views.paths) // self.view_count
        view = rng.integers(0, self.view_count + 1, len(rows))  # 0: the clean image
        pooled, grid = self.cache.rows(rows)
        augmented = view > 0
        if augmented.any():
            view_rows = (view[augmented] - 1) * images + self.positions[rows[augmented]]
            view_pooled, view_grid = self.views.rows(view_rows)
            pooled[torch.from_numpy(augmented)] = view_pooled
            if grid is not None:
                grid[torch.from_numpy(augmented)] = view_grid
        return pooled, grid

    def __iter__(self):
        rng = np.random.default_rng((self.sampler.seed, self.sampler.epoch, 1))
        for indices in self.sampler:
            pooled, grid = self._features(self.pairs.image_rows[indices], rng)
            features = Features(
                pooled.to(self.device, non_blocking=True),
                grid.to(self.device, non_blocking=True) if grid is not None else None,
            )
            yield features, self.pairs.captions(indices).to(self.device, non_blocking=True)


class PixelBatches:
    """Batches of (augmented pixels, captions) — the fine-tuning path. From image files, the
    sampler's length-bucketed batches; from WebDataset shards, each rank streams its own
    shards through a shuffle buffer (``ShardPairStream``, following the sampler's epoch)."""

    def __init__(self, paths, pairs, preprocess, sampler, device, num_workers, shuffle_buffer: int = 1000):
        self.pairs, self.sampler, self.device = pairs, sampler, device
        if paths and is_sample_ref(paths[0]):
            self.stream = ShardPairStream(paths, pairs.image_rows, preprocess, sampler.batch_size, sampler.seed,
                                          sampler.rank, sampler.world_size, shuffle_buffer)
            self.loader = None
        else:
            self.stream = None
            self.loader = DataLoader(
                PixelPairs(paths, pairs, preprocess, train=True),
                batch_sampler=sampler,
                num_workers=num_workers,
                pin_memory=device.type == "cuda",
            )

    def __len__(self):
        return len(self.stream) if self.stream is not None else len(self.sampler)

    def __iter__(self):
        if self.stream is not None:
            self.stream.set_epoch(self.sampler.epoch)
        for pixels, indices in self.stream if self.stream is not None else self.loader:
            captions = self.pairs.captions(np.asarray(indices))
            yield pixels.to(self.device, non_blocking=True), captions.to(self.device, non_blocking=True)


class ImageTargets:
    """The training images as batch rows, for objectives whose rows are images (self-critical):
    it stands where ``CaptionPairs`` does for ``FeatureBatches`` / ``PixelBatches`` and the
    sampler, and each row's target is the image's index (its references are the objective's)."""

    def __init__(self, count: int):
        self.image_rows = np.arange(count, dtype=np.int64)
        self.lengths = np.ones(count, dtype=np.int64)  # one length: the sampler only shuffles and shards

    def __len__(self) -> int:
        return len(self.image_rows)

    def captions(self, indices: np.ndarray) -> torch.Tensor:
        """The targets of these rows: their image indices."""
        return torch.from_numpy(np.asarray(indices, dtype=np.int64))
