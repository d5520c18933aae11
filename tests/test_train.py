"""Training: learning on real images, resume, config layering."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from captioner import Captioner
from captioner.data.sources import read_dataset
from captioner.train.config import ConfigError, load_config
from captioner.train.validation import exact_match

from conftest import train_tiny


def test_show_tell_learns_its_training_captions(trained_show_tell, tiny_one_caption):
    """The end-to-end test that proves learning: ≥ 90% exact match, greedy and beam."""
    model = Captioner.from_pretrained(trained_show_tell)
    examples = read_dataset(tiny_one_caption)
    references = {e.image_id: e.captions for e in examples}
    for beam_size in (1, 3):
        captions = model.caption([e.path for e in examples], beam_size=beam_size)
        predictions = {e.image_id: c.text for e, c in zip(examples, captions)}
        assert exact_match(predictions, references) >= 0.9, (beam_size, predictions)
    run = trained_show_tell
    assert (run / "curves.png").stat().st_size > 1000
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    epochs = [r for r in records if "epoch" in r]
    assert epochs[-1]["train_loss"] < epochs[0]["train_loss"] / 5
    assert (run / "train_config.yaml").is_file() and (run / "last" / "training_state.pt").is_file()
    # CIDEr-D document frequencies of the training captions travel with the model.
    from captioner.metrics import CiderD

    cider = CiderD.from_dict(json.loads((run / "cider_df.json").read_text()))
    assert cider.score(["dog face"], [["dog face"]])[0] > 0


def test_resume_continues_exactly(tiny_one_caption, tmp_path):
    straight = train_tiny(tiny_one_caption, tmp_path / "straight", epochs=4)
    partial = train_tiny(tiny_one_caption, tmp_path / "resumed", epochs=2)
    from captioner.cli import main

    assert main(["train", "--data", str(tiny_one_caption), "--out", str(partial), "--encoder", "efficientnet_lite0",
                 "--epochs", "4", "--batch-size", "8", "--min-word-count", "1", "--no-progress",
                 "--set", "log_every=0", "--resume"]) == 0
    a = load_file(str(straight / "last/model.safetensors"))
    b = load_file(str(partial / "last/model.safetensors"))
    for key in a:
        assert torch.allclose(a[key], b[key], atol=1e-5), key


def test_fresh_run_refuses_to_overwrite(tiny_one_caption, trained_show_tell):
    from captioner.cli import main

    assert main(["train", "--data", str(tiny_one_caption), "--out", str(trained_show_tell), "--encoder",
                 "efficientnet_lite0", "--epochs", "1", "--no-progress"]) == 2


def test_config_layers_and_unknown_keys(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("epochs: 7\noptim: {lr: 0.01}\nmodel: {decoder_options: {hidden_dim: 64}}\n")
    config = load_config(path, {"optim.lr": "0.5", "model.decoder_options": {"embed_dim": 32}})
    assert config.epochs == 7 and config.optim.lr == 0.5
    assert config.model.decoder_options == {"hidden_dim": 64, "embed_dim": 32}
    with pytest.raises(ConfigError, match="unknown config key 'optim.learning_rate'"):
        load_config(None, {"optim.learning_rate": 1})
    path.write_text("epoch: 3\n")
    with pytest.raises(ConfigError, match="unknown config key 'epoch'"):
        load_config(path)
    with pytest.raises(ConfigError, match="expected int"):
        load_config(None, {"epochs": "many"})


def test_invalid_dataset_stops_before_heavy_work(tmp_path, capsys):
    from captioner.cli import main

    data = tmp_path / "d.csv"
    data.write_text("image,caption\nmissing.jpg,a thing\n")
    assert main(["train", "--data", str(data), "--out", str(tmp_path / "r"), "--encoder", "efficientnet_lite0"]) == 2
    assert "1 missing image files" in capsys.readouterr().err


def test_ctrl_c_saves_state_and_resume_finishes(tiny_one_caption, tmp_path):
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "run"
    command = [sys.executable, "-m", "captioner", "train", "--data", str(tiny_one_caption), "--out", str(out),
               "--encoder", "efficientnet_lite0", "--batch-size", "4", "--min-word-count", "1", "--no-progress",
               "--set", "log_every=1"]
    process = subprocess.Popen([*command, "--epochs", "500"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while time.time() < deadline and process.poll() is None:
        metrics = out / "metrics.jsonl"
        if metrics.is_file() and metrics.read_text().count('"epoch"') >= 1:
            break
        time.sleep(0.5)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    assert "Traceback" not in err
    state = torch.load(out / "last/training_state.pt", weights_only=True)
    steps_done = state["progress"]["step"]
    assert steps_done >= 8  # at least the first epoch (31 captions / 4 per batch)
    finish = subprocess.run([*command, "--epochs", "8", "--resume"], capture_output=True, text=True)
    assert finish.returncode == 0, finish.stderr
    state = torch.load(out / "last/training_state.pt", weights_only=True)
    assert state["progress"]["epoch"] == 8 and state["progress"]["step"] > steps_done
