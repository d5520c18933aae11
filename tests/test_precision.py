"""Precision by measurement: bf16 autocast training learns as fp32 training does (the CPU twin of
``test_cuda.py``'s training test, so CI guards it)."""
from __future__ import annotations

import json

import numpy as np

from captioner.cli import main


def train_losses(data, out, extra=()) -> list[float]:
    assert main(["train", "--data", str(data), "--out", str(out), "--encoder", "efficientnet_lite0", "--epochs", "7",
                 "--batch-size", "8", "--min-word-count", "1", "--no-progress", "--device", "cpu",
                 "--set", "log_every=0", *extra]) == 0
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [r["train_loss"] for r in records if "train_loss" in r]


def test_bf16_autocast_training_learns_as_fp32_training_does(tiny_one_caption, tmp_path):
    """The train loop's bf16 autocast, on the CPU: the loss halves in the 7 epochs fp32 needs
    (in 6 neither does: 4.50 → 2.36), and every epoch's loss is within 2 % of fp32's (0.04 % at
    most, measured), so bf16 learns neither slower nor differently."""
    fp32 = train_losses(tiny_one_caption, tmp_path / "fp32")
    bf16 = train_losses(tiny_one_caption, tmp_path / "bf16", ["--set", "cpu_amp=true"])
    assert fp32[-1] < 0.5 * fp32[0]
    assert bf16[-1] < 0.5 * bf16[0]
    np.testing.assert_allclose(bf16, fp32, rtol=0.02)
