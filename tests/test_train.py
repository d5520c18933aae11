"""Training: learning on real images, resume, config layering."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from captioner import Captioner
from captioner.data.sources import read_dataset
from captioner.train.config import ConfigError, load_config
from captioner.metrics import exact_match

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


def test_cross_entropy_objective_by_name_weighs_by_tokens_and_smooths_labels():
    import torch.nn.functional as F

    from captioner import create_decoder
    from captioner.data.vocab import Vocabulary
    from captioner.decoders.base import Features
    from captioner.objectives import create_objective

    vocab = Vocabulary(f"w{i}" for i in range(20))
    torch.manual_seed(0)
    decoder = create_decoder("show-tell", len(vocab), 16, embed_dim=8, hidden_dim=8).eval()
    features = Features(torch.randn(3, 16), None)
    captions = torch.tensor([[1, 5, 6, 7, 2], [1, 8, 2, 0, 0], [1, 9, 10, 2, 0]])  # 4 + 2 + 3 targets
    logits = decoder(features, captions[:, :-1]).logits.flatten(0, 1)
    targets = captions[:, 1:].flatten()
    for smoothing in (0.0, 0.1):
        config = load_config(overrides={"optim.label_smoothing": smoothing})
        result = create_objective(config.objective, vocab=vocab, config=config)(decoder, features, captions)
        expected = F.cross_entropy(logits, targets, ignore_index=0, label_smoothing=smoothing)
        assert int(result.weight) == 9
        torch.testing.assert_close(result.loss, expected)
        torch.testing.assert_close(result.logs["loss"], expected)
    with pytest.raises(ValueError, match="unknown objective 'nope'.*cross-entropy"):
        create_objective("nope", vocab=vocab, config=config)


def test_train_one_epoch_reads_only_the_objective_result_and_stops_on_request():
    """Epoch logs are the results' logs averaged by their weights; step records go to ``log``;
    a stop request ends the epoch after the batch in hand, and the next call resumes after it."""
    from captioner.objectives import Objective, ObjectiveResult
    from captioner.train.interrupt import Interrupted
    from captioner.train.loop import TrainContext, make_scheduler, train_one_epoch
    from captioner.train.state import Progress

    class MeanSquaredError(Objective):
        log_names = ("loss", "mean_target")
        weight_unit = "rows"

        def __call__(self, model, inputs, targets):
            loss = ((model(inputs).squeeze(-1) - targets) ** 2).mean()
            return ObjectiveResult(loss, len(targets), {"loss": loss.detach(), "mean_target": targets.mean()})

    torch.manual_seed(0)
    model = torch.nn.Linear(2, 1)
    x, y = torch.randn(8, 2), torch.randn(8)
    batches = [(x[:1], y[:1]), (x[1:4], y[1:4]), (x[4:], y[4:])]  # weights 1, 3, 4
    config = load_config(overrides={"progress": False, "log_every": 1, "epochs": 1})
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)  # fixed weights: the averages are known
    records = []
    context = TrainContext(model, MeanSquaredError(), batches, optimizer, make_scheduler(optimizer, config, 3),
                           config, torch.device("cpu"), log=records.append)
    means, weight = train_one_epoch(context, Progress())
    with torch.no_grad():
        assert weight == 8
        assert means["loss"] == pytest.approx(float(((model(x).squeeze(-1) - y) ** 2).mean()), rel=1e-6)
        assert means["mean_target"] == pytest.approx(float(y.mean()), rel=1e-6)
    assert [r["step"] for r in records] == [1, 2, 3] and set(records[0]) == {"step", "loss", "mean_target", "lr"}

    context.should_stop = lambda: True
    progress = Progress()
    with pytest.raises(Interrupted):
        train_one_epoch(context, progress)
    assert (progress.step, progress.batch_in_epoch) == (1, 1)
    context.should_stop = lambda: False
    means, weight = train_one_epoch(context, progress)
    assert weight == 7 and progress.step == 3
    assert means["mean_target"] == pytest.approx(float(y[1:].mean()), rel=1e-6)
