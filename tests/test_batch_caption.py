"""``captioner caption DIR --output preds.jsonl`` at scale: resumable, every image once,
image-decoding workers, torchrun ranks merged into one output."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from captioner import Captioner
from captioner.batch import caption_files, expand_image_paths
from captioner.batch.inputs import NothingToCaptionError
from captioner.batch.ledger import lock_output
from captioner.cli import main
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
    original = Captioner.caption_pixels

    def counting(self, pixels, *args, **kwargs):
        sizes.append(pixels.shape[0])
        return original(self, pixels, *args, **kwargs)

    monkeypatch.setattr(Captioner, "caption_pixels", counting)
    return sizes


def caption(model_dir: Path, output: Path, *extra: str) -> int:
    return main(["caption", str(IMAGES), "--model", str(model_dir), "--output", str(output), "--beam-size", "2",
                 "--batch-size", "8", "--device", "cpu", *extra])


def records(output: Path) -> list[dict]:
    return [json.loads(line) for line in output.read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def full_run(model_dir, tmp_path_factory) -> list[dict]:
    output = tmp_path_factory.mktemp("full") / "not-yet" / "preds.jsonl"  # the folder is created
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


def test_torchrun_ranks_share_the_images_and_merge_into_one_output(model_dir, full_run, tmp_path):
    """Two real processes (gloo): each captions its share into a part file, rank 0 merges them
    into ``--output`` in input order after the 5 records an earlier run had written."""
    output = tmp_path / "preds.jsonl"
    output.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in full_run[:5]), encoding="utf-8")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m",
               "captioner", "caption", str(IMAGES), "--model", str(model_dir), "--output", str(output),
               "--beam-size", "2", "--batch-size", "8", "--device", "cpu"]
    done = subprocess.run(command, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert f"5 images already in {output}; captioning the other {len(full_run) - 5}" in done.stderr
    assert records(output) == full_run  # every image once, same captions, input order
    assert sorted(p.name for p in tmp_path.iterdir()) == ["preds.jsonl"]  # part files merged away


def test_parts_left_by_an_interrupted_torchrun_run_are_merged_not_recaptioned(model_dir, full_run, counted,
                                                                             tmp_path):
    """Killed mid-run under torchrun: the output, two part files (one cut off mid-line, one
    repeating an image the output already has), and a part of a rank a larger run had."""
    output = tmp_path / "preds.jsonl"
    lines = [json.dumps(r, ensure_ascii=False) + "\n" for r in full_run]
    output.write_text("".join(lines[:3]), encoding="utf-8")
    (tmp_path / "preds.rank0.jsonl").write_text("".join(lines[3:10]) + lines[10][:30], encoding="utf-8")
    (tmp_path / "preds.rank1.jsonl").write_text(lines[2] + "".join(lines[12:15]), encoding="utf-8")
    (tmp_path / "preds.rank3.jsonl").write_text(lines[15], encoding="utf-8")

    assert caption(model_dir, output) == 0  # one process now

    captioned_before = 3 + 7 + 3 + 1
    assert sum(counted) == len(full_run) - captioned_before  # the cut-off image (10) is captioned again
    final = records(output)
    assert final[:captioned_before] == full_run[:10] + full_run[12:16]  # the parts, merged in input order
    assert sorted(r["image"] for r in final) == sorted(r["image"] for r in full_run)  # each image once
    assert {r["image"]: r["caption"] for r in final} == {r["image"]: r["caption"] for r in full_run}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["preds.jsonl"]


def test_caption_files_returns_a_record_per_image_in_input_order(model_dir, full_run, tmp_path):
    """The library call behind the command: same captions as ``--output`` wrote, an unreadable
    file gets its error record in its place, and a loaded model can be passed."""
    broken = tmp_path / "broken.jpg"
    broken.write_bytes((IMAGES / "coffee.jpg").read_bytes()[:300])
    model = Captioner.from_pretrained(model_dir)
    records = caption_files([str(broken), str(IMAGES)], model=model, beam_size=2, batch_size=8)
    assert records[0].image == str(broken) and records[0].caption is None and "broken.jpg" in records[0].error
    assert records[0].to_dict() == {"image": str(broken), "error": records[0].error}
    assert [r.to_dict() for r in records[1:]] == full_run


def test_expand_image_paths_takes_files_only_and_reports_what_it_left_out(tmp_path):
    (tmp_path / "a.jpg").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "x.jpg").mkdir()  # a folder with an image's name
    (tmp_path / "x.jpg" / "b.PNG").write_bytes(b"")
    skipped: list[str] = []
    assert expand_image_paths([str(tmp_path)], skipped) == [str(tmp_path / "a.jpg"), str(tmp_path / "x.jpg" / "b.PNG")]
    assert skipped == [str(tmp_path / "notes.txt")]
    assert expand_image_paths([str(tmp_path / "*.jpg")]) == [str(tmp_path / "a.jpg")]  # a glob: no folders either


def test_files_left_out_of_a_directory_are_reported(model_dir, tmp_path, capsys):
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "chelsea.jpg").write_bytes((IMAGES / "chelsea.jpg").read_bytes())
    (folder / "readme.txt").write_text("not an image")
    assert main(["caption", str(folder), "--model", str(model_dir), "--device", "cpu"]) == 0
    out, err = capsys.readouterr()
    assert out.startswith(str(folder / "chelsea.jpg") + "\t")
    assert "left out 1 file without an image suffix" in err and "readme.txt" in err


# --- one writer per output; nothing to caption ----------------------------------------------
def test_a_run_on_an_output_another_run_holds_is_refused_in_one_line(model_dir, full_run, tmp_path, capsys):
    output = tmp_path / "preds.jsonl"
    holder = lock_output(output)  # what a running `captioner caption --output` holds
    try:
        assert caption(model_dir, output) == 2
        err = capsys.readouterr().err.strip().splitlines()[-1]  # after the note on the folder's non-images
        assert err == f"captioner caption: error: {output} is being written by another captioner run; wait for it " \
                      "to finish, or choose another --output"
        assert output.read_text() == ""
    finally:
        holder.close()
    assert caption(model_dir, output) == 0 and records(output) == full_run


def test_two_runs_started_together_write_every_record_once(model_dir, full_run, tmp_path):
    """Before the lock both ran and every record they shared was written twice."""
    output, some = tmp_path / "preds.jsonl", full_run[:6]
    command = [sys.executable, "-m", "captioner", "caption", *(r["image"] for r in some), "--model", str(model_dir),
               "--output", str(output), "--beam-size", "2", "--batch-size", "8", "--device", "cpu"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    runs = [subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(run.wait(timeout=300), run.stderr.read()) for run in runs]
    assert sorted(code for code, _ in results) in ([0, 0], [0, 2])  # the second refused, or came after the first
    for code, err in results:
        if code == 2:
            assert err.strip().endswith("is being written by another captioner run; wait for it to finish, or "
                                        "choose another --output")
    assert records(output) == some


def test_a_run_killed_while_writing_resumes(model_dir, full_run, tmp_path):
    output = tmp_path / "preds.jsonl"
    command = [sys.executable, "-m", "captioner", "caption", str(IMAGES), "--model", str(model_dir), "--output",
               str(output), "--beam-size", "2", "--batch-size", "1", "--device", "cpu"]
    run = subprocess.Popen(command, env={**os.environ, "OMP_NUM_THREADS": "1"}, stderr=subprocess.DEVNULL)
    try:
        while run.poll() is None and not (output.is_file() and output.read_text().count("\n") >= 3):
            time.sleep(0.05)
    finally:
        run.send_signal(signal.SIGKILL)  # holding the output's lock, maybe mid-line
        run.wait()
    assert caption(model_dir, output) == 0  # the kernel dropped the lock with the process
    assert records(output) == full_run


def test_nothing_to_caption_says_so_and_fails(model_dir, tmp_path, capsys):
    empty, notes = tmp_path / "empty", tmp_path / "notes"
    empty.mkdir()
    notes.mkdir()
    (notes / "readme.txt").write_text("not an image")
    assert main(["caption", str(empty), "--model", str(model_dir)]) == 1
    assert capsys.readouterr().err.strip() == f"captioner caption: nothing to caption: no image files in {empty}"
    assert main(["caption", str(notes), "--model", str(model_dir)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nothing to caption" in err[0] and "left out 1 file" in err[0] and "readme.txt" in err[0]
    with pytest.raises(NothingToCaptionError):
        caption_files([str(empty)], model=model_dir)
