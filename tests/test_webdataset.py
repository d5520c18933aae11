"""WebDataset shards: the tiny set written as 4 tar shards trains like its folder and
captions every key once, resumably; bad samples are named by shard and key."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import braceexpand
import numpy as np
import pytest

from captioner import Captioner
from captioner.cli import main
from captioner.data.sources import DatasetError, read_dataset
from captioner.data.vocab import Vocabulary
from captioner.data.webdataset import (ShardPairStream, expand_braces, iter_samples, sample_ref, split_ref,
                                       write_shards)
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
