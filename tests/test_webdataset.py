"""WebDataset shards: the tiny set written as 4 tar shards trains like its folder and
captions every key once, resumably; bad samples are named by shard and key."""
from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
import tarfile
from dataclasses import replace
from pathlib import Path

import braceexpand
import numpy as np
import pytest

from captioner import Captioner
from captioner.cli import main
from captioner.data.sources import DatasetError, drop_invalid, read_dataset, validate_examples
from captioner.data.vocab import Vocabulary
from captioner.data.webdataset import (ShardError, ShardPairStream, expand_braces, iter_samples, sample_ref,
                                       split_ref, write_shards)
from captioner.metrics import exact_match

from conftest import TINY, train_tiny
from test_batch_caption import model_dir  # noqa: F401 (the untrained 64-pixel model, a fixture)


def _tiny_samples(json_captions: bool = False) -> list[tuple[str, dict[str, bytes]]]:
    """(key, files) of the tiny set, one caption per image, in its captions file's order."""
    first: dict[str, str] = {}
    with open(TINY / "captions.csv") as f:
        for row in csv.DictReader(f):
            first.setdefault(row["image"], row["caption"])
    samples = []
    for image, caption in first.items():
        files = {"jpg": (TINY / image).read_bytes()}
        if json_captions:
            files["json"] = json.dumps({"alt": caption, "width": 1}).encode()
        else:
            files["txt"] = caption.encode()
        samples.append((Path(image).stem, files))
    return samples


