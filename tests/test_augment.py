"""Caption-preserving augmentation and the cache of augmented views training reads."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFilter

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


# Google's five skin tones (the median colour of its hands), as a drawing paints them.
TONES = [(248, 216, 184), (224, 184, 144), (192, 144, 104), (152, 112, 80), (120, 88, 72)]


def tone_swatch(colour) -> Image.Image:
    """A hand-sized patch of one skin colour with a shaded edge and a dark line, on white."""
    image = Image.new("RGB", (64, 64), "white")
    image.paste((40, 30, 30), (8, 8, 56, 56))
    image.paste(tuple(max(0, c - 40) for c in colour), (10, 10, 54, 54))
    image.paste(colour, (14, 14, 50, 50))
    return image


@pytest.mark.parametrize("style", ["saturation", "flatten", "contour"])
def test_restyled_drawings_keep_their_skin_tone_and_background(style):
    config = AugmentConfig(scale=(1.0, 1.0), rotate=0.0, background=0.0, outline=0.0, blur=0.0, jpeg=0.0,
                           **{style: 1.0})
    palette = np.array(TONES, float)
    for tone, colour in enumerate(TONES):
        swatch = tone_swatch(colour)
        plain = np.asarray(augment_image(swatch, dataclasses.replace(config, **{style: 0.0}), 0))
        for seed in range(6):
            view = np.asarray(augment_image(swatch, config, seed)).astype(float)
            middle = view[60:100, 60:100].reshape(-1, 3).mean(axis=0)
            assert np.linalg.norm(palette - middle, axis=1).argmin() == tone, (style, colour, middle)
            assert (view[:4, :4] >= 255 - 16).all()  # the background is still background
    assert not np.array_equal(view, plain)  # the style changed something


def test_style_options_change_the_drawing_as_named():
    dog = Image.open(EXAMPLES / "emoji-dog-face.png")
    still = dict(scale=(1.0, 1.0), rotate=0.0, background=0.0, outline=0.0, blur=0.0, jpeg=0.0)
    plain = np.asarray(augment_image(dog, AugmentConfig(**still), 3))
    colours = lambda a: len(np.unique(a.reshape(-1, 3), axis=0))  # noqa: E731
    flat = np.asarray(augment_image(dog, AugmentConfig(**still, flatten=1.0, flatten_colours=(6, 6)), 3))
    assert colours(flat) <= 6 < colours(plain)
    lined = np.asarray(augment_image(dog, AugmentConfig(**still, contour=1.0), 3)).astype(int)
    ink = (lined.sum(axis=2) < 200) & (plain.astype(int).sum(axis=2) >= 240)
    assert ink.sum() > 200  # new dark lines where the dog's colours meet ...
    far = np.asarray(Image.fromarray(background_mask(Image.fromarray(plain)).astype(np.uint8) * 255)
                     .filter(ImageFilter.MinFilter(7))) > 0  # background 3 pixels or more from the drawing
    assert far.sum() > 1000 and not ink[far].any()  # ... and none out in the background
    grey = np.asarray(augment_image(dog, AugmentConfig(**still, saturation=1.0, saturation_range=(0.0, 0.0)), 3))
    assert np.abs(grey.astype(int) - grey.astype(int).mean(axis=2, keepdims=True)).max() <= 1  # no colour left


def test_without_style_the_views_and_their_cache_key_are_as_before():
    """The style options draw from a stream of their own: switching them on keeps each view's
    size, place and tilt; left off, the options the cache key records are the old ones."""
    dog = Image.open(EXAMPLES / "emoji-dog-face.png")
    plain, styled = AugmentConfig(background=0.0), AugmentConfig(background=0.0, flatten=1.0)
    assert "flatten" not in plain.to_dict() and styled.to_dict()["flatten"] == 1.0
    for seed in range(4):
        a, b = (background_mask(augment_image(dog, c, seed)) for c in (plain, styled))
        assert (a != b).mean() < 0.02  # the same drawing in the same place


def test_augment_sheet_shows_the_views_training_caches(tmp_path, capsys):
    import importlib.util
    spec = importlib.util.spec_from_file_location("augment_sheet", EXAMPLES.parent / "scripts" / "augment_sheet.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    dog, cat = str(EXAMPLES / "emoji-dog-face.png"), str(EXAMPLES / "emoji-cat-face.png")
    out = tmp_path / "sheet.png"
    assert script.main([dog, cat, "--views", "2", "--augment", "{contour: 1.0}", "--out", str(out)]) == 0
    sheet = np.asarray(Image.open(out))
    assert sheet.shape == (320, 480, 3)
    config = AugmentConfig(contour=1.0)
    assert np.array_equal(sheet[160:, 320:], np.asarray(augment_image(Image.open(cat), config, seed=3)))
    assert script.main([dog, "--augment", "{hue: 0.1}", "--out", str(tmp_path / "no.png")]) == 2
    assert "unknown option(s) hue" in capsys.readouterr().err and not (tmp_path / "no.png").exists()


def test_skin_palette_change_moves_skin_hues_keeps_their_lightness_and_nothing_else():
    """A tone painted in another artist's browns: hue and saturation move, luma stays, so the
    tone's rank among the five stays; a red heart, a yellow (toneless) hand, blue and white do not move."""
    from captioner.data.augment import LUMA, repaint_skin
    luma = [float(np.array(c) @ LUMA) for c in TONES]
    for tone, colour in enumerate(TONES):
        swatch = tone_swatch(colour)
        for hue, saturation, moved in [(-20.0, 0.6, 8), (-20.0, 1.2, 8), (8.0, 1.0, 2)]:
            middle = np.asarray(repaint_skin(swatch, hue, saturation)).astype(float)[20:44, 20:44].reshape(-1, 3)
            assert np.abs(middle - colour).max() > moved  # another brown ...
            assert abs(float(middle.mean(axis=0) @ LUMA) - luma[tone]) < 2.5  # ... as light as before
    others = Image.new("RGB", (40, 10), "white")
    for x, colour in enumerate([(221, 46, 68), (255, 200, 61), (40, 90, 200), (30, 30, 30)]):
        others.paste(colour, (10 * x, 0, 10 * x + 10, 10))  # red heart, yellow hand, blue, ink
    assert np.array_equal(np.asarray(repaint_skin(others, -20.0, 0.6)), np.asarray(others))

    config = AugmentConfig(scale=(1.0, 1.0), rotate=0.0, background=0.0, outline=0.0, blur=0.0, jpeg=0.0, skin=1.0)
    hand = tone_swatch(TONES[3])
    views = [np.asarray(augment_image(hand, config, seed)) for seed in range(3)]
    assert np.array_equal(views[0], np.asarray(augment_image(hand, config, 0)))
    assert not np.array_equal(views[0], views[1])
    assert config.to_dict()["skin_hue"] == (-20.0, 8.0) and "skin" not in AugmentConfig(flatten=1.0).to_dict()
