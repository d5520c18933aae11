"""Model folders are untrusted input: every tampered folder — exported or torch, built here
from the bundled model — gives one error line naming the file and the field, through the CLI
and the API, before anything large is allocated; no path a folder names leads out of it."""
from __future__ import annotations

import importlib.util
import json
import os
import pickle
import shutil
from pathlib import Path
from typing import Callable

import pytest
import torch

from captioner import Captioner, CaptionerError, load_model
from captioner.cli import main
from captioner.model import ModelDirectoryError, default_model_dir

from conftest import TINY

IMAGE = TINY / "images" / "emoji_1f436.png"
needs_onnx = pytest.mark.skipif(
    importlib.util.find_spec("onnxruntime") is None or importlib.util.find_spec("onnx") is None,
    reason="exported folders need onnx and onnxruntime (pip install 'captioner[onnx]')",
)


def _fails_in_one_line(folder: Path, capsys, *needles: str) -> str:
    assert main(["caption", "--model", str(folder), str(IMAGE)]) == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    for needle in needles:
        assert needle in err, err
    return err


def _replace(path: Path, data: bytes) -> None:
    """Write ``path`` anew (never through a hard link into the pristine copy)."""
    path.unlink(missing_ok=True)
    path.write_bytes(data)


def _edit_json(path: Path, change: Callable[[dict], None]) -> None:
    data = json.loads(path.read_text(encoding="utf-8"))
    change(data)
    _replace(path, json.dumps(data).encode())


def _copy(source: Path, target: Path) -> Path:
    """A copy of a model folder whose large files are hard links: tampering replaces files."""
    def link(src, dst):
        return os.link(src, dst) if os.path.getsize(src) > 2**20 else shutil.copy2(src, dst)

    return Path(shutil.copytree(source, target, copy_function=link))


def _words(count: int, word: bytes = b"wordword") -> bytes:
    """vocab.json with ``count`` words after the special tokens (all alike: the checks refuse it
    by its size or its word count before a vocabulary is built)."""
    return b'{"itos": ["<pad>", "<start>", "<end>", "<unk>"' + (b', "' + word + b'"') * count + b"]}"


def _sparse(path: Path, size: int) -> None:
    path.unlink(missing_ok=True)
    with open(path, "wb") as f:
        f.truncate(size)


# --- exported folders ----------------------------------------------------------------------
def _manifest(change: Callable[[dict], None]):
    return lambda folder, other: _edit_json(folder / "manifest.json", change)


def _preprocess(**values):
    return lambda folder, other: _edit_json(folder / "preprocess.json", lambda p: p.update(values))


def _decoding(**values):
    return _manifest(lambda m: m["decoding"].update(values))


def _cut(name: str, keep: float):
    """Keep the first ``keep`` share of a file's bytes."""
    def tamper(folder, other):
        data = (folder / name).read_bytes()
        _replace(folder / name, data[: int(len(data) * keep)])
    return tamper


def _rename_state(manifest: dict) -> None:
    """Rename state.h to state.hidden in the manifest only: consistent, but not the graphs' names."""
    def rename(name):
        return name.replace("state.h", "state.hidden") if name.split(".")[:2] == ["state", "h"] else name

    for part in ("init_state", "step"):
        for key in ("inputs", "outputs"):
            manifest[part][key] = [rename(n) for n in manifest[part][key]]
    for slot in manifest["state"]:
        slot["name"] = rename(slot["name"])


def _link(name: str, target: Callable[[Path, Path], Path]):
    def tamper(folder, other):
        (folder / name).unlink()
        (folder / name).symlink_to(target(folder, other))
    return tamper