def _write(folder: Path, samples) -> str:
    """The samples as 4 shards in ``folder``; returns their brace pattern."""
    shards = write_shards(samples, str(folder / "{:05d}.tar"), per_shard=-(-len(samples) // 4))
    assert len(shards) == 4
    return str(folder / "{00000..00003}.tar")


@pytest.fixture(scope="module")
def tiny_shards(tmp_path_factory) -> str:
    return _write(tmp_path_factory.mktemp("shards"), _tiny_samples())


@pytest.mark.parametrize("pattern", ["s/{00000..00003}.tar", "{a,b}/{1..2}.tar", "x{08..11}-{a,b}.tar", "one.tar"])
def test_brace_patterns_expand_like_braceexpand(pattern):
    assert expand_braces(pattern) == list(braceexpand.braceexpand(pattern))


def test_samples_group_by_key_and_refs_round_trip(tiny_shards):
    shard = expand_braces(tiny_shards)[0]
    samples = list(iter_samples(shard))
    assert len(samples) == 8 and samples[0].key == "astronaut" and set(samples[0].files) == {"jpg", "txt"}
    assert split_ref(sample_ref(shard, "a#b")) == (shard, "a#b")
    captions_only = next(iter_samples(shard, ["txt"]))
    assert set(captions_only.files) == {"txt"}  # the image was seeked over, not read


def test_training_from_shards_learns_as_the_folder_version(tiny_shards, tiny_one_caption, trained_show_tell, tmp_path):
    """Same samples in the same order, same features: the shard run trains the folder run's
    model (equal losses every epoch) and reaches ≥ 90 % exact match."""
    run = train_tiny(tiny_shards, tmp_path / "run")
    losses = [[r["train_loss"] for r in map(json.loads, (folder / "metrics.jsonl").read_text().splitlines())
               if "train_loss" in r] for folder in (run, trained_show_tell)]
    np.testing.assert_allclose(losses[0], losses[1], rtol=1e-6)
    model = Captioner.from_pretrained(run)
    examples = read_dataset(tiny_one_caption)
    captions = model.caption([e.path for e in examples], beam_size=3)
    predictions = {e.image_id: c.text for e, c in zip(examples, captions)}
    assert exact_match(predictions, {e.image_id: e.captions for e in examples}) >= 0.9
    # The feature cache was written shard by shard: one done-marker per shard.
    caches = [p for p in Path(os.environ["CAPTIONER_CACHE"], "features").iterdir()
              if (p / "chunks").is_dir() and len(list((p / "chunks").iterdir())) == 4]
    assert caches, "no cache with one chunk per shard"


def test_feature_cache_resumes_by_shard(tiny_shards, tmp_path, monkeypatch):
    from captioner.data.feature_cache import FeatureCache
    from captioner.encoders import create_encoder

    encoder = create_encoder("efficientnet_lite0", pretrained=False)
    preprocess = replace(encoder.default_preprocess, crop_size=32, resize_size=32)
    refs = [e.image_ref for e in read_dataset(tiny_shards)]
    cache = FeatureCache(tmp_path, encoder, preprocess, refs, with_grid=False).build(progress=False, runtime="torch")
    markers = sorted((cache.folder / "chunks").iterdir())
    assert [m.name for m in markers] == ["0-8.done", "16-24.done", "24-31.done", "8-16.done"]
    expected = np.array(cache.pooled)
    (cache.folder / "chunks" / "8-16.done").unlink()  # as if killed while extracting the second shard
    encoded = []
    original = type(encoder).forward
    monkeypatch.setattr(type(encoder), "forward", lambda self, x: encoded.append(len(x)) or original(self, x))
    again = FeatureCache(tmp_path, encoder, preprocess, refs, with_grid=False).build(progress=False, runtime="torch")  # counts torch forwards
    assert sum(encoded) == 8 + 1  # that shard's 8 images (and the 1-image shape probe), nothing else
    np.testing.assert_array_equal(np.array(again.pooled), expected)


def test_feature_cache_reads_whole_shards_in_workers(tiny_shards, tmp_path):
    """Two loader workers stream two shards each (one pool for the build) and the cache equals
    the one read in-process; with JPEGs decoded by torchvision (the device path, here on the
    CPU) the features agree too (the fixtures are never draft-decoded at this size)."""
    from captioner.data.feature_cache import FeatureCache
    from captioner.encoders import create_encoder

    encoder = create_encoder("efficientnet_lite0", pretrained=False)
    preprocess = replace(encoder.default_preprocess, crop_size=64, resize_size=128)
    refs = [e.image_ref for e in read_dataset(tiny_shards)]
    caches = {}
    for name, options in {"in-process": {}, "workers": {"num_workers": 2},
                          "jpegs decoded by torchvision": {"num_workers": 2, "jpeg_on_device": True}}.items():
        caches[name] = FeatureCache(tmp_path / name, encoder, preprocess, refs, with_grid=False).build(
            progress=False, runtime="torch", **options)
    np.testing.assert_array_equal(np.array(caches["workers"].pooled), np.array(caches["in-process"].pooled))
    np.testing.assert_allclose(np.array(caches["jpegs decoded by torchvision"].pooled, dtype=np.float32),
                               np.array(caches["in-process"].pooled, dtype=np.float32), atol=2e-3, rtol=1e-2)
    probe = caches["in-process"]._probe_samples(3)  # what the device/host decoder comparison reads
    assert [name for _, name in probe] == refs[:3] and all(data[:2] == b"\xff\xd8" for data, _ in probe)


def test_bad_samples_are_named_by_shard_and_key_and_skip_invalid_drops_them(tmp_path, capsys):
    samples = _tiny_samples()
    samples[2][1]["jpg"] = b"not an image at all"
    samples[13][1]["txt"] = b"   "
    del samples[20][1]["jpg"]
    pattern = _write(tmp_path / "shards", samples)
    args = ["train", "--data", pattern, "--out", str(tmp_path / "run"), "--encoder", "efficientnet_lite0",
            "--epochs", "1", "--batch-size", "8", "--min-word-count", "1", "--no-progress", "--set", "log_every=0",
            "--set", "val_max_images=0"]
    assert main(args) == 2
    err = capsys.readouterr().err
    shards = expand_braces(pattern)
    assert f"{sample_ref(shards[0], samples[2][0])}: not an image" in err
    assert f"{samples[13][0]} ({sample_ref(shards[1], samples[13][0])})" in err  # the empty caption
    assert f"{sample_ref(shards[2], samples[20][0])}: no image" in err
    assert main([*args, "--skip-invalid"]) == 0
    assert "skipped 3 invalid examples" in capsys.readouterr().out


def test_val_shards_and_val_fraction_by_key_hash(tiny_shards):
    shards = expand_braces(tiny_shards)
    examples = read_dataset(f"{os.path.dirname(shards[0])}/{{00000..00002}}.tar", val_shards=shards[3])
    assert {e.split for e in examples if str(e.path) == shards[3]} == {"val"}
    assert {e.split for e in examples if str(e.path) != shards[3]} == {"train"}
    by_hash = read_dataset(tiny_shards, val_fraction=0.3)
    val = {e.image_id for e in by_hash if e.split == "val"}
    assert 3 <= len(val) <= 17
    # The same keys go to val whatever the shards' order: the split follows the key.
    reversed_pattern = f"{os.path.dirname(shards[0])}/{{00003..00000}}.tar"
    assert {e.image_id for e in read_dataset(reversed_pattern, val_fraction=0.3) if e.split == "val"} == val
    with pytest.raises(DatasetError, match="shard not found"):
        read_dataset(f"{os.path.dirname(shards[0])}/{{00000..00004}}.tar")


def test_caption_key_reads_captions_from_json(tmp_path):
    pattern = _write(tmp_path / "json", _tiny_samples(json_captions=True))
    examples = read_dataset(pattern, caption_key="alt")
    assert examples[0].captions == ["a woman astronaut in a white space suit"]
    assert read_dataset(pattern)[0].captions == []  # no .txt: an empty caption, which validation reports


def test_ranks_stream_their_own_shards_through_a_shuffle_buffer(tiny_shards):
    examples = read_dataset(tiny_shards)
    refs = [e.image_ref for e in examples]
    image_rows = np.repeat(np.arange(len(refs)), 2)  # two captions an image
    preprocess = replace(Captioner.build("efficientnet_lite0", "show-tell", Vocabulary(["a"]),
                                         encoder_options={"pretrained": False}).preprocess,
                         crop_size=16, resize_size=16)
    streams = [ShardPairStream(refs, image_rows, preprocess, 4, seed=1, rank=r, world_size=2, buffer_size=6)
               for r in range(2)]
    assert len(streams[0]) == len(streams[1]) == 30 // 4  # the smaller rank's shards hold 30 pairs
    seen = []
    for stream in streams:
        stream.set_epoch(0)
        batches = list(stream)
        assert len(batches) == len(stream) and all(p.shape == (4, 3, 16, 16) for p, _ in batches)
        pairs = np.concatenate([i for _, i in batches])
        assert len(set(pairs)) == len(pairs)
        seen.append({split_ref(refs[image_rows[i]])[0] for i in pairs})
    assert not seen[0] & seen[1]  # each rank read only its own shards
    first = [i for _, i in streams[0]]
    streams[0].set_epoch(1)
    assert [i.tolist() for i in first] != [i.tolist() for _, i in streams[0]]  # reshuffled each epoch
    ordered = [int(i) for batch in first for i in batch]
    assert ordered != sorted(ordered)


@pytest.mark.parametrize("cache_activations", ["true", "false"])  # the frozen stages' output cached, or pixels
def test_fine_tuning_trains_from_shards(tiny_shards, tmp_path, cache_activations):
    run = train_tiny(tiny_shards, tmp_path / "ft", epochs=1, extra=[
        "--trainable-blocks", "1", "--no-pretrained", "--val-fraction", "0.2",
        "--set", "model.preprocess={crop_size: 32, resize_size: 32}",
        "--set", f"data.cache_activations={cache_activations}"])
    record = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()][-1]
    assert np.isfinite(record["train_loss"]) and "CIDEr" in record  # validation read its images from shards


# --- captioning ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def shards_with_a_bad_image(tmp_path_factory) -> str:
    samples = _tiny_samples()
    samples[5][1]["jpg"] = samples[5][1]["jpg"][:200]  # cut off
    return _write(tmp_path_factory.mktemp("bad"), samples)


def _caption(model_dir, pattern, output, *extra) -> int:
    return main(["caption", pattern, "--model", str(model_dir), "--output", str(output), "--beam-size", "2",
                 "--batch-size", "8", "--device", "cpu", *extra])


def _lines(output: Path) -> list[dict]:
    return [json.loads(line) for line in output.read_text().splitlines()]


def test_captioning_shards_gives_every_key_once_and_resumes(model_dir, shards_with_a_bad_image, tmp_path, capsys):
    samples, shards = _tiny_samples(), expand_braces(shards_with_a_bad_image)
    output = tmp_path / "preds.jsonl"
    assert _caption(model_dir, shards_with_a_bad_image, output) == 1  # one image could not be read
    assert f"error: {sample_ref(shards[0], samples[5][0])}: not a readable image" in capsys.readouterr().err
    records = _lines(output)
    expected = [(key, shards[i // 8]) for i, (key, _) in enumerate(samples) if i != 5]
    assert [(r["key"], r["shard"]) for r in records] == expected  # shard and tar order, each key once
    assert all(isinstance(r["caption"], str) and "image" not in r for r in records)
    # Interrupted after 10 records, the 11th cut off mid-line: the rerun captions only the rest.
    lines = output.read_text().splitlines()
    output.write_text("\n".join(lines[:10]) + "\n" + lines[10][:30])
    assert _caption(model_dir, shards_with_a_bad_image, output) == 1
    err = capsys.readouterr().err
    assert "10 samples already in" in err and "1 of 21 images could not be read" in err
    assert _lines(output) == records


def test_torchrun_ranks_caption_whole_shards_into_one_output(model_dir, tiny_shards, tmp_path):
    output = tmp_path / "preds.jsonl"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m",
               "captioner", "caption", tiny_shards, "--model", str(model_dir), "--output", str(output),
               "--beam-size", "2", "--device", "cpu"]
    done = subprocess.run(command, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    single = tmp_path / "single.jsonl"
    assert _caption(model_dir, tiny_shards, single) == 0
    merged, alone = _lines(output), _lines(single)
    # Merged back into shard order; scores only to rounding (other batches, other float sums).
    assert [(r["key"], r["shard"], r["caption"]) for r in merged] == [(r["key"], r["shard"], r["caption"]) for r in alone]
    np.testing.assert_allclose([r["score"] for r in merged], [r["score"] for r in alone], rtol=1e-4)
    assert not list(tmp_path.glob("preds.rank*.jsonl"))


# --- damaged and hostile shards ------------------------------------------------------------
def _cut_shards(folder: Path) -> tuple[str, list[str], list]:
    """Four shards of the tiny set, the second cut off in the middle of its fourth sample's image."""
    samples = _tiny_samples()
    pattern = _write(folder, samples)
    shards = expand_braces(pattern)
    data = Path(shards[1]).read_bytes()
    with tarfile.open(shards[1]) as tar:
        member = [m for m in tar.getmembers() if m.name.endswith(".jpg")][3]
    Path(shards[1]).write_bytes(data[: member.offset_data + member.size // 2])
    return pattern, shards, samples


def test_a_cut_off_shard_is_reported_after_its_whole_samples(tmp_path):
    _, shards, samples = _cut_shards(tmp_path)
    read = []
    with pytest.raises(ShardError, match=r"cut off or damaged in .*\.jpg after 3 whole samples"):
        for sample in iter_samples(shards[1]):
            read.append(sample.key)
    assert read == [key for key, _ in samples[8:11]]
    # Reading captions only seeks over the images, and still finds the cut.
    with pytest.raises(ShardError, match="cut off"):
        list(iter_samples(shards[1], ["txt"]))
    # Cut where a member ends, the archive lacks its end blocks: tarfile alone would stop silently.
    whole = Path(shards[2]).read_bytes()
    with tarfile.open(shards[2]) as tar:
        last = tar.getmembers()[-1]
    Path(shards[2]).write_bytes(whole[: last.offset_data + -(-last.size // 512) * 512])
    with pytest.raises(ShardError, match="at its end"):
        list(iter_samples(shards[2]))


def test_captioning_reports_a_damaged_shard_and_goes_on(model_dir, tmp_path, capsys):
    pattern, shards, samples = _cut_shards(tmp_path / "shards")
    Path(shards[3]).write_bytes(b"not a tar at all\n" * 100)
    output = tmp_path / "preds.jsonl"
    assert _caption(model_dir, pattern, output) == 1
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("captioner caption: error:")]
    assert errors == [f"captioner caption: error: {shards[1]}: cut off or damaged in {samples[11][0]}.jpg after 3 "
                      "whole samples; the rest of the shard cannot be read (rewrite it)",
                      f"captioner caption: error: {shards[3]}: not a readable tar shard (invalid header); rewrite "
                      "or remove it"]
    keys = [r["key"] for r in _lines(output)]
    assert keys == [key for key, _ in samples[:11] + samples[16:24]]  # the shards after the damage too
    # A rerun resumes: the samples it has are kept, the damage is reported again.
    assert _caption(model_dir, pattern, output) == 1
    assert "19 samples already in" in capsys.readouterr().err and [r["key"] for r in _lines(output)] == keys


def test_training_reports_a_cut_off_shard_and_skip_invalid_keeps_its_whole_samples(tmp_path, capsys):
    pattern, shards, samples = _cut_shards(tmp_path / "shards")
    examples = read_dataset(pattern)
    problems = validate_examples(examples)
    assert problems.unreadable == [f"{shards[1]}: cut off or damaged in {samples[11][0]}.jpg after 3 whole samples; "
                                   "the rest of the shard cannot be read (rewrite it)"]
    assert len(drop_invalid(examples, problems)) == 31 - 5  # the cut sample and the four after it
    args = ["train", "--data", pattern, "--out", str(tmp_path / "run"), "--encoder", "efficientnet_lite0",
            "--epochs", "1", "--batch-size", "8", "--min-word-count", "1", "--no-progress", "--set", "log_every=0",
            "--set", "val_max_images=0"]
    assert main(args) == 2
    assert f"{shards[1]}: cut off" in capsys.readouterr().err
    assert main([*args, "--skip-invalid"]) == 0


def _sparse_member_shard(folder: Path, size: int) -> Path:
    """A shard whose second sample's .jpg is a sparse file of ``size`` bytes (a valid JPEG, then
    zeros), written with GNU tar's --sparse: the shard stays a few KB."""
    first, second = folder / "a", folder / "b"
    for part in (first, second):
        part.mkdir()
    (first / "ok.jpg").write_bytes((TINY / "images" / "astronaut.jpg").read_bytes())
    (first / "ok.txt").write_text("an astronaut")
    with open(second / "big.jpg", "wb") as f:
        f.write((TINY / "images" / "astronaut.jpg").read_bytes())
        f.truncate(size)
    (second / "big.txt").write_text("a big one")
    shard = folder / "00000.tar"
    subprocess.run(["tar", "--sparse", "-cf", str(shard), "-C", str(first), "ok.jpg", "ok.txt",
                    "-C", str(second), "big.jpg", "big.txt"], check=True)
    return shard


@pytest.mark.skipif(shutil.which("tar") is None, reason="writes a sparse member with GNU tar")
def test_a_sparse_2_gb_member_is_refused_from_its_declared_size(model_dir, tmp_path, capsys):
    shard = _sparse_member_shard(tmp_path, 2 * 2**30)
    assert shard.stat().st_size < 2**20
    samples = list(iter_samples(str(shard)))
    assert [s.key for s in samples] == ["ok", "big"] and list(samples[1].refused) == ["jpg"]
    assert "jpg" not in samples[1].files  # never read
    output = tmp_path / "preds.jsonl"
    assert _caption(model_dir, str(shard), output) == 1
    assert (f"error: {shard}#big: its .jpg member is 2,147,483,648 bytes, over the limit of 134,217,728 "
            "(max_file_bytes); not read") in capsys.readouterr().err
    assert [r["key"] for r in _lines(output)] == ["ok"]
