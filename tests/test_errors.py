"""Errors a user can cause: one line on stderr, exit 2, no traceback; bugs keep theirs."""
from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import pytest

import captioner
from captioner import Captioner, CaptionerError
from captioner.cli import main
from captioner.model import default_model_dir

from conftest import TINY

IMAGE = TINY / "images" / "astronaut.jpg"


def _fails_in_one_line(argv: list[str], capsys, *needles: str) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    for needle in needles:
        assert needle in err, err
    return err


@pytest.fixture
def model_dir(tmp_path) -> Path:
    return Path(shutil.copytree(default_model_dir(), tmp_path / "model"))


def _train(data, out, *extra) -> list[str]:
    return ["train", "--data", str(data), "--out", str(out), "--encoder", "efficientnet_lite0",
            "--min-word-count", "1", "--no-progress", "--epochs", "1", *extra]


def test_every_error_kind_is_exported_under_one_base():
    from captioner.data.emoji import EmojiSourceError
    from captioner.data.sources import DatasetError
    from captioner.encoders.base import PretrainedWeightsUnavailable
    from captioner.model import ModelDirectoryError
    from captioner.train.config import ConfigError
    from captioner.train.state import RunFolderError

    assert "CaptionerError" in captioner.__all__
    for kind in (EmojiSourceError, DatasetError, PretrainedWeightsUnavailable, ModelDirectoryError, ConfigError,
                 RunFolderError):
        assert issubclass(kind, CaptionerError), kind
    assert issubclass(DatasetError, ValueError) and issubclass(ModelDirectoryError, ValueError)


def test_unparsable_config_yaml(tmp_path, capsys):
    config = tmp_path / "bad.yaml"
    config.write_text("epochs: [1, 2\n  lr: {\n")
    _fails_in_one_line(_train(TINY / "captions.csv", tmp_path / "run", "--config", str(config)), capsys,
                       str(config), "YAML")


@pytest.mark.parametrize("name, content", [("config.json", "[]"), ("vocab.json", "[]"),
                                           ("vocab.json", '{"itos": 5}'), ("config.json", "\xff\xfe")])
def test_damaged_model_directory(model_dir, capsys, name, content):
    (model_dir / name).write_bytes(content.encode("latin-1"))
    _fails_in_one_line(["caption", "--model", str(model_dir), str(IMAGE)], capsys, str(model_dir))


@pytest.mark.parametrize("state", ["pickle", "empty"])
def test_damaged_training_state(tmp_path, capsys, state, tiny_one_caption):
    out = tmp_path / "run"
    folder = Path(shutil.copytree(default_model_dir(), out / "checkpoints" / "step-00000001"))
    (out / "last").symlink_to(Path("checkpoints") / folder.name)
    path = folder / "training_state.pt"
    # A pickle that would run code if loaded without weights_only.
    path.write_bytes(pickle.dumps(shutil.rmtree) if state == "pickle" else b"")
    _fails_in_one_line(_train(tiny_one_caption, out, "--decoder", "show-attend-tell", "--resume"), capsys,
                       str(path), "not a training state")


def test_non_utf8_captions_file(tmp_path, capsys):
    data = tmp_path / "latin1.csv"
    data.write_bytes(f"image,caption\n{IMAGE},un caf\xe9 noir\n".encode("latin-1"))
    _fails_in_one_line(_train(data, tmp_path / "run"), capsys, str(data), "UTF-8")


def test_one_caption_dataset_fails_before_feature_extraction(tmp_path, capsys, monkeypatch):
    from captioner.data import feature_cache

    def extraction(*args, **kwargs):
        raise AssertionError("features were extracted before the dataset was checked")

    monkeypatch.setattr(feature_cache.FeatureCache, "build", extraction)
    data = tmp_path / "one.csv"
    data.write_text(f"image,caption\n{IMAGE},a lonely caption\n")
    _fails_in_one_line(_train(data, tmp_path / "run"), capsys, "1 training caption", "at least 2")


def test_absurd_decoder_size_is_refused_before_allocating(tmp_path, capsys, tiny_one_caption):
    _fails_in_one_line(_train(tiny_one_caption, tmp_path / "run", "--set", "model.decoder_options={hidden_dim: 200000}"),
                       capsys, "GiB", "choose smaller sizes")
    for bad in ("-5", "many"):
        _fails_in_one_line(_train(tiny_one_caption, tmp_path / "run", "--set", f"model.decoder_options={{hidden_dim: {bad}}}"),
                           capsys, "cannot be built with options", "hidden_dim")


def test_run_folder_of_an_older_layout(tmp_path, capsys, tiny_one_caption):
    out = tmp_path / "run"
    shutil.copytree(default_model_dir(), out / "last")  # out/last as a real folder: the old layout
    _fails_in_one_line(_train(tiny_one_caption, out, "--resume"), capsys, str(out / "last"), "older captioner")


def test_zero_max_length_and_beam_size(tmp_path, capsys, tiny_one_caption):
    _fails_in_one_line(["caption", str(IMAGE), "--max-length", "0"], capsys, "max_length must be a whole number of words")
    _fails_in_one_line(["caption", str(IMAGE), "--beam-size", "0"], capsys, "beam_size must be at least 1")
    _fails_in_one_line(_train(tiny_one_caption, tmp_path / "run", "--max-length", "0"), capsys, "max_length")
    model = Captioner.from_pretrained()
    with pytest.raises(CaptionerError, match="beam_size must be at least 1"):
        model.caption(IMAGE, beam_size=0)


def test_names_and_devices(tmp_path, capsys, tiny_one_caption):
    err = _fails_in_one_line(_train(tiny_one_caption, tmp_path / "run", "--decoder", "nope"), capsys, "unknown decoder")
    assert "\"unknown" not in err  # the message, not a KeyError's quoted repr
    _fails_in_one_line(["caption", str(IMAGE), "--device", "bogus"], capsys, "not a device name")


def test_a_bug_keeps_its_traceback(monkeypatch):
    from captioner import cli

    def broken(args):
        raise RuntimeError("a bug")

    monkeypatch.setattr(cli, "run_models", broken)
    with pytest.raises(RuntimeError, match="a bug"):
        main(["models"])


def test_file_name_with_newline_stays_on_one_output_line(tmp_path, capsys):
    odd = tmp_path / "two\nlines\tand\\tab.png"
    shutil.copy(IMAGE, odd)
    assert main(["caption", str(odd), "--beam-size", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1, lines
    path, caption = lines[0].split("\t")
    assert path == str(tmp_path / "two\\nlines\\tand\\\\tab.png") and caption


def test_the_installed_command_prints_one_line(model_dir):
    """The real process: nothing else (warnings, tracebacks) reaches stderr."""
    import subprocess
    import sys

    (model_dir / "config.json").write_text("[]")
    result = subprocess.run([sys.executable, "-m", "captioner", "caption", "--model", str(model_dir), str(IMAGE)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.splitlines() == [
        f"captioner caption: error: {model_dir / 'config.json'}: holds a JSON list, not an object"
    ]
