"""The default path is the fast one and keeps the captions: with no flag a frozen encoder on
the CPU runs in ONNX Runtime (when installed), captions equal torch's on every example and
fixture image, features within 1e-4 relative error; ``--runtime torch|onnx`` (and the old
``--onnx``) force a path; without onnxruntime the default is torch."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from captioner import Captioner
from captioner.data.images import build_transform, load_image
from captioner.encoders import onnx_runtime

ROOT = Path(__file__).parent.parent
IMAGES = sorted(p for folder in (ROOT / "examples", ROOT / "tests" / "fixtures" / "tiny" / "images")
                for p in folder.iterdir() if p.suffix in (".png", ".jpg"))
FEATURE_TOLERANCE = 1e-4  # relative (Frobenius) error of ONNX Runtime's features against torch's

needs_onnxruntime = pytest.mark.skipif(
    not onnx_runtime.onnxruntime_available(), reason="onnxruntime and onnx are not installed"
)


@pytest.fixture(scope="module")
def bundled():
    """The bundled model on its default path, and forced to torch."""
    return Captioner.from_pretrained(), Captioner.from_pretrained().use_runtime("torch")


@needs_onnxruntime
def test_default_path_is_onnxruntime_with_the_same_captions(bundled):
    fast, reference = bundled
    assert len(IMAGES) >= 40 and fast.runtime == "auto"
    for beam_size in (1, 5):
        got = fast.caption(IMAGES, beam_size=beam_size, batch_size=16)
        expected = reference.caption(IMAGES, beam_size=beam_size, batch_size=16)
        assert [c.text for c in got] == [c.text for c in expected], f"beam {beam_size}"
        assert [c.score for c in got] == pytest.approx([c.score for c in expected], abs=1e-3)
    assert isinstance(fast._onnx_encoder, onnx_runtime.OnnxEncoder)  # the default did use ONNX Runtime
    assert reference._onnx_encoder is None

    transform = build_transform(fast.preprocess)
    pixels = torch.stack([transform(load_image(p)) for p in IMAGES])
    with torch.inference_mode():
        a, b = reference.encode(pixels), fast.encode(pixels)
    for name in ("pooled", "grid"):
        x, y = getattr(a, name), getattr(b, name)
        assert ((y - x).norm() / x.norm()).item() < FEATURE_TOLERANCE, name
    assert b.grid_shape == a.grid_shape


@needs_onnxruntime
def test_export_and_session_are_paid_once_per_model(bundled, monkeypatch):
    fast, _ = bundled
    fast.caption(IMAGES[0])
    made = fast._onnx_encoder
    opened = []
    monkeypatch.setattr(onnx_runtime.OnnxEncoder, "_open", lambda self: opened.append(self) or None)
    monkeypatch.setattr(onnx_runtime, "export_onnx", lambda *a: pytest.fail("exported again"))
    for _ in range(3):
        fast.caption(IMAGES[1], beam_size=5)
    assert fast._onnx_encoder is made and not opened


@needs_onnxruntime
def test_auto_stays_torch_where_onnx_would_be_wrong_or_slower():
    """Other input sizes, autograd (training's forward) and autocast keep torch; changed
    weights get a new export instead of stale features."""
    from captioner.data.vocab import Vocabulary
    from captioner.data.images import PreprocessConfig

    vocab = Vocabulary.build(["a cat"], min_count=1)
    model = Captioner.build("efficientnet_lite0", "show-tell", vocab, encoder_options={"pretrained": False},
                            preprocess=PreprocessConfig(crop_size=32, resize_size=32)).eval()
    with torch.no_grad():
        model.encode(torch.zeros(1, 3, 48, 48))
    model.encode(torch.zeros(1, 3, 32, 32))  # grad enabled
    with torch.no_grad(), torch.autocast("cpu", torch.bfloat16):
        model.encode(torch.zeros(1, 3, 32, 32))
    assert model._onnx_encoder is None

    pixels = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        model.encode(pixels)
        first = model._onnx_encoder
        assert first is not None
    with torch.no_grad():
        model.encoder.head[0].weight.mul_(0.5)  # in place, as load_state_dict does
    with torch.inference_mode():
        features = model.encode(pixels)
        assert model._onnx_encoder is not first and model._onnx_encoder.path != first.path
        expected = model.use_runtime("torch").encode(pixels)
    torch.testing.assert_close(features.pooled, expected.pooled, rtol=1e-4, atol=1e-5)


def test_runtime_names_are_checked():
    model = Captioner.from_pretrained()
    with pytest.raises(ValueError, match="auto, torch, onnx"):
        model.use_runtime("tensorrt")
    from captioner.train.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="data.runtime"):
        load_config(overrides={"data.runtime": "tensorrt"})
    assert load_config(overrides={"data.onnx": True}).data.runtime == "onnx"  # the old key
    assert load_config().data.runtime == "auto"


EXAMPLES = sorted(str(p) for p in (ROOT / "examples").iterdir() if p.suffix in (".png", ".jpg"))


@pytest.mark.parametrize("flags, images, asked, engine", [
    ([], EXAMPLES, [], "onnx"),  # the default: the model's own auto
    ([], EXAMPLES[:1], ["torch"], "torch"),  # too few images to pay for ONNX Runtime's set-up
    (["--runtime", "torch"], EXAMPLES, ["torch"], "torch"),
    (["--runtime", "onnx"], EXAMPLES[:1], ["onnx"], "onnx"),
    (["--onnx"], EXAMPLES[:1], ["onnx"], "onnx"),  # the old flag
])
def test_caption_cli_picks_or_forces_the_runtime(flags, images, asked, engine, monkeypatch, capsys):
    from captioner.cli import main

    if engine == "onnx" and not onnx_runtime.onnxruntime_available():
        pytest.skip("onnxruntime is not installed")
    assert len(EXAMPLES) >= 8
    calls, onnx_calls = [], []
    use_runtime, onnx_call = Captioner.use_runtime, onnx_runtime.OnnxEncoder.__call__
    monkeypatch.setattr(Captioner, "use_runtime", lambda self, name="auto": calls.append(name) or use_runtime(self, name))
    monkeypatch.setattr(onnx_runtime.OnnxEncoder, "__call__", lambda self, x: onnx_calls.append(len(x)) or onnx_call(self, x))
    assert main(["caption", *images, "--device", "cpu", *flags]) == 0
    assert calls == asked
    assert (sum(onnx_calls) == len(images)) if engine == "onnx" else not onnx_calls
    assert capsys.readouterr().out.count("\t") == len(images)


def test_onnx_flag_contradicting_runtime_is_refused(capsys):
    from captioner.cli import main

    image = str(ROOT / "examples" / "emoji-dog-face.png")
    assert main(["caption", image, "--onnx", "--runtime", "torch"]) == 2
    assert "--onnx means --runtime onnx" in capsys.readouterr().err


def test_train_cli_passes_the_runtime_to_extraction(tiny_one_caption, tmp_path, monkeypatch):
    from captioner.cli import main
    from captioner.data.feature_cache import FeatureCache

    seen = []
    original = FeatureCache.build
    monkeypatch.setattr(FeatureCache, "build", lambda self, *a, **kw: seen.append(kw["runtime"]) or original(self, *a, **kw))
    args = ["train", "--data", str(tiny_one_caption), "--encoder", "efficientnet_lite0", "--epochs", "1",
            "--batch-size", "8", "--min-word-count", "1", "--no-progress", "--set", "log_every=0",
            "--set", "model.preprocess={crop_size: 64, resize_size: 64}", "--device", "cpu"]
    assert main([*args, "--out", str(tmp_path / "a"), "--runtime", "torch", "--feature-cache", str(tmp_path / "fa")]) == 0
    assert main([*args, "--out", str(tmp_path / "b"), "--feature-cache", str(tmp_path / "fb")]) == 0
    assert seen == ["torch", "auto"]


BLOCK_ONNXRUNTIME = textwrap.dedent("""
    import importlib.abc, importlib.machinery, sys

    class Blocker(importlib.abc.MetaPathFinder, importlib.abc.Loader):
        # onnxruntime "is not installed": importing it fails as a missing module does
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] == "onnxruntime":
                return importlib.machinery.ModuleSpec(name, self)

        def create_module(self, spec):
            raise ModuleNotFoundError(f"No module named {spec.name!r} (blocked by the test)", name=spec.name)

        def exec_module(self, module):
            pass

    sys.meta_path.insert(0, Blocker())
