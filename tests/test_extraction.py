"""The feature extraction pipeline's structure (``captioner.data.extraction``): one loader and one
worker pool per build, outputs written in blocks by the writer thread, and an extraction stopped
mid-build that resumes into exactly the cache an uninterrupted build makes."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from captioner import create_encoder
from captioner.data import extraction
from captioner.data.feature_cache import FeatureCache
from captioner.data.images import PreprocessConfig

from conftest import TINY

PATHS = sorted(str(p) for p in (TINY / "images").glob("*.jpg"))[:6] * 3  # 18 rows
CONFIG = PreprocessConfig(crop_size=32, resize_size=32)


def encoder():
    torch.manual_seed(0)
    return create_encoder("efficientnet_lite0", pretrained=False)


def reference(tmp_path) -> FeatureCache:
    return FeatureCache(tmp_path / "reference", encoder(), CONFIG, PATHS, with_grid=True).build(
        batch_size=1, progress=False, runtime="torch")


def test_one_loader_and_one_worker_pool_for_every_chunk(tmp_path, monkeypatch):
    """18 images in chunks of 8: the loader (2 workers) is iterated once, where a loader per
    chunk forked 3 pools; the features are those of a build without workers."""
    pools = []

    class CountingLoader(extraction.DataLoader):
        def _get_iterator(self):
            pools.append(self.num_workers)
            return super()._get_iterator()

    monkeypatch.setattr(extraction, "DataLoader", CountingLoader)
    cache = FeatureCache(tmp_path / "workers", encoder(), CONFIG, PATHS, with_grid=True)
    cache.build(batch_size=1, num_workers=2, progress=False, runtime="torch")
    assert pools == [2]
    assert len(list((cache.folder / "chunks").iterdir())) == 3
    want = reference(tmp_path)
    np.testing.assert_array_equal(np.asarray(cache.grid), np.asarray(want.grid))


def test_the_writer_gets_blocks_not_batches(tmp_path, monkeypatch):
    """Batches of 2 reach the writer thread as blocks of 8 batches: it writes, flushes and marks
    a chunk per block, and the loop never waits on a batch's copy."""
    blocks = []
    write = extraction.MemmapWriter.write
    monkeypatch.setattr(extraction.MemmapWriter, "write", lambda self, block: blocks.append(block.count)
                        or write(self, block))
    cache = FeatureCache(tmp_path, encoder(), CONFIG, PATHS, with_grid=False).build(
        batch_size=2, progress=False, runtime="torch")
    assert blocks == [16, 2]  # 9 batches
    assert cache.is_complete()


def test_a_build_stopped_midway_resumes_into_the_same_cache(tmp_path):
    """The encoder fails on the 11th batch (of 1 image): the rows of the chunk it was in and of the
    chunks after are not marked done; the rerun encodes only those, and the cache equals one built
    without a stop, bit for bit."""
    interrupted = encoder()
    calls = []

    def stop_at_the_11th(module, args):
        calls.append(len(args[0]))
        if len(calls) == 12:  # the 1-image shape probe, then 11 batches
            raise KeyboardInterrupt

    hook = interrupted.register_forward_pre_hook(stop_at_the_11th)
    cache = FeatureCache(tmp_path / "stopped", interrupted, CONFIG, PATHS, with_grid=True)
    with pytest.raises(KeyboardInterrupt):
        cache.build(batch_size=1, progress=False, runtime="torch")
    assert sorted(p.name for p in (cache.folder / "chunks").iterdir()) == ["0-8.done"]
    calls.clear()
    cache.build(batch_size=1, progress=False, runtime="torch")
    hook.remove()
    assert sum(calls) - 1 == len(PATHS) - 8
    want = reference(tmp_path)
    np.testing.assert_array_equal(np.asarray(cache.pooled), np.asarray(want.pooled))
    np.testing.assert_array_equal(np.asarray(cache.grid), np.asarray(want.grid))


def test_a_writer_error_stops_the_build_and_marks_nothing(tmp_path):
    """The writer thread's error (here: a read-only array) is raised in the loop's thread."""
    arrays = {"pooled": np.zeros((4, 3), dtype=np.float16)}
    arrays["pooled"].flags.writeable = False
    marked = []
    writer = extraction.MemmapWriter(arrays, [(0, 4)], lambda start, stop: marked.append((start, stop)))
    blocks = extraction.OutputBlocks({"pooled": (3,)}, 4, torch.device("cpu"))
    blocks.add(torch.arange(4), {"pooled": torch.ones(4, 3)})
    writer.put(blocks.flush()[0])
    with pytest.raises(ValueError, match="read-only"):
        writer.close()
    assert marked == []


def test_augmented_view_rows_are_seeded_by_row_in_every_chunk(tmp_path):
    """Row i of a views cache is augment_image(paths[i], seed=i), also past the first chunk."""
    from captioner.data.augment import AugmentConfig, augment_image
    from captioner.data.images import build_transform, load_image

    augment = AugmentConfig(size=48)
    model = encoder()
    cache = FeatureCache(tmp_path, model, CONFIG, PATHS[:10], with_grid=False, augment=augment).build(
        batch_size=1, progress=False, runtime="torch")
    view = build_transform(CONFIG)(augment_image(load_image(PATHS[9]), augment, seed=9))
    with torch.no_grad():
        want = model(view[None]).pooled[0]
    torch.testing.assert_close(cache.rows(np.array([9]))[0][0], want, atol=2e-3, rtol=1e-2)  # fp16 storage
