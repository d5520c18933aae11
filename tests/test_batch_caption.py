"""``captioner caption DIR --output preds.jsonl`` at scale: resumable, every image once,
image-decoding workers, one part file per torchrun rank."""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from captioner import Captioner
from captioner.cli import expand_image_paths, main
from captioner.data.vocab import Vocabulary

from conftest import TINY

IMAGES = TINY / "images"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """An untrained show-tell on real EfficientNet-Lite0 features: captions are nonsense but
    deterministic, which is all resuming needs."""
    torch.manual_seed(0)
    vocab = Vocabulary(f"w{i}" for i in range(40))
    model = Captioner.build("efficientnet_lite0", "show-tell", vocab, max_length=6)
    model.preprocess = replace(model.preprocess, crop_size=64, resize_size=64)  # fast on CPU
    return model.save_pretrained(tmp_path_factory.mktemp("model"))


@pytest.fixture
def counted(monkeypatch) -> list[int]:
    """Images each captioning batch encoded."""
    sizes: list[int] = []
    original = Captioner.caption_tensor

    def counting(self, pixels, *args, **kwargs):
        sizes.append(pixels.shape[0])
        return original(self, pixels, *args, **kwargs)

    monkeypatch.setattr(Captioner, "caption_tensor", counting)
    return sizes


def caption(model_dir: Path, output: Path, *extra: str) -> int:
    return main(["caption", str(IMAGES), "--model", str(model_dir), "--output", str(output), "--beam-size", "2",
                 "--batch-size", "8", "--device", "cpu", *extra])


def records(output: Path) -> list[dict]:
    return [json.loads(line) for line in output.read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def full_run(model_dir, tmp_path_factory) -> list[dict]:
    output = tmp_path_factory.mktemp("full") / "preds.jsonl"
    assert caption(model_dir, output) == 0
    return records(output)


def test_every_image_is_captioned_once(full_run):
    paths = expand_image_paths([str(IMAGES)])
    assert len(paths) > 20
    assert sorted(r["image"] for r in full_run) == sorted(paths)
    assert all(isinstance(r["caption"], str) for r in full_run)


@pytest.mark.parametrize("kept", [0, 17])
def test_rerun_after_interruption_captions_only_the_rest(model_dir, full_run, counted, tmp_path, kept):
    """The output of an interrupted run: ``kept`` whole lines, then a line cut off mid-write."""
    output = tmp_path / "preds.jsonl"
    lines = [json.dumps(r, ensure_ascii=False) for r in full_run]
    output.write_text("".join(line + "\n" for line in lines[:kept]) + lines[kept][:25], encoding="utf-8")

    assert caption(model_dir, output) == 0

    assert sum(counted) == len(full_run) - kept  # the cut-off image is captioned again, the kept ones not
    text = output.read_text(encoding="utf-8")
    assert text.endswith("\n")
    final = records(output)  # every line parses: the cut-off fragment is gone
    assert sorted(r["image"] for r in final) == sorted(r["image"] for r in full_run)
    assert {r["image"]: r["caption"] for r in final} == {r["image"]: r["caption"] for r in full_run}

    counted.clear()
    assert caption(model_dir, output) == 0  # a finished output: nothing left to do
    assert sum(counted) == 0 and records(output) == final


def test_image_decoding_workers_give_the_same_captions(model_dir, full_run, tmp_path):
    output = tmp_path / "preds.jsonl"
    assert caption(model_dir, output, "--num-workers", "2") == 0
    assert records(output) == full_run  # same captions, same order


def test_each_torchrun_rank_writes_its_share(model_dir, full_run, tmp_path, monkeypatch):
    output = tmp_path / "preds.jsonl"
    monkeypatch.setenv("WORLD_SIZE", "2")
    for rank in range(2):
        monkeypatch.setenv("RANK", str(rank))
        assert caption(model_dir, output) == 0
    parts = [records(tmp_path / f"preds.rank{rank}.jsonl") for rank in range(2)]
    assert not output.exists()
    images = [r["image"] for part in parts for r in part]
    assert sorted(images) == sorted(r["image"] for r in full_run) and len(set(images)) == len(images)
