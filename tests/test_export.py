"""``captioner export`` + ``captioner.exported``: every decoder exported to ONNX captions as
the torch model does (greedy and beam search, same scores), the bundled model too, the
runtime works with torch unimportable, and what cannot be exported is refused clearly."""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from captioner import Captioner, list_decoders
from captioner.cli import main
from captioner.data.images import PreprocessConfig, build_transform
from captioner.decoders import Decoder
from captioner.export import ExportError, export_model
from captioner.model import default_model_dir
from captioner.exported import OnnxCaptioner, is_exported_model
from captioner.data.images import preprocess_array as preprocess

from test_decoders import small_captioner

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("onnxruntime") is None or importlib.util.find_spec("onnx") is None,
    reason="exporting needs onnx and onnxruntime (pip install 'captioner[onnx]')",
)

ROOT = Path(__file__).parent.parent
SUFFIXES = (".png", ".jpg")
EXAMPLES = sorted(p for p in (ROOT / "examples").iterdir() if p.suffix in SUFFIXES)
FIXTURE_IMAGES = sorted(p for p in (ROOT / "tests" / "fixtures" / "tiny" / "images").iterdir() if p.suffix in SUFFIXES)
FEW = [EXAMPLES[0], EXAMPLES[-1], FIXTURE_IMAGES[0]]  # an emoji, a photo, a fixture photo

# The runtime with torch made unimportable: a meta-path finder refuses torch and torchvision.
NO_TORCH = """
import sys
class NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "torchvision"):
            raise ImportError(f"{name} is blocked in this test")
sys.meta_path.insert(0, NoTorch())
"""


def assert_same_captions(expected, got):
    assert [c.text for c in got] == [c.text for c in expected]
    assert [c.score for c in got] == pytest.approx([c.score for c in expected], abs=1e-4)
    assert [[a.text for a in c.alternatives] for c in got] == [[a.text for a in c.alternatives] for c in expected]
    assert [c.words for c in got] == [c.words for c in expected]
    # the same confidence: the export carries the model's confidence statistics
    assert [c.low_confidence for c in got] == [c.low_confidence for c in expected]
    assert [c.confidence is None for c in got] == [c.confidence is None for c in expected]
    assert [c.confidence for c in got if c.confidence is not None] == pytest.approx(
        [c.confidence for c in expected if c.confidence is not None], abs=0.01)


@pytest.fixture(scope="module")
def tiny_exports(tmp_path_factory):
    """Every registered decoder as a tiny random model (random EfficientNet-Lite0 at 64 px), exported."""
    exports = {}
    for name in list_decoders():
        torch.manual_seed(0)
        model = small_captioner(name).eval()
        exports[name] = (model, OnnxCaptioner(export_model(model, tmp_path_factory.mktemp(name) / "onnx"), threads=1))
    return exports


@pytest.mark.parametrize("name", list_decoders())
def test_every_decoder_captions_as_torch(name, tiny_exports):
    model, runtime = tiny_exports[name]
    assert_same_captions(model.caption(FEW, beam_size=1), runtime.caption(FEW, beam_size=1))
    assert_same_captions(model.caption(FEW, beam_size=3, n_best=2), runtime.caption(FEW, beam_size=3, n_best=2))
    single = runtime.caption(FEW[1], beam_size=3)  # a batch of one, a different batch size than traced
    assert single.text == model.caption(FEW[1], beam_size=3).text


def test_beam_options_and_limits_follow_torch(tiny_exports):
    model, runtime = tiny_exports["transformer"]
    options = {"beam_size": 3, "n_best": 3, "length_penalty": 0.7, "no_repeat_ngram_size": 2, "max_length": 12}
    assert_same_captions(model.caption(FEW, **options), runtime.caption(FEW, **options))
    with pytest.raises(ValueError, match="n_best"):
        runtime.caption(FEW[0], beam_size=2, n_best=3)
    # one-shot predicts max_length=24 positions: past them both refuse with the decoder's own message.
    model, runtime = tiny_exports["one-shot"]
    with pytest.raises(ValueError) as expected:
        model.caption(FEW[0], beam_size=1, max_length=30)
    with pytest.raises(ValueError) as got:
        runtime.caption(FEW[0], beam_size=1, max_length=30)
    assert str(got.value) == str(expected.value)


def test_manifest_describes_the_state(tiny_exports):
    manifest = tiny_exports["transformer"][1].manifest
    state = {s["name"]: s for s in manifest["state"]}
    assert manifest["init_state"]["outputs"] == list(state)  # init_state's key order, lists flattened
    assert [s["key"] for s in manifest["state"]][:2] == ["memory_keys", "memory_keys"]  # 2 layers
    assert state["state.keys.0"]["shape"] == ["batch", 2, "state.keys.0_length", 8]  # the growing KV cache
    assert state["state.memory_keys.0"]["static"] and not state["state.keys.0"]["static"]
    static = [s["name"] for s in manifest["state"] if s["static"]]
    assert not set(static) & {o.removesuffix(".next") for o in manifest["step"]["outputs"]}
    assert manifest["decoding"]["banned_ids"] == [0, 1, 3] and manifest["decoding"]["min_length"] == 1


def test_bundled_export_captions_as_torch(bundled_export):
    model, out = bundled_export
    runtime = OnnxCaptioner(out, threads=1)
    images = EXAMPLES + FIXTURE_IMAGES
    assert_same_captions(model.caption(images, beam_size=3), runtime.caption(images, beam_size=3))
    assert_same_captions(model.caption(EXAMPLES, beam_size=1), runtime.caption(EXAMPLES, beam_size=1))
    assert is_exported_model(out)
    assert not is_exported_model(default_model_dir()) and not is_exported_model(out / "missing")