EXPORTED = {
    # damaged graph files
    "truncated encoder.onnx": (_cut("encoder.onnx", 0.5), ["encoder.onnx", "not a graph onnxruntime can load"]),
    "truncated step.onnx": (_cut("step.onnx", 0.9), ["step.onnx", "not a graph onnxruntime can load"]),
    "empty init_state.onnx": (_cut("init_state.onnx", 0), ["init_state.onnx", "not a graph onnxruntime can load"]),
    "random encoder.onnx": (lambda f, o: _replace(f / "encoder.onnx", os.urandom(4096)), ["encoder.onnx"]),
    "3 GB sparse encoder.onnx": (lambda f, o: _sparse(f / "encoder.onnx", 3 * 2**30),
                                 ["encoder.onnx", "max_graph_bytes"]),
    # the manifest's types
    "manifest not JSON": (lambda f, o: _replace(f / "manifest.json", b'{"format": '),
                          ["manifest.json", "unreadable JSON"]),
    "manifest a list": (lambda f, o: _replace(f / "manifest.json", b"[]"), ["manifest.json", "not a captioner-onnx"]),
    "2 MB manifest": (_manifest(lambda m: m.update(padding="x" * 2**21)), ["manifest.json", "max_json_bytes"]),
    "graphs a list": (_manifest(lambda m: m.update(graphs=["encoder.onnx"])), ["manifest.json", "graphs"]),
    "graph name a number": (_manifest(lambda m: m["graphs"].update(encoder=5)), ["graphs.encoder", "file name"]),
    "no vocab_size": (_manifest(lambda m: m["decoder"].pop("vocab_size")), ["decoder.vocab_size"]),
    "max_length a string": (_decoding(max_length="16"), ["decoding.max_length"]),
    "state not a list": (_manifest(lambda m: m.update(state="x")), ["manifest.json", "state"]),
    "pooled dim a string": (_manifest(lambda m: m["encoder"].update(pooled_shape=["batch", "x"])),
                            ["encoder.pooled_shape"]),
    "untuned dim a string": (_manifest(lambda m: m["encoder"].update(untuned_shape=["batch", "x"])),
                             ["encoder.untuned_shape"]),
    "no untuned_shape": (_manifest(lambda m: m["encoder"].pop("untuned_shape")), ["encoder.untuned_shape"]),
    "a fourth encoder output": (_manifest(lambda m: m["encoder"]["outputs"].append("extra")),
                                ["encoder", "two outputs (pooled, grid), or three"]),
    "step reads no state": (_manifest(lambda m: m["step"]["inputs"].append("state.bogus")), ["step.inputs"]),
    "state names not the graphs'": (_manifest(_rename_state), ["init_state.onnx", "not the inputs"]),
    # paths out of the folder
    "graph by absolute path": (lambda f, o: _edit_json(f / "manifest.json", lambda m: m["graphs"].update(
        encoder=str(o / "encoder.onnx"))), ["graphs.encoder", "outside the model folder"]),
    "graph by ..": (lambda f, o: _edit_json(f / "manifest.json", lambda m: m["graphs"].update(
        encoder=os.path.relpath(o / "encoder.onnx", f))), ["graphs.encoder", "outside the model folder"]),
    "graph symlinked out": (_link("encoder.onnx", lambda f, o: o / "encoder.onnx"), ["graphs.encoder", "symlink"]),
    "vocab symlinked out": (_link("vocab.json", lambda f, o: o / "vocab.json"), ["vocab.json", "symlink"]),
    "confidence by ..": (_manifest(lambda m: m.update(confidence="../confidence.safetensors")),
                         ["confidence", "outside the model folder"]),
    # numbers
    "lengths 1e9": (_decoding(max_length=1e9, min_length=1e9), ["decoding.max_length", "1 to 512"]),
    "max_length 10**9": (_decoding(max_length=10**9, min_length=10**9), ["decoding.max_length", "1 to 512"]),
    "max_length 0": (_decoding(max_length=0), ["decoding.max_length"]),
    "min_length over max_length": (_decoding(min_length=30), ["decoding.min_length"]),
    "banned id out of range": (_decoding(banned_ids=[0, 99999]), ["decoding.banned_ids[1]"]),
    "end id out of range": (_decoding(end_id=-1), ["decoding.end_id"]),
    "vocab_size 5M": (_manifest(lambda m: m["decoder"].update(vocab_size=5_000_000)),
                      ["decoder.vocab_size", "1,000,000"]),
    "5M-word vocab.json": (lambda f, o: _replace(f / "vocab.json", _words(5_000_000)),
                           ["vocab.json", "max_vocab_bytes"]),
    "1,000,001-word vocab.json": (lambda f, o: _replace(f / "vocab.json", _words(999_997, b"w")),
                                  ["vocab.json", "word count"]),
    "vocab.json not JSON": (lambda f, o: _replace(f / "vocab.json", b"\xff\xfe"), ["vocab.json", "unreadable JSON"]),
    "crop 4000": (_preprocess(crop_size=4000), ["preprocess.json", "crop_size", "1,024"]),
    "crop a string": (_preprocess(crop_size="big"), ["preprocess.json", "crop_size"]),
    "crop unlike the graph's": (_preprocess(crop_size=128), ["encoder.onnx", "128×128"]),
    "mean of one channel": (_preprocess(mean=[0.5]), ["preprocess.json", "mean"]),
    "std zero": (_preprocess(std=[0, 0, 0]), ["preprocess.json", "std"]),
    "unknown preprocess key": (_preprocess(gamma=2.2), ["preprocess.json", "gamma"]),
    "truncated confidence": (_cut("confidence.safetensors", 0.5), ["confidence.safetensors", "corrupt or truncated"]),
}


