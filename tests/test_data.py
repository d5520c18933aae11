"""Dataset readers, validation, vocabulary and image preprocessing on real fixture files."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from captioner.data.images import ImageReadError, PreprocessConfig, build_transform, load_image, preprocess
from captioner.data.sources import DatasetError, detect_format, drop_invalid, read_dataset, validate_examples
from captioner.data.vocab import Vocabulary

from conftest import TINY

FORMATS = {
    "captions.csv": ("csv", None),
    "captions.jsonl": ("jsonl", None),
    "captions_coco.json": ("coco", None),
    "dataset_tiny.json": ("karpathy", None),
    "images/Flickr8k.token.txt": ("flickr8k", None),
}


def normalised(examples):
    return sorted((str(e.path.resolve()), tuple(e.captions), e.split) for e in examples)


@pytest.mark.parametrize("name", list(FORMATS))
def test_every_format_reads_the_same_examples(name):
    fmt, _ = FORMATS[name]
    path = TINY / name
    assert detect_format(path) == fmt
    examples = read_dataset(path)
    assert normalised(examples) == normalised(read_dataset(TINY / "captions.csv"))
    assert len(examples) == 31 and sum(len(e.captions) for e in examples) == 33
    assert not validate_examples(examples)


def test_format_can_be_forced_and_unknown_format_is_explained(tmp_path):
    examples = read_dataset(TINY / "captions.csv", fmt="csv")
    assert len(examples) == 31
    with pytest.raises(DatasetError, match="unknown format"):
        read_dataset(TINY / "captions.csv", fmt="parquet")
    with pytest.raises(DatasetError, match="not found"):
        read_dataset(tmp_path / "nope.json")


def test_val_fraction_is_seeded_and_only_for_files_without_splits():
    a = read_dataset(TINY / "captions.csv", val_fraction=0.2, seed=1)
    b = read_dataset(TINY / "captions.csv", val_fraction=0.2, seed=1)
    assert [e.split for e in a] == [e.split for e in b]
    assert sum(e.split == "val" for e in a) == round(0.2 * 31)
    assert all(e.split == "train" for e in read_dataset(TINY / "captions.csv"))


def test_flickr_split_lists_are_applied(tmp_path):
    shutil.copytree(TINY / "images", tmp_path, dirs_exist_ok=True)
    (tmp_path / "Flickr_8k.trainImages.txt").write_text("chelsea.jpg\ncoffee.jpg\n")
    (tmp_path / "Flickr_8k.testImages.txt").write_text("rocket.jpg\n")
    examples = read_dataset(tmp_path / "Flickr8k.token.txt")
    assert {(e.image_id, e.split) for e in examples} == {
        ("chelsea.jpg", "train"), ("coffee.jpg", "train"), ("rocket.jpg", "test")
    }


def test_validation_reports_every_problem_at_once(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    shutil.copy(TINY / "images/chelsea.jpg", images / "good.jpg")
    (images / "corrupt.jpg").write_bytes((TINY / "images/coffee.jpg").read_bytes()[:200])
    (images / "text.png").write_text("not an image")
    rows = [
        {"image": "images/good.jpg", "caption": "a cat"},
        {"image": "images/corrupt.jpg", "caption": "a cup"},
        {"image": "images/text.png", "caption": "words"},
        {"image": "images/missing.jpg", "caption": "nothing"},
        {"image": "images/good.jpg", "caption": " "},
    ]
    path = tmp_path / "data.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    examples = read_dataset(path)
    problems = validate_examples(examples)
    report = problems.report()
    assert "missing.jpg" in report and "corrupt.jpg" in report and "text.png" in report
    assert "empty caption" in report
    kept = drop_invalid(examples, problems)
    assert [(e.image_id, e.captions) for e in kept] == [("images/good.jpg", ["a cat"])]


def test_duplicate_coco_ids_are_reported(tmp_path):
    data = json.loads((TINY / "captions_coco.json").read_text())
    data["images"].append(dict(data["images"][0]))
    path = tmp_path / "dup.json"
    path.write_text(json.dumps(data))
    examples = read_dataset(path, image_root=TINY)
    assert validate_examples(examples).duplicate_ids == ["1"]


def test_vocabulary_threshold_unknown_words_and_round_trip(tmp_path):
    captions = ["A dog runs.", "a dog sits", "a cat runs", "the dog"]
    vocab = Vocabulary.build(captions, min_count=2)
    assert vocab.itos[:4] == ["<pad>", "<start>", "<end>", "<unk>"]
    assert vocab.itos[4:] == ["a", "dog", "runs"]  # by count, ties alphabetical; punctuation dropped
    ids = vocab.encode("A dog sleeps!")
    assert ids[0] == vocab.start_id and ids[-1] == vocab.end_id
    assert ids[3] == vocab.unk_id
    assert vocab.decode(ids) == "a dog <unk>"
    assert len(vocab.encode("a a a a a", max_length=3)) == 5
    vocab.save(tmp_path / "vocab.json")
    again = Vocabulary.load(tmp_path / "vocab.json")
    assert again.itos == vocab.itos
    assert json.loads((tmp_path / "vocab.json").read_text())["itos"][5] == "dog"  # plain JSON


def _rgb(image):
    return np.asarray(load_image(image))


def test_load_image_converts_every_mode_to_rgb(tmp_path):
    source = Image.open(TINY / "images/chelsea.jpg").convert("RGB")
    for mode in ("L", "CMYK", "P", "RGBA", "LA", "I;16"):
        converted = source.convert(mode) if mode != "I;16" else source.convert("L").convert("I;16")
        out = load_image(converted)
        assert out.mode == "RGB" and out.size == source.size, mode
    # Transparent pixels become white, not black.
    transparent = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    assert (_rgb(transparent) == 255).all()


def test_exif_orientation_is_applied(tmp_path):
    source = Image.open(TINY / "images/chelsea.jpg").convert("RGB")  # landscape
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise when displayed
    path = tmp_path / "rotated.jpg"
    source.save(path, exif=exif)
    loaded = load_image(path)
    assert loaded.size == (source.height, source.width)


def test_unreadable_images_raise_a_clear_error(tmp_path):
    (tmp_path / "text.png").write_text("hello")
    with pytest.raises(ImageReadError, match="text.png"):
        load_image(tmp_path / "text.png")
    with pytest.raises(ImageReadError, match="no such file"):
        load_image(tmp_path / "missing.jpg")


@pytest.mark.parametrize("resize", ["shorter", "squash"])
def test_preprocess_is_one_deterministic_function(resize):
    config = PreprocessConfig(resize=resize, crop_size=64, resize_size=72)
    batch = preprocess([TINY / "images/coffee.jpg", TINY / "images/emoji_1f436.png"], config)
    assert batch.shape == (2, 3, 64, 64) and batch.dtype == torch.float32
    again = build_transform(config)(load_image(TINY / "images/coffee.jpg"))
    assert torch.equal(batch[0], again)
    assert PreprocessConfig(**config.to_dict()) == config
    with pytest.raises(ValueError, match="resize"):
        PreprocessConfig(resize="stretch")
