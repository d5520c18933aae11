"""Caption-preserving augmentation and the cache of augmented views training reads."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from captioner.data.sources import read_dataset, split_examples
from captioner.data.augment import AugmentConfig, augment_image, background_mask
from captioner.train.config import ConfigError, load_config

from conftest import train_tiny

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def test_background_is_the_white_around_the_drawing_not_the_white_inside_it():
    image = Image.new("RGB", (40, 40), "white")
    image.paste((200, 30, 30), (10, 10, 30, 30))  # a red square ...
    image.paste((255, 255, 255), (16, 16, 24, 24))  # ... with a white hole (eyes, "white circle")
    mask = background_mask(image)
    assert mask[0, 0] and mask[39, 39] and mask[5, 20]
    assert not mask[12, 12] and not mask[20, 20]  # the drawing and the white inside it


def test_augmented_views_are_deterministic_and_keep_the_drawings_colours():
    dog = Image.open(EXAMPLES / "emoji-dog-face.png")
    config = AugmentConfig(background=1.0, outline=0.0, blur=0.0, jpeg=0.0, rotate=0.0, scale=(1.0, 1.0))
    a, b, c = augment_image(dog, config, 7), augment_image(dog, config, 7), augment_image(dog, config, 8)
    assert a.size == (config.size, config.size) and a.mode == "RGB"
    assert np.array_equal(np.asarray(a), np.asarray(b))
    assert not np.array_equal(np.asarray(a), np.asarray(c))
    # Only the background changed colour: the drawing's pixels are the clean resize's.
    clean = np.asarray(dog.convert("RGB").resize(a.size, Image.Resampling.BICUBIC)).astype(int)
    drawing = ~background_mask(Image.fromarray(clean.astype(np.uint8)))
    assert np.abs(np.asarray(a).astype(int)[drawing] - clean[drawing]).max() <= 1
    corner = np.asarray(a)[0, 0]
    assert not (corner == 255).all()  # a new background colour


def test_unknown_augment_option_is_a_config_error():
    with pytest.raises(ConfigError, match="hue"):
        load_config(overrides={"data.augment": {"hue": 0.1}})
    with pytest.raises(ConfigError, match="augment_views"):
        load_config(overrides={"data.augment_views": -1})


def test_training_reads_augmented_views_from_their_own_cache(tiny_one_caption, tmp_path):
    cache = tmp_path / "features"
    run = train_tiny(tiny_one_caption, tmp_path / "run", epochs=2,
                     extra=["--feature-cache", str(cache), "--set", "data.augment_views=2"])
    examples = read_dataset(tiny_one_caption)
    train = [e.image_ref for e in split_examples(examples, "train")]
    every = [e.image_ref for e in examples]
    sizes = {json.loads((f / "meta.json").read_text())["images"]: f for f in cache.iterdir() if f.is_dir()}
    assert len(sizes) == 2 and 2 * len(every) in sizes  # the clean images, and two views of every dataset image
    clean = np.load(sizes[min(sizes)] / "pooled.npy").astype(np.float32)[: len(train)]
    views = np.load(sizes[2 * len(every)] / "pooled.npy").astype(np.float32)
    rows = np.array([every.index(ref) for ref in train])
    first, second = views[rows], views[len(every) + rows]
    assert not np.allclose(first, second, atol=1e-2) and not np.allclose(first, clean, atol=1e-2)

    # A view is the same thing drawn differently: nearer its own clean image than most others.
    def unit(x):
        return x / np.linalg.norm(x, axis=1, keepdims=True)
    similarity = unit(first) @ unit(clean).T
    assert (similarity.argmax(axis=1) == np.arange(len(train))).mean() > 0.5
    assert (run / "model.safetensors").is_file()