@pytest.fixture(scope="module")
def pristine(bundled_export, tmp_path_factory) -> tuple[Path, Path]:
    """The bundled model's export, and another export folder beside it whose valid graphs a
    tampered manifest or symlink points at (the audit's "another folder's encoder.onnx, loaded
    and used silently")."""
    _, out = bundled_export
    return out, _copy(out, tmp_path_factory.mktemp("other") / "onnx")


@needs_onnx
@pytest.mark.parametrize("case", EXPORTED)
def test_a_tampered_exported_folder_is_one_error_line(case, pristine, tmp_path, capsys):
    tamper, needles = EXPORTED[case]
    folder = _copy(pristine[0], tmp_path / "onnx")
    tamper(folder, pristine[1])
    _fails_in_one_line(folder, capsys, *needles)
    with pytest.raises(CaptionerError):  # the API raises the same, on load
        load_model(folder)


@needs_onnx
def test_the_untampered_export_still_loads_and_captions(pristine):
    model = load_model(_copy(pristine[0], pristine[1].parent / "copy"))
    assert model.caption(IMAGE, beam_size=1).text


# --- torch folders -------------------------------------------------------------------------
def _config(change: Callable[[dict], None]):
    return lambda folder, outside: _edit_json(folder / "config.json", change)


def _weights_from(folder: Path, outside: Path) -> None:
    """Point the encoder at a valid weights file outside the folder (written there)."""
    from safetensors.torch import save_file

    from captioner.encoders import create_encoder

    encoder = create_encoder("efficientnet_lite0", pretrained=False)
    save_file({k: v.contiguous() for k, v in encoder.state_dict().items()}, str(outside / "lite0.safetensors"))
    _edit_json(folder / "config.json",
               lambda c: c["encoder"]["options"].update(weights_file=str(outside / "lite0.safetensors")))


def _extra_tensor(folder: Path, outside: Path) -> None:
    from safetensors.torch import load_file, save_file

    state = load_file(str(folder / "model.safetensors"))
    state["decoder.extra"] = torch.zeros(1000)
    (folder / "model.safetensors").unlink()
    save_file(state, str(folder / "model.safetensors"))


TORCH = {
    "weights_file outside": (_weights_from,
                             ["config.json", "encoder.options.weights_file", "outside the model folder"]),
    "weights_file by ..": (_config(lambda c: c["encoder"]["options"].update(weights_file="../lite0.pth")),
                           ["encoder.options.weights_file", "outside the model folder"]),
    "model_options checkpoint_path": (_config(lambda c: c["encoder"]["options"].update(
        model_options={"checkpoint_path": "/etc/passwd"})), ["model_options.checkpoint_path"]),
    "max_length 1e9": (_config(lambda c: c.update(max_length=1e9)), ["config.json", "max_length", "1 to 512"]),
    "crop 4000": (_config(lambda c: c["preprocess"].update(crop_size=4000)), ["config.json", "preprocess.crop_size"]),
    "std zero": (_config(lambda c: c["preprocess"].update(std=[0, 0, 0])), ["preprocess.std"]),
    "2 MB config.json": (_config(lambda c: c.update(padding="x" * 2**21)), ["config.json", "max_json_bytes"]),
    "encoder a string": (_config(lambda c: c.update(encoder="x")), ["config.json", "encoder must be"]),
    "decoder a million wide": (_config(lambda c: c["decoder"]["options"].update(hidden_dim=10**6)),
                               ["model.safetensors does not match config.json", "1000000"]),
    "decoder of negative width": (_config(lambda c: c["decoder"]["options"].update(hidden_dim=-5)),
                                  ["config.json", "cannot be built"]),
    "weights with an extra tensor": (_extra_tensor, ["model.safetensors", "decoder.extra", "makes nothing"]),
    "timm encoder 99,999 wide": (_config(lambda c: c["encoder"].update(
        name="timm:vit_tiny_patch16_224", options={"pretrained": True, "model_options": {"embed_dim": 99_999}})),
        ["config.json", "needs", "GiB, more than the memory available"]),
    "timm option timm refuses": (_config(lambda c: c["encoder"].update(
        name="timm:resnet18", options={"pretrained": True, "model_options": {"base_width": 100_000}})),
        ["config.json", "encoder options cannot be built", "base width"]),
    "5M-word vocab.json": (lambda f, o: _replace(f / "vocab.json", _words(5_000_000)),
                           ["vocab.json", "max_vocab_bytes"]),
    "weights symlinked out": (_link("model.safetensors", lambda f, o: default_model_dir() / "model.safetensors"),
                              ["model.safetensors", "symlink", "outside the model folder"]),
    "encoder_weights_saved a string": (_config(lambda c: c.update(encoder_weights_saved="yes")),
                                       ["encoder_weights_saved"]),
    "a tuned stage the weights lack": (_config(lambda c: c["encoder"]["options"].update(
        tuned_blocks=c["encoder"]["options"].get("tuned_blocks", 0) + 1)),
        ["model.safetensors does not match config.json", "holds nothing, config.json makes shape"]),
    "tuned_blocks past the encoder": (_config(lambda c: c["encoder"]["options"].update(tuned_blocks=99)),
                                      ["config.json", "tuned_blocks must be 0..9, got 99"]),
}


