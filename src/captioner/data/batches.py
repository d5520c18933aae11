"""Training batches as a train loop consumes them: (cached features, captions) for a frozen
encoder; (cached activations of its frozen stages, captions) or (pixels, captions) for a
fine-tuned one; rows are caption pairs (``CaptionPairs``) or, for objectives that score whole
images, the images (``ImageTargets``).

Every path reads the same images: each epoch, each pair reads its clean image or one of its
image's K augmented views (``data.augment_views``), drawn alike (``draw_views``); the views
are the ones the views cache holds (``augment_image`` of the image, seeded by its row there).
"""
from __future__ import annotations

from typing import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler

from ..decoding import Features
from ..encoders.base import EncoderActivations
from ..errors import InvalidInputError
from .augment import AugmentConfig
from .examples import is_sample_ref
from .feature_cache import FeatureCache
from .loaders import BucketBatchSampler, CaptionPairs, PixelPairs
from .webdataset import ShardPairStream


def draw_views(sampler: BucketBatchSampler, view_count: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """The sampler's batches of pairs, each with the view every pair reads this epoch (0: the clean
    image, 1..``view_count``: an augmented view), uniformly, seeded by the sampler's seed and epoch."""
    rng = np.random.default_rng((sampler.seed, sampler.epoch, 1))
    for indices in sampler:
        yield indices, rng.integers(0, view_count + 1, len(indices))


class FeatureBatches:
    """Batches of (cached features, captions) — the frozen-encoder path, no pixels read.

    With ``views`` (a cache of K augmented views of every image of the dataset, view-major, in
    the dataset's order, so every split of one dataset shares it) and ``positions`` (each cache
    row's place in the dataset), each pair reads its image's clean features or one of its K
    views (``draw_views``). ``retrieved`` (pair indices → (batch, neighbours, length) token ids),
    set for a decoder that reads retrieved captions (``captioner.train.retrieval``), fills
    ``Features.retrieved``."""

    def __init__(self, cache: FeatureCache, pairs: CaptionPairs, sampler: BucketBatchSampler, device,
                 views: FeatureCache | None = None, view_count: int = 0, positions: np.ndarray | None = None):
        self.cache, self.pairs, self.sampler, self.device = cache, pairs, sampler, device
        self.views, self.view_count, self.positions = views, view_count, positions
        self.retrieved = None

    def __len__(self):
        return len(self.sampler)

    def _read(self, cache, rows: np.ndarray) -> tuple:
        """The cache's tensors for these rows (the features: pooled and grid or None)."""
        return cache.rows(rows)

    def _inputs(self, parts: tuple):
        """A batch's tensors as the model's input, on the device."""
        pooled, grid = parts
        return Features(pooled.to(self.device, non_blocking=True),
                        grid.to(self.device, non_blocking=True) if grid is not None else None)

    def _with_views(self, rows: np.ndarray, view: np.ndarray) -> tuple:
        parts = self._read(self.cache, rows)
        augmented = view > 0
        if augmented.any():
            images = len(self.views.paths) // self.view_count
            view_rows = (view[augmented] - 1) * images + self.positions[rows[augmented]]
            for part, from_view in zip(parts, self._read(self.views, view_rows)):
                if part is not None:
                    part[torch.from_numpy(augmented)] = from_view
        return parts

    def __iter__(self):
        for indices, view in draw_views(self.sampler, self.view_count):
            parts = self._with_views(self.pairs.image_rows[indices], view)
            inputs = self._inputs(parts)
            if self.retrieved is not None:
                inputs = inputs._replace(retrieved=self.retrieved(indices).to(self.device, non_blocking=True))
            yield inputs, self.pairs.captions(indices).to(self.device, non_blocking=True)


class ActivationBatches(FeatureBatches):
    """Batches of (cached activations, captions) — the fine-tuning path with the encoder split
    before its first trainable stage ``stage``: rows of an ``ActivationCache`` (and of its views
    cache), which the model's top stages run on (``Captioner.features_of``)."""

    def __init__(self, cache, pairs, sampler, device, stage: int, views=None, view_count: int = 0,
                 positions: np.ndarray | None = None):
        super().__init__(cache, pairs, sampler, device, views, view_count, positions)
        self.stage = stage

    def _read(self, cache, rows: np.ndarray) -> tuple:
        return (cache.rows(rows),)

    def _inputs(self, parts: tuple) -> EncoderActivations:
        return EncoderActivations(parts[0].to(self.device, non_blocking=True), self.stage)


class _PairViews(Sampler):
    """A batch sampler of ``(pair, view)`` items (``draw_views``), for ``PixelPairs``."""

    def __init__(self, sampler: BucketBatchSampler, view_count: int):
        self.sampler, self.view_count = sampler, view_count

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self):
        for indices, view in draw_views(self.sampler, self.view_count):
            yield list(zip(indices.tolist(), view.tolist()))


class PixelBatches:
    """Batches of (pixels, captions) — the fine-tuning path that runs the whole encoder. From
    image files, the sampler's length-bucketed batches, each pair its clean image or an augmented
    view (``augment``, ``view_count``; ``images``: the dataset's image count and ``positions``
    each path's place in it, as the views cache numbers them); from WebDataset shards, each rank
    streams its own shards through a shuffle buffer (``ShardPairStream``, following the
    sampler's epoch), clean images only."""

    def __init__(self, paths, pairs, preprocess, sampler, device, num_workers, shuffle_buffer: int = 1000,
                 augment: AugmentConfig | None = None, view_count: int = 0, images: int = 0,
                 positions: np.ndarray | None = None):
        self.pairs, self.sampler, self.device = pairs, sampler, device
        if paths and is_sample_ref(paths[0]):
            if view_count:
                raise InvalidInputError("augmented views (data.augment_views) are made from image files; "
                                        "WebDataset shards are read as one stream: set data.augment_views to 0")
            self.stream = ShardPairStream(paths, pairs.image_rows, preprocess, sampler.batch_size, sampler.seed,
                                          sampler.rank, sampler.world_size, shuffle_buffer)
            self.loader = None
        else:
            self.stream = None
            self.loader = DataLoader(
                PixelPairs(paths, pairs, preprocess, augment, images, positions),
                batch_sampler=_PairViews(sampler, view_count),
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
