"""Shared fixtures: the tiny real-image dataset and one show-tell model trained on it."""
from __future__ import annotations

import csv
import os
from pathlib import Path

import pytest

FIXTURES = Path(__file__).parent / "fixtures"
TINY = FIXTURES / "tiny"


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory):
    """Feature caches go to a temp folder, never the user's ~/.cache."""
    os.environ["CAPTIONER_CACHE"] = str(tmp_path_factory.mktemp("captioner-cache"))
    yield


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    """Tiny models on 2 cores: one intra-op thread is faster, and never oversubscribes when
    tests start subprocesses (they inherit OMP_NUM_THREADS)."""
    import torch

    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
    yield


@pytest.fixture(scope="session")
def tiny_csv() -> Path:
    return TINY / "captions.csv"


@pytest.fixture(scope="session")
def tiny_one_caption(tmp_path_factory) -> Path:
    """The tiny set with one caption per image (what the learning tests memorise)."""
    out = tmp_path_factory.mktemp("tiny-one") / "captions.csv"
    seen = set()
    with open(TINY / "captions.csv") as f, open(out, "w", newline="") as g:
        writer = csv.writer(g)
        writer.writerow(["image", "caption"])
        for row in csv.DictReader(f):
            if row["image"] not in seen:
                seen.add(row["image"])
                writer.writerow([str(TINY / row["image"]), row["caption"]])
    return out


def train_tiny(data: Path, out: Path, decoder: str = "show-tell", epochs: int = 40, extra: list[str] = ()) -> Path:
    """Train on the tiny set with real EfficientNet-Lite0 features; returns the model dir."""
    from captioner.cli import main

    code = main(
        ["train", "--data", str(data), "--out", str(out), "--encoder", "efficientnet_lite0",
         "--decoder", decoder, "--epochs", str(epochs), "--batch-size", "8", "--min-word-count", "1",
         "--no-progress", "--set", "log_every=0", *extra]
    )
    assert code == 0
    return out


@pytest.fixture(scope="session")
def trained_show_tell(tiny_one_caption, tmp_path_factory) -> Path:
    return train_tiny(tiny_one_caption, tmp_path_factory.mktemp("show-tell"))


@pytest.fixture(scope="session")
def trained_en_de(tmp_path_factory) -> Path:
    """One show-tell model of the tiny set captioned in English and German (a BPE vocabulary
    with <2en> and <2de>): what the multilingual tests share."""
    return train_tiny(TINY / "captions_en_de.csv", tmp_path_factory.mktemp("en-de"), epochs=40,
                      extra=["--set", "data.vocabulary=bpe", "--set", "data.vocab_size=400"])


@pytest.fixture(scope="session")
def bundled_export(tmp_path_factory):
    """The bundled model and its export (``captioner export``), made once per session."""
    from captioner import Captioner
    from captioner.export import export_model

    model = Captioner.from_pretrained()
    return model, export_model(model, tmp_path_factory.mktemp("bundled") / "onnx")