@pytest.mark.parametrize("case", TORCH)
def test_a_tampered_torch_folder_is_one_error_line(case, tmp_path, capsys):
    tamper, needles = TORCH[case]
    folder = _copy(default_model_dir(), tmp_path / "model")
    (tmp_path / "outside").mkdir()
    tamper(folder, tmp_path / "outside")
    _fails_in_one_line(folder, capsys, *needles)
    with pytest.raises(ModelDirectoryError):
        Captioner.from_pretrained(folder)


class _Payload:
    """Unpickling this writes a marker file: what a code-running weights file would do."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


@pytest.fixture(scope="module")
def timm_folder(tmp_path_factory) -> Path:
    """A timm encoder's model folder whose encoder weights come from its own weights_file."""
    from safetensors.torch import save_file

    from captioner.data.vocab import Vocabulary

    torch.manual_seed(0)
    model = Captioner.build("timm:resnet18", "show-tell", Vocabulary(["a", "dog"]),
                            encoder_options={"pretrained": False}, decoder_options={"embed_dim": 8, "hidden_dim": 8})
    folder = model.save_pretrained(tmp_path_factory.mktemp("timm") / "model")
    decoder_only = {k: v for k, v in model.state_to_save().items() if k.startswith("decoder.")}
    (folder / "model.safetensors").unlink()
    save_file(decoder_only, str(folder / "model.safetensors"))
    save_file({k: v.contiguous() for k, v in model.encoder.model.state_dict().items()}, str(folder / "w.safetensors"))
    _edit_json(folder / "config.json", lambda c: (
        c["encoder"]["options"].update(pretrained=True, weights_file="w.safetensors"),
        c.update(encoder_weights_saved=False)))
    return folder


def test_a_weights_file_inside_the_folder_is_read_from_there(timm_folder, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the name is the folder's, not the working directory's
    assert Captioner.from_pretrained(timm_folder).caption(IMAGE, beam_size=1).text is not None


def test_a_code_running_weights_file_is_refused_in_one_line(timm_folder, tmp_path, capsys):
    folder = _copy(timm_folder, tmp_path / "model")
    marker = tmp_path / "pwned"
    (folder / "w.safetensors").unlink()
    (folder / "w.pth").write_bytes(pickle.dumps({"conv1.weight": _Payload(marker)}))
    _edit_json(folder / "config.json", lambda c: c["encoder"]["options"].update(weights_file="w.pth"))
    _fails_in_one_line(folder, capsys, "w.pth", "not a plain state dict")
    assert not marker.exists()


def test_weights_read_from_a_users_file_are_saved_into_the_folder(timm_folder, tmp_path):
    """A model trained from a weights_file carries its encoder weights: its folder names no file."""
    saved = Captioner.from_pretrained(timm_folder).save_pretrained(tmp_path / "resaved")
    config = json.loads((saved / "config.json").read_text())
    assert config["encoder_weights_saved"] is True
    (timm_folder.parent / "elsewhere").mkdir(exist_ok=True)
    moved = Path(shutil.move(str(saved), str(timm_folder.parent / "elsewhere" / "m")))
    assert Captioner.from_pretrained(moved).caption(IMAGE, beam_size=1).text is not None