def test_preprocessing_matches_torchvision(bundled_export):
    """The numpy resize reproduces torchvision's uint8 kernel: the same pixels, bit for bit."""
    configs = [bundled_export[0].preprocess, PreprocessConfig(crop_size=96, resize_size=80, interpolation="bicubic")]
    for config in configs:
        for path in (EXAMPLES[0], EXAMPLES[-1], FIXTURE_IMAGES[1]):
            expected = build_transform(config)(path).numpy()
            np.testing.assert_array_equal(preprocess(path, config), expected)


def test_runtime_captions_without_torch(bundled_export):
    model, out = bundled_export
    image = EXAMPLES[0]
    script = NO_TORCH + f"""
import json
from captioner.exported import OnnxCaptioner
caption = OnnxCaptioner({str(out)!r}).caption({str(image)!r}, beam_size=3)
assert not any(name.split(".")[0] in ("torch", "torchvision") for name in sys.modules)
print(json.dumps({{"text": caption.text, "score": caption.score}}))
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    got = json.loads(result.stdout)
    expected = model.caption(image, beam_size=3)
    assert got["text"] == expected.text and got["score"] == pytest.approx(expected.score, abs=1e-4)
    blocked = subprocess.run([sys.executable, "-c", NO_TORCH + "import captioner.model"], capture_output=True,
                             text=True, timeout=120)
    assert "torch is blocked" in blocked.stderr  # the prelude does block torch


# --- refusals ------------------------------------------------------------------------------
@dataclass
class CounterConfig:
    pass


class CountingDecoder(Decoder):
    """Keeps a Python int in its state: nothing a graph input can carry."""

    def __init__(self, vocab_size, pooled_dim):
        super().__init__("counting", CounterConfig(), vocab_size, pooled_dim)
        self.head = nn.Linear(pooled_dim, vocab_size)

    def init_state(self, features):
        return {"pooled": features.pooled, "steps": 0}

    def step(self, tokens, state):
        return F.log_softmax(self.head(state["pooled"]), -1), {**state, "steps": state["steps"] + 1}


class PythonIndexDecoder(CountingDecoder):
    """Reads its position out of a tensor into Python: a trace freezes it at the traced value."""

    def __init__(self, vocab_size, pooled_dim):
        super().__init__(vocab_size, pooled_dim)
        self.per_step = nn.Parameter(torch.randn(8, vocab_size))

    def init_state(self, features):
        return {"pooled": features.pooled, "position": torch.zeros(features.pooled.shape[0], dtype=torch.long)}

    def step(self, tokens, state):
        position = int(state["position"][0])
        logits = self.head(state["pooled"]) + self.per_step[position]
        return F.log_softmax(logits, -1), {**state, "position": state["position"] + 1}


@pytest.mark.parametrize("decoder_cls, reason", [
    (CountingDecoder, r"state\['steps'\] is a int"),
    (PythonIndexDecoder, r"step 1 .*log_probs is off by .* Python control flow"),
])
def test_unexportable_decoders_are_refused(decoder_cls, reason, tmp_path):
    base = small_captioner("show-tell")
    model = Captioner(base.encoder, decoder_cls(len(base.vocab), base.encoder.pooled_dim), base.vocab,
                      base.preprocess, max_length=4).eval()
    with pytest.raises(ExportError, match=reason):
        export_model(model, tmp_path / "out")
    assert not (tmp_path / "out").exists() and not list(tmp_path.iterdir())  # nothing half-written


def test_cli_export_and_int8(tmp_path, capsys):
    model_dir = small_captioner("show-attend-tell").save_pretrained(tmp_path / "model")
    assert main(["export", "--format", "onnx", "--model", str(model_dir), "--out", str(tmp_path / "fp32")]) == 0
    assert "show-attend-tell" in capsys.readouterr().out
    assert main(["export", "--model", str(model_dir), "--out", str(tmp_path / "fp32")]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["export", "--model", str(model_dir), "--out", str(tmp_path / "int8"), "--quantize", "int8"]) == 0
    int8 = OnnxCaptioner(tmp_path / "int8", threads=1)
    assert int8.manifest["quantization"] == "int8" and int8.manifest["quantized_graphs"] == ["init_state", "step"]
    fp32_size = (tmp_path / "fp32" / "step.onnx").stat().st_size
    assert (tmp_path / "int8" / "step.onnx").stat().st_size < fp32_size
    captions = int8.caption(FEW, beam_size=3)
    assert all(isinstance(c.text, str) and np.isfinite(c.score) for c in captions)


def test_caption_command_takes_an_exported_model(bundled_export, tmp_path, capsys):
    """`captioner caption --model EXPORTED_DIR`: the exported runtime behind the same command,
    the same captions as the torch model, an unreadable file as its own error record, resume."""
    model, out = bundled_export
    images = tmp_path / "images"
    images.mkdir()
    for path in EXAMPLES[:3]:
        (images / path.name).write_bytes(path.read_bytes())
    (images / "broken.png").write_bytes(b"not an image")
    output = tmp_path / "preds.jsonl"
    assert main(["caption", str(images), "--model", str(out), "--beam-size", "3", "--output", str(output)]) == 1
    records = [json.loads(line) for line in output.read_text().splitlines()]
    expected = {str(images / p.name): c.text for p, c in zip(EXAMPLES[:3], model.caption(EXAMPLES[:3], beam_size=3))}
    assert {r["image"]: r["caption"] for r in records} == expected
    assert "broken.png" in capsys.readouterr().err
    assert main(["caption", str(images), "--model", str(out), "--output", str(output)]) == 1  # only the broken one left
    assert len(output.read_text().splitlines()) == 3
    assert main(["caption", str(images), "--model", str(out), "--runtime", "torch"]) == 2
    assert "exported (ONNX) model" in capsys.readouterr().err
