"""On a CUDA machine only (skipped elsewhere; ``benchmarks/timing/gpu_check.sh`` runs them on a lent
GPU): the bf16 + channels-last paths compute what fp32 computes, and training and captioning
run on the GPU with the results they have on the CPU."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from captioner import Captioner, create_encoder
from captioner.cli import main
from captioner.data.feature_cache import FeatureCache

from conftest import TINY

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

EXAMPLES = Path(__file__).parent.parent / "examples"


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got.double() - want.double()).norm() / want.double().norm())


def test_bf16_channels_last_extraction_matches_fp32_cpu(tmp_path):
    """The cache built on CUDA (bf16 autocast, channels-last) against the fp32 CPU one."""
    encoder = create_encoder("efficientnet_lite0")
    paths = sorted(str(p) for p in (TINY / "images").glob("*.jpg"))
    on_cpu = FeatureCache(tmp_path / "cpu", encoder, encoder.default_preprocess, paths, with_grid=True).build(
        "cpu", progress=False)
    on_gpu = FeatureCache(tmp_path / "gpu", encoder, encoder.default_preprocess, paths, with_grid=True).build(
        "cuda", progress=False)
    assert on_gpu.folder.name == on_cpu.folder.name  # one cache, whichever device filled it
    rows = np.arange(len(paths))
    for got, want in zip(on_gpu.rows(rows), on_cpu.rows(rows)):
        assert torch.isfinite(got).all()
        assert relative_error(got, want) < 2e-2  # bf16 operands: 1e-3 … 1e-2


def test_training_on_cuda_learns_like_on_the_cpu(tiny_one_caption, tmp_path):
    """bf16 autocast training learns as fp32 CPU training does (dropout masks differ between
    the devices' generators, so the losses are close, not equal)."""
    losses = {}
    for device in ("cpu", "cuda"):
        out = tmp_path / device
        assert main(["train", "--data", str(tiny_one_caption), "--out", str(out), "--encoder", "efficientnet_lite0",
                     "--epochs", "6", "--batch-size", "8", "--min-word-count", "1", "--no-progress", "--device",
                     device, "--set", "log_every=0"]) == 0
        records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        losses[device] = [r["train_loss"] for r in records if "train_loss" in r]
    assert losses["cuda"][-1] < 0.5 * losses["cuda"][0]  # it learns
    assert abs(losses["cuda"][-1] - losses["cpu"][-1]) < 0.3 * losses["cpu"][-1]


def test_bundled_model_captions_the_same_on_cuda():
    images = sorted(p for p in EXAMPLES.iterdir() if p.suffix in (".png", ".jpg"))
    on_cpu = Captioner.from_pretrained(device="cpu").caption(images, beam_size=3)
    on_gpu = Captioner.from_pretrained(device="cuda").caption(images, beam_size=3)
    assert [c.text for c in on_gpu] == [c.text for c in on_cpu]
    np.testing.assert_allclose([c.score for c in on_gpu], [c.score for c in on_cpu], atol=1e-2)