""")


def test_default_is_torch_without_onnxruntime(tmp_path):
    script = BLOCK_ONNXRUNTIME + textwrap.dedent(f"""
        import json, torch
        from captioner import Captioner
        from captioner.encoders.onnx_runtime import onnxruntime_available, runtime_encoder
        model = Captioner.from_pretrained()
        caption = model.caption({str(IMAGES[0])!r}, beam_size=3)
        print(json.dumps({{"available": onnxruntime_available(), "onnx_encoder": model._onnx_encoder is not None,
                          "extraction": runtime_encoder("auto", model.encoder, 160, "cpu") is not None,
                          "caption": caption.text, "imported": "onnxruntime" in sys.modules}}))
    """)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    expected = Captioner.from_pretrained().use_runtime("torch").caption(IMAGES[0], beam_size=3).text
    assert result == {"available": False, "onnx_encoder": False, "extraction": False, "caption": expected,
                      "imported": False}
    assert "Warning" not in done.stderr  # a missing optional engine is not worth a warning

    forced = BLOCK_ONNXRUNTIME + "from captioner.cli import main\nsys.exit(main(sys.argv[1:]))\n"
    done = subprocess.run([sys.executable, "-c", forced, "caption", str(IMAGES[0]), "--runtime", "onnx"],
                          capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 2 and "onnxruntime" in done.stderr and "pip install" in done.stderr


@pytest.mark.skipif(importlib.util.find_spec("onnxruntime") is None, reason="onnxruntime is not installed")
def test_onnxruntime_is_a_default_dependency():
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = {d.split(">")[0].split("=")[0].strip() for d in project["dependencies"]}
    assert {"onnxruntime", "onnx"} <= names
