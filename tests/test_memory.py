"""Training from the feature cache reads rows from memory maps: the process's own memory
stays flat however large the cache is.

The cache here is synthetic (20,000 images × 49 regions × 256 dims, fp16: ~500 MB),
written straight into the files FeatureCache reads. The bound is on *anonymous* resident
memory (RssAnon): pages of the memory-mapped files that iteration touches also show in RSS
(RssFile) but are the kernel's page cache, shared and dropped under pressure. What this test
guards against is the cache being copied into process memory, or batches piling up.
"""
from __future__ import annotations

import gc
from pathlib import Path

import numpy as np
import pytest
import torch

from captioner.data.feature_cache import FeatureCache
from captioner.data.images import PreprocessConfig
from captioner.data.loaders import BucketBatchSampler, CaptionPairs
from captioner.data.sources import Example
from captioner.data.vocab import Vocabulary
from captioner.encoders.base import EncoderConfig
from captioner.data.batches import FeatureBatches

IMAGES, REGIONS, GRID_DIM, POOLED_DIM = 20_000, 49, 256, 256
MiB = 2**20


class SyntheticEncoder(torch.nn.Module):
    """Only what the cache key needs: a name, a config and (no) weights."""

    name = "synthetic"
    config = EncoderConfig(pretrained=False)


def memory_kib() -> dict[str, int]:
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "RssAnon", "RssFile"):
            fields[key] = int(value.split()[0])
    return fields


def synthetic_cache(root: Path) -> FeatureCache:
    paths = [f"/synthetic/{i:05d}.jpg" for i in range(IMAGES)]  # never read: the cache is complete
    cache = FeatureCache(root, SyntheticEncoder(), PreprocessConfig(), paths, with_grid=True)
    cache.folder.mkdir(parents=True)
    pooled = np.lib.format.open_memmap(cache.folder / "pooled.npy", "w+", np.float16, (IMAGES, POOLED_DIM))
    grid = np.lib.format.open_memmap(cache.folder / "grid.npy", "w+", np.float16, (IMAGES, REGIONS, GRID_DIM))
    rng = np.random.default_rng(0)
    block = rng.standard_normal((1000, REGIONS, GRID_DIM), dtype=np.float32).astype(np.float16)
    for start in range(0, IMAGES, 1000):
        grid[start : start + 1000] = block + np.float16(start / IMAGES)  # rows differ, cheaply
    pooled[:] = (np.arange(IMAGES) / IMAGES).astype(np.float16)[:, None]
    pooled.flush(), grid.flush()
    del pooled, grid
    cache._mark_done(0, IMAGES)  # as an extraction that finished in one chunk
    return cache.open()


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> FeatureCache:
    return synthetic_cache(tmp_path_factory.mktemp("synthetic-cache"))


def test_iterating_training_batches_keeps_process_memory_flat(cache):
    cache_mib = (cache.folder / "grid.npy").stat().st_size / MiB
    assert cache_mib > 450

    words = [f"w{i}" for i in range(1000)]
    vocab = Vocabulary(words)
    rng = np.random.default_rng(1)
    examples = [
        Example(str(i), Path(f"/synthetic/{i:05d}.jpg"), [" ".join(rng.choice(words, rng.integers(8, 21)))])
        for i in range(IMAGES)
    ]
    pairs = CaptionPairs(examples, list(range(IMAGES)), vocab, max_length=20)
    sampler = BucketBatchSampler(pairs.lengths, 64, seed=0)
    batches = FeatureBatches(cache, pairs, sampler, torch.device("cpu"))
    del examples
    gc.collect()

    iterator = iter(batches)
    for _ in range(5):  # warm-up: allocator pools, first-touch of code paths
        next(iterator)
    before = memory_kib()
    peak_anon = before["RssAnon"]
    seen = 0
    for step, (features, captions) in enumerate(iterator):
        assert features.grid.shape[1:] == (REGIONS, GRID_DIM) and features.grid.dtype == torch.float32
        seen += len(captions)
        if step % 10 == 0:
            peak_anon = max(peak_anon, memory_kib()["RssAnon"])
        if step == 300:
            break
    after = memory_kib()
    grown_mib = (max(peak_anon, after["RssAnon"]) - before["RssAnon"]) / 1024
    print(f"cache {cache_mib:.0f} MiB; {seen} pairs read; RssAnon +{grown_mib:.1f} MiB; "
          f"RssFile {before['RssFile'] / 1024:.0f} → {after['RssFile'] / 1024:.0f} MiB")
    assert seen > IMAGES / 2  # most of the cache was read
    assert grown_mib < 64, f"process memory grew {grown_mib:.0f} MiB reading a {cache_mib:.0f} MiB cache"


def test_batches_hold_the_rows_they_name(cache):
    rows = np.array([19_999, 3, 7_000, 3])
    pooled, grid = cache.rows(rows)
    expected = np.load(cache.folder / "grid.npy", mmap_mode="r")
    np.testing.assert_array_equal(grid.numpy(), np.asarray(expected[rows], dtype=np.float32))
    np.testing.assert_array_equal(pooled[:, 0].numpy(), (rows / IMAGES).astype(np.float16).astype(np.float32))
