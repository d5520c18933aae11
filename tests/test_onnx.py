"""Optional ONNX Runtime encoder: same captions as torch, exported once, frozen encoders only."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from captioner import Captioner
from captioner.data.images import build_transform, load_image
from captioner.data.vocab import Vocabulary

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("onnxruntime") is None,
    reason="onnxruntime is not installed (pip install 'captioner[onnx]')",
)

EXAMPLES = Path(__file__).parent.parent / "examples"
IMAGES = sorted(p for p in EXAMPLES.iterdir() if p.suffix in (".png", ".jpg"))


@pytest.fixture(scope="module")
def models():
    """The bundled model twice: plain torch, and with the ONNX Runtime encoder."""
    return Captioner.from_pretrained(), Captioner.from_pretrained().use_runtime("onnx")


def test_onnx_captions_match_torch_on_every_example(models):
    torch_model, onnx_model = models
    expected = torch_model.caption(IMAGES, beam_size=3)
    got = onnx_model.caption(IMAGES, beam_size=3)
    assert [c.text for c in got] == [c.text for c in expected]
    assert [c.score for c in got] == pytest.approx([c.score for c in expected], abs=1e-3)
    single = onnx_model.caption(IMAGES[0])  # batch of one (the dynamic batch axis)
    assert single.text == expected[0].text

    pixels = torch.stack([build_transform(torch_model.preprocess)(load_image(p)) for p in IMAGES[:3]])
    with torch.inference_mode():
        a, b = torch_model.encode(pixels), onnx_model.encode(pixels)
    assert b.pooled.shape == a.pooled.shape and b.grid.shape == a.grid.shape
    assert ((b.pooled - a.pooled).norm() / a.pooled.norm()).item() < 1e-4
    assert ((b.grid - a.grid).norm() / a.grid.norm()).item() < 1e-4


def test_onnx_file_is_cached_and_reused(models, monkeypatch):
    _, onnx_model = models
    first = onnx_model._onnx_encoder
    assert first.path.is_file() and first.path.suffix == ".onnx"
    assert first.path.parent.name == "onnx"  # under $CAPTIONER_CACHE/onnx (conftest: a temp folder)
    stat = first.path.stat()

    def no_export(*args, **kwargs):
        raise AssertionError("the cached .onnx file should have been reused, not exported again")

    monkeypatch.setattr(torch.onnx, "export", no_export)
    second = Captioner.from_pretrained().use_runtime("onnx")._onnx_encoder
    assert second.path == first.path and not second.exported
    assert (second.path.stat().st_mtime_ns, second.path.stat().st_ino) == (stat.st_mtime_ns, stat.st_ino)
    assert not list(first.path.parent.glob("*.tmp"))  # no temp file left behind


def test_fine_tuned_encoder_is_refused():
    vocab = Vocabulary.build(["a cat"], min_count=1)
    model = Captioner.build(
        "efficientnet_lite0", "show-tell", vocab, encoder_options={"pretrained": False, "trainable_blocks": 1}
    )
    with pytest.raises(ValueError, match="frozen"):
        model.use_runtime("onnx")
    assert model._onnx_encoder is None


def test_onnx_extraction_fills_the_cache_torch_would(tmp_path):
    """``train --onnx``: same cache key (so either engine's cache serves the other) and the
    same features within the cache's fp16 rounding, on real images and real Lite0 weights."""
    from captioner import create_encoder
    from captioner.data.feature_cache import FeatureCache
    from captioner.data.images import PreprocessConfig

    encoder = create_encoder("efficientnet_lite0")
    config = PreprocessConfig(crop_size=96, resize_size=96)
    paths = [str(p) for p in IMAGES]
    by_torch = FeatureCache(tmp_path / "torch", encoder, config, paths, with_grid=True).build(
        batch_size=4, progress=False, runtime="torch")
    by_onnx = FeatureCache(tmp_path / "onnx", encoder, config, paths, with_grid=True).build(
        batch_size=4, progress=False, runtime="onnx")
    from captioner.cache import cache_root

    assert list(cache_root("onnx").glob("efficientnet_lite0-*-96.onnx"))  # ONNX Runtime did extract
    assert by_onnx.folder.name == by_torch.folder.name
    rows = np.arange(len(paths))
    for a, b in zip(by_torch.rows(rows), by_onnx.rows(rows)):
        torch.testing.assert_close(b, a, atol=2e-2, rtol=1e-2)


def test_onnx_extraction_is_refused_off_the_cpu(tmp_path):
    from captioner import create_encoder
    from captioner.data.feature_cache import FeatureCache

    encoder = create_encoder("efficientnet_lite0", pretrained=False)
    cache = FeatureCache(tmp_path, encoder, encoder.default_preprocess, [str(IMAGES[0])], with_grid=False)
    with pytest.raises(ValueError, match="ONNX Runtime runs the encoder on the CPU"):
        cache.build(device="meta", progress=False, runtime="onnx")


def test_train_onnx_trains_from_an_onnx_extracted_cache(tiny_one_caption, tmp_path, capsys):
    from captioner.cli import main
    from captioner.cache import cache_root

    args = ["train", "--data", str(tiny_one_caption), "--encoder", "efficientnet_lite0", "--epochs", "1",
            "--batch-size", "8", "--min-word-count", "1", "--no-progress", "--onnx", "--set", "log_every=0",
            "--set", "model.preprocess={crop_size: 64, resize_size: 64}",
            "--feature-cache", str(tmp_path / "features")]  # its own: another test may have filled the shared one
    assert main([*args, "--out", str(tmp_path / "run")]) == 0
    assert (tmp_path / "run" / "model.safetensors").is_file()
    assert list(cache_root("onnx").glob("efficientnet_lite0-*-64.onnx"))

    # A fine-tuned encoder: ONNX Runtime extracts its frozen stages' activation cache; reading
    # pixels instead (no activation cache) runs the whole encoder in torch, and --onnx is refused.
    assert main([*args, "--out", str(tmp_path / "fine-tune"), "--trainable-blocks", "1"]) == 0
    capsys.readouterr()
    assert main([*args, "--out", str(tmp_path / "pixels"), "--trainable-blocks", "1",
                 "--set", "data.cache_activations=false"]) == 2
    assert "training reads pixels" in capsys.readouterr().err
