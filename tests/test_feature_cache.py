"""The feature cache: extracted once, reused, keyed by what changes the features."""
from __future__ import annotations

import numpy as np
import torch

from captioner import create_encoder
from captioner.data.feature_cache import FeatureCache
from captioner.data.images import PreprocessConfig

from conftest import TINY

PATHS = sorted(str(p) for p in (TINY / "images").glob("*.jpg"))[:6]


def counting_encoder():
    torch.manual_seed(0)
    encoder = create_encoder("efficientnet_lite0", pretrained=False)
    calls = []
    encoder.register_forward_hook(lambda module, args, output: calls.append(args[0].shape[0]))
    return encoder, calls


def test_second_run_does_not_call_the_encoder(tmp_path):
    encoder, calls = counting_encoder()
    config = PreprocessConfig(crop_size=64, resize_size=64)
    first = FeatureCache(tmp_path, encoder, config, PATHS, with_grid=True).build(batch_size=4, progress=False)
    images_encoded = sum(calls) - 1  # minus the one-image shape probe
    assert images_encoded == len(PATHS)
    calls.clear()
    second = FeatureCache(tmp_path, encoder, config, PATHS, with_grid=True).build(batch_size=4, progress=False)
    assert calls == []
    assert second.folder == first.folder
    pooled, grid = second.rows(np.array([3, 0, 5]))
    assert pooled.shape == (3, 1280) and grid.shape == (3, 4, 1280)
    with torch.no_grad():
        direct = encoder(torch.stack([__import__("captioner").data.images.build_transform(config)(
            __import__("captioner").data.images.load_image(PATHS[3]))]))
    assert torch.allclose(pooled[0], direct.pooled[0], atol=2e-2, rtol=1e-2)  # fp16 storage


def test_other_preprocessing_grid_or_images_get_their_own_cache(tmp_path):
    encoder, _ = counting_encoder()
    base = FeatureCache(tmp_path, encoder, PreprocessConfig(crop_size=64), PATHS, with_grid=False)
    folders = {
        base.folder,
        FeatureCache(tmp_path, encoder, PreprocessConfig(crop_size=96), PATHS, with_grid=False).folder,
        FeatureCache(tmp_path, encoder, PreprocessConfig(crop_size=64), PATHS, with_grid=True).folder,
        FeatureCache(tmp_path, encoder, PreprocessConfig(crop_size=64), PATHS[:3], with_grid=False).folder,
    }
    assert len(folders) == 4
    built = base.build(batch_size=4, progress=False)
    assert built.grid is None and not (built.folder / "grid.npy").exists()  # pooled only when no grid needed


def test_interrupted_extraction_resumes_where_it_stopped(tmp_path):
    encoder, calls = counting_encoder()
    config = PreprocessConfig(crop_size=64)
    paths = PATHS * 3  # 18 images → chunks of 8
    cache = FeatureCache(tmp_path, encoder, config, paths, with_grid=False)
    cache.build(batch_size=1, progress=False, shard=(0, 2), runtime="torch")  # "crash" after the even chunks
    assert not cache.is_complete()
    calls.clear()
    cache.build(batch_size=1, progress=False, runtime="torch")
    assert sum(calls) - 1 == 8  # only the missing chunk (images 8..15) was encoded
    assert cache.is_complete()


def test_a_grid_cache_serves_pooled_only_requests(tmp_path):
    encoder, calls = counting_encoder()
    config = PreprocessConfig(crop_size=64)
    with_grid = FeatureCache(tmp_path, encoder, config, PATHS, with_grid=True).build(batch_size=4, progress=False)
    calls.clear()
    pooled_only = FeatureCache(tmp_path, encoder, config, PATHS, with_grid=False).build(batch_size=4, progress=False)
    assert calls == [] and pooled_only.folder == with_grid.folder and pooled_only.grid is None
