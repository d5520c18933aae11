"""Optional ONNX Runtime encoder: same captions as torch, exported once, frozen encoders only."""
from __future__ import annotations

import importlib.util
from pathlib import Path

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
    return Captioner.from_pretrained(), Captioner.from_pretrained().use_onnxruntime()


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
    second = Captioner.from_pretrained().use_onnxruntime()._onnx_encoder
    assert second.path == first.path and not second.exported
    assert (second.path.stat().st_mtime_ns, second.path.stat().st_ino) == (stat.st_mtime_ns, stat.st_ino)
    assert not list(first.path.parent.glob("*.tmp"))  # no temp file left behind


def test_fine_tuned_encoder_is_refused():
    vocab = Vocabulary.build(["a cat"], min_count=1)
    model = Captioner.build(
        "efficientnet_lite0", "show-tell", vocab, encoder_options={"pretrained": False, "trainable_blocks": 1}
    )
    with pytest.raises(ValueError, match="frozen"):
        model.use_onnxruntime()
    assert model._onnx_encoder is None
