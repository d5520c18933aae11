"""The emoji-art dataset builder (`captioner data emoji`) on a tiny fake source tree.

Fixtures (tests/fixtures/emoji): synthetic PNGs in the emoji-datasource-google layout, synthetic SVGs in
the OpenMoji layout, two synthetic Iconify JSON sets, and a subset of Unicode's emoji-test.txt. The Noto part runs only where the Debian
font is installed (`apt-get install -y fonts-noto-color-emoji`).
"""
from __future__ import annotations

import importlib.util
import json
import shutil
from collections import defaultdict
from pathlib import Path

import pytest
from PIL import Image

from captioner import cli
from captioner.cache import cache_root
from captioner.data import emoji as emoji_data
from captioner.data.emoji.names import compact_index, read_emoji_test
from captioner.data.sources import read_dataset

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).parent / "fixtures" / "emoji"
GOOGLE = FIXTURES / "google"
OPENMOJI = FIXTURES / "openmoji"
EMOJI_TEST = FIXTURES / "emoji-test.txt"
ICONIFY = FIXTURES / "iconify"  # three icons, one unmappable; no chars.json
ICONIFY_CHARS = FIXTURES / "iconify-chars"  # with a chars.json codepoint table
ICONIFY_DIRS = {"noto-v1": ICONIFY, "fluent-flat": ICONIFY_CHARS}
NOTO_FONT = next((Path(p) for p in emoji_data.NOTO_FONT_CANDIDATES if Path(p).is_file()), None)
needs_noto = pytest.mark.skipif(NOTO_FONT is None, reason="no Noto Color Emoji font (apt-get install fonts-noto-color-emoji)")

try:
    import cairosvg  # noqa: F401

    HAVE_CAIROSVG = True
except (ImportError, OSError):
    HAVE_CAIROSVG = False
needs_cairosvg = pytest.mark.skipif(not HAVE_CAIROSVG, reason="cairosvg not installed (pip install 'captioner[emoji]')")


def build(out, sources=("google", "openmoji"), **kwargs):
    options = dict(
        google_dir=GOOGLE, openmoji_dir=OPENMOJI, emoji_test=EMOJI_TEST, noto_font=NOTO_FONT,
        image_size=32, progress=False, jobs=1, cache_dir=Path(out).parent / "empty-cache",
    )
    options.update(kwargs)
    return emoji_data.build_emoji_dataset(out, sources=sources, **options)


def load(out) -> dict:
    return json.loads((Path(out) / "dataset.json").read_text(encoding="utf-8"))


def captions_by_split(dataset) -> dict[str, set[str]]:
    found = defaultdict(set)
    for image in dataset["images"]:
        for sentence in image["sentences"]:
            found[image["split"]].add(sentence["raw"])
    return found


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("emoji") / "dataset"
    sources = ("google", "openmoji") + (("noto",) if NOTO_FONT else ())
    if not HAVE_CAIROSVG:
        sources = tuple(s for s in sources if s != "openmoji")
    summary = build(out, sources)
    return out, summary, load(out)


def test_karpathy_layout_and_cldr_captions(built):
    out, summary, dataset = built
    assert dataset["dataset"] == "emoji"
    images = dataset["images"]
    assert [im["imgid"] for im in images] == list(range(len(images)))
    by_emoji = defaultdict(dict)
    for im in images:
        assert im["filepath"] == f"images/{im['source']}"
        assert (out / im["filepath"] / im["filename"]).is_file()
        assert im["split"] in ("train", "val", "test")
        [sentence] = im["sentences"]
        assert sentence["tokens"] == emoji_data.tokenize(sentence["raw"])
        by_emoji[im["emoji"]][im["source"]] = sentence["raw"]
    # Google's capitals replaced by the CLDR names, skin-tone variants named, qualified code points.
    assert by_emoji["1F44B-1F3FE"]["google"] == "waving hand: medium-dark skin tone"
    assert by_emoji["1F3C3-200D-2640-FE0F"]["google"] == "woman running"
    assert by_emoji["1F1EB-1F1F7"]["google"] == "flag: france"
    assert emoji_data.tokenize("waving hand: medium-dark skin tone") == ["waving", "hand", "medium-dark", "skin", "tone"]
    assert "1F47B" not in by_emoji or "google" not in by_emoji["1F47B"]  # has_img_google false
    assert "1F3FB" not in by_emoji  # a bare skin-tone swatch is a component, not an emoji
    assert summary["skipped"]["google"] == {"component (skin tone / hair swatch)": 1, "no google image": 1}
    assert summary["per_source"]["google"]["total"] == 19
    assert summary["images"] == len(images)
    assert summary["vocab_size"] == len({t for im in images for s in im["sentences"] for t in s["tokens"]})


@needs_cairosvg
def test_openmoji_extras_dropped_and_names_shared(built):
    _, summary, dataset = built
    openmoji = {im["emoji"]: im["sentences"][0]["raw"] for im in dataset["images"] if im["source"] == "openmoji"}
    # 263A in openmoji.json is the unqualified form: stored as the fully-qualified 263A-FE0F.
    assert openmoji == {
        "1F436": "dog face", "1F431": "cat face", "1F600": "grinning face", "263A-FE0F": "smiling face",
        "1F44B-1F3FB": "waving hand: light skin tone",
    }
    skipped = summary["skipped"]["openmoji"]
    assert skipped == {"group component": 1, "group extras-openmoji": 1, "group extras-unicode": 1}
    # The same emoji from two sources: same caption, same split.
    splits = defaultdict(set)
    for im in dataset["images"]:
        splits[im["emoji"]].add(im["split"])
    assert all(len(s) == 1 for s in splits.values())


def test_compositional_splits(built):
    _, summary, dataset = built
    captions = captions_by_split(dataset)
    assert captions["test"] and captions["val"]
    assert not captions["test"] & captions["train"]
    assert not captions["val"] & captions["train"]
    assert not captions["test"] & captions["val"]
    train_words = {w for c in captions["train"] for w in emoji_data.tokenize(c)}
    for caption in captions["test"] | captions["val"]:
        assert set(emoji_data.tokenize(caption)) <= train_words, caption
    assert "flag: france" in captions["train"]  # "france" occurs nowhere else: never held out
    assert summary["splits"]["test"]["emoji"] == round(0.1 * summary["distinct_captions"])


def test_images_are_rgb_pngs_on_white(built):
    out, summary, dataset = built
    for im in dataset["images"]:
        with Image.open(out / im["filepath"] / im["filename"]) as image:
            assert image.format == "PNG"
            assert image.mode == "RGB"
            assert image.size == (32, 32)
            assert image.getpixel((0, 0)) == (255, 255, 255)  # transparent corner composited onto white


def test_sources_md(built):
    out, summary, _ = built
    text = (out / "SOURCES.md").read_text(encoding="utf-8")
    assert "Apache" in text and "Twemoji" in text
    if "openmoji" in summary["sources"]:
        assert "CC BY-SA 4.0" in text
    if "noto" in summary["sources"]:
        assert "Open Font License" in text
    for source, counts in summary["per_source"].items():
        assert f"| {source} | {counts['train']} | {counts['val']} | {counts['test']} | {counts['total']} |" in text


def test_build_is_deterministic(tmp_path):
    build(tmp_path / "a", ("google",))
    build(tmp_path / "b", ("google",))
    for name in ("dataset.json", "SOURCES.md"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    for png in sorted((tmp_path / "a" / "images" / "google").glob("*.png")):
        assert png.read_bytes() == (tmp_path / "b" / "images" / "google" / png.name).read_bytes()


def test_assign_splits_properties():
    bases = ["waving hand", "thumbs up", "raised fist", "clapping hands", "ok hand", "vulcan salute"]
    tones = ["light", "medium-light", "medium", "medium-dark", "dark"]
    captions = [b for b in bases] + [f"{b}: {t} skin tone" for b in bases for t in tones] + ["flag: france"]
    first = emoji_data.assign_splits(captions, 0.1, 0.05)
    assert first == emoji_data.assign_splits(list(reversed(captions)), 0.1, 0.05)
    held = {c: s for c, s in first.items() if s != "train"}
    assert sum(s == "test" for s in held.values()) == round(0.1 * len(captions))
    assert sum(s == "val" for s in held.values()) == round(0.05 * len(captions))
    train_words = {w for c, s in first.items() if s == "train" for w in emoji_data.tokenize(c)}
    assert all(set(emoji_data.tokenize(c)) <= train_words for c in held)
    assert first["flag: france"] == "train"


def test_split_by_image_trains_every_emoji_and_holds_out_single_drawings():
    captions = [f"emoji {i}" for i in range(40) for _ in range(3)] + ["only one drawing"]
    artists = [a for _ in range(40) for a in ("google", "openmoji", "fluent-flat")] + ["google"]
    splits = emoji_data.split_images(captions, artists, holdout_artists=["fluent-flat"], test_fraction=0.1,
                                     val_fraction=0.1, by="image")
    assert splits == emoji_data.split_images(captions, artists, holdout_artists=["fluent-flat"],
                                             test_fraction=0.1, val_fraction=0.1, by="image")
    assert all(s == "test-artist" for s, a in zip(splits, artists) if a == "fluent-flat")
    held = [c for c, s in zip(captions, splits) if s in ("val", "test")]
    assert len(held) == round(0.1 * 81) * 2 and len(set(held)) == len(held)  # one drawing per emoji at most
    train = {c for c, s in zip(captions, splits) if s == "train"}
    assert set(held) <= train and "only one drawing" in train  # every emoji still trains
    with pytest.raises(ValueError, match="split by"):
        emoji_data.split_images(captions, artists, by="artist")


def test_build_split_by_image_says_so_in_its_sources_file(tmp_path):
    summary = build(tmp_path / "out", split_by="image", test_fraction=0.1, val_fraction=0.1)
    images = load(tmp_path / "out")["images"]
    train = {im["sentences"][0]["raw"] for im in images if im["split"] == "train"}
    held = [im["sentences"][0]["raw"] for im in images if im["split"] != "train"]
    assert held and set(held) <= train  # every emoji trains
    assert summary["split_by"] == "image"
    assert "Single drawings are held out" in (tmp_path / "out" / "SOURCES.md").read_text()


def test_missing_source_is_reported_and_others_build(tmp_path, capsys):
    summary = build(tmp_path / "out", ("google", "openmoji", "noto"), openmoji_dir=tmp_path / "no-openmoji",
                    noto_font=tmp_path / "no-font.ttf")
    assert summary["sources"] == ["google"]
    assert "npm pack openmoji@17.0.0" in summary["missing"]["openmoji"]
    assert "apt-get install -y fonts-noto-color-emoji unicode-data" in summary["missing"]["noto"]
    err = capsys.readouterr().err
    assert "npm pack openmoji@17.0.0" in err and "fonts-noto-color-emoji" in err
    assert {im["source"] for im in load(tmp_path / "out")["images"]} == {"google"}


def test_no_source_available_is_an_error(tmp_path):
    with pytest.raises(emoji_data.EmojiSourceError) as info:
        build(tmp_path / "out", ("google", "noto"), google_dir=tmp_path / "nothing", noto_font=tmp_path / "x.ttf")
    message = str(info.value)
    assert "npm pack emoji-datasource-google@16.0.0" in message
    assert "apt-get install -y fonts-noto-color-emoji" in message
    assert not (tmp_path / "out" / "dataset.json").exists()


def test_default_cache_dir_and_missing_message(tmp_path, monkeypatch):
    monkeypatch.setenv("CAPTIONER_CACHE", str(tmp_path / "cache"))
    assert cache_root("emoji-sources") == tmp_path / "cache" / "emoji-sources"
    found = emoji_data.resolve_sources(["google"], log=lambda m: None)
    assert found.folders.get("google") is None
    assert str(tmp_path / "cache" / "emoji-sources" / "emoji-datasource-google-16.0.0") in found.missing["google"]
    assert "--fetch" in found.missing["google"]


def test_twemoji_is_refused(tmp_path):
    with pytest.raises(emoji_data.EmojiSourceError, match="held-out"):
        build(tmp_path / "out", ("twitter",))
    fake = tmp_path / "emoji-datasource-twitter"
    shutil.copytree(GOOGLE, fake)
    (fake / "package.json").write_text(json.dumps({"name": "emoji-datasource-twitter"}), encoding="utf-8")
    with pytest.raises(emoji_data.EmojiSourceError, match="held-out"):
        build(tmp_path / "out", ("google",), google_dir=fake)


def test_google_names_without_emoji_test(tmp_path):
    """Without emoji-test.txt the names come from the emoji package (or, lacking it, Google's own)."""
    build(tmp_path / "out", ("google",), emoji_test=tmp_path / "missing.txt")
    names = {im["emoji"]: im["sentences"][0]["raw"] for im in load(tmp_path / "out")["images"]}
    try:
        import emoji  # noqa: F401
    except ImportError:
        assert names["1F44B-1F3FC"] == "waving hand sign: medium-light skin tone"
    else:
        assert names["1F44B-1F3FC"] == "waving hand: medium-light skin tone"
        assert names["1F1EB-1F1F7"] == "flag: france"


@needs_noto
def test_noto_renders_from_emoji_test(built):
    out, summary, dataset = built
    noto = {im["emoji"]: im for im in dataset["images"] if im["source"] == "noto"}
    # Every fully-qualified entry of the fixture emoji-test.txt (components and unqualified lines skipped).
    assert {"1F600", "263A-FE0F", "1F47B", "1F436", "1F1EB-1F1F7"} <= set(noto)
    assert "263A" not in noto and "1F3FB" not in noto
    assert noto["1F47B"]["sentences"][0]["raw"] == "ghost"
    with Image.open(out / noto["1F436"]["filepath"] / noto["1F436"]["filename"]) as image:
        assert len(image.getcolors(maxcolors=32 * 32)) > 20  # a real colour glyph, not a blank square


@needs_cairosvg
def test_a_gradient_sheared_by_a_right_angle_paints_nothing_and_the_drawing_renders():
    """Fluent colour's two umbrellas shade with `skewY(-90)`: cairo refused them whole (out of memory), a
    browser paints the unbounded gradient's far, transparent stop. The drawing renders without that paint."""
    import cairosvg
    import numpy as np

    from captioner.data.emoji.rendering import render_svg

    svg = ('<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 32 32"><defs><radialGradient id="shade" cx="0" '
           'cy="0" r="1" gradientTransform="translate(16 20)skewY(-90)" gradientUnits="userSpaceOnUse"><stop '
           'stop-color="#504573"/><stop offset="1" stop-color="#504573" stop-opacity="0"/></radialGradient>'
           '<linearGradient id="ok" gradientTransform="skewX(30)"><stop stop-color="#00f"/></linearGradient></defs>'
           '<rect x="4" y="4" width="24" height="24" fill="#e33"/>{}</svg>')
    shaded = svg.format('<path d="M8 8h16v16H8z" fill="url(#shade)"/><path d="M0 0h4v4H0z" fill="url(#ok)"/>')
    with pytest.raises(MemoryError):  # what the build logged for those two drawings
        cairosvg.svg2png(bytestring=shaded.encode(), output_width=32, output_height=32)
    drawing = np.asarray(render_svg(32, markup=shaded))
    unshaded = np.asarray(render_svg(32, markup=svg.format('<path d="M0 0h4v4H0z" fill="url(#ok)"/>')))
    assert np.array_equal(drawing, unshaded)
    assert tuple(drawing[16, 16]) == (238, 51, 51) and tuple(drawing[1, 1]) == (0, 0, 255)  # a sane skew still paints


def test_cli_arguments_and_run(tmp_path, capsys):
    assert cli.main([
        "data", "emoji", "--out", str(tmp_path / "out"), "--sources", "google", "--google-dir", str(GOOGLE),
        "--emoji-test", str(EMOJI_TEST), "--image-size", "24", "--cache-dir", str(tmp_path / "cache"),
        "--jobs", "1", "--quiet",
    ]) == 0
    printed = capsys.readouterr().out
    assert "google" in printed and "19" in printed
    assert Image.open(tmp_path / "out" / "images" / "google" / "1f436.png").size == (24, 24)

    assert cli.main(["data", "emoji", "--out", str(tmp_path / "x"), "--sources", "openmoji",
                     "--openmoji-dir", str(tmp_path / "none"), "--quiet"]) == 2
    assert "npm pack openmoji@17.0.0" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------- more artists


@pytest.fixture(scope="module")
def built_iconify(tmp_path_factory):
    out = tmp_path_factory.mktemp("emoji-iconify") / "dataset"
    summary = build(out, ("google", "noto-v1", "fluent-flat"), source_dirs=ICONIFY_DIRS)
    return out, summary, load(out)


@needs_cairosvg
def test_iconify_names_map_to_cldr_and_unmapped_are_counted(built_iconify):
    out, summary, dataset = built_iconify
    by_artist = defaultdict(dict)
    for im in dataset["images"]:
        by_artist[im["artist"]][im["emoji"]] = im["sentences"][0]["raw"]
    # By slug, and by Fluent's short skin-tone suffix; "admissiontickets" names no emoji.
    assert by_artist["noto-v1"] == {"1F436": "dog face", "1F44B-1F3FE": "waving hand: medium-dark skin tone"}
    # By chars.json only ("spooky"), by a plain alias ("kitty" = "cat-face"), tone variant by chars.json.
    assert by_artist["fluent-flat"] == {"1F47B": "ghost", "1F431": "cat face", "1F44D-1F3FB": "thumbs up: light skin tone"}
    assert summary["mapping"]["noto-v1"] == {"slug": 1, "slug + skin-tone suffix": 1, "unmapped": 1}
    assert summary["mapping"]["fluent-flat"] == {"chars.json": 3, "slug": 1}
    assert summary["skipped"]["fluent-flat"] == {"duplicate": 1}  # the hidden kitty-old, same emoji as kitty
    assert json.loads((out / "unmapped.json").read_text(encoding="utf-8")) == {
        "fluent-flat": [], "noto-v1": ["admissiontickets"]}
    text = (out / "SOURCES.md").read_text(encoding="utf-8")
    assert "@iconify-json/noto-v1@1.2.5" in text and "@iconify-json/fluent-emoji-flat@1.2.6" in text
    assert "1 unmapped" in text and "MIT License" in text and "Apache License 2.0" in text
    assert summary["per_source"]["noto-v1"]["total"] == 2
    with Image.open(out / "images" / "noto-v1" / "1f436.png") as image:
        assert image.size == (32, 32) and image.getpixel((16, 16)) == (0xC8, 0x84, 0x3A)
    with Image.open(out / "images" / "fluent-flat" / "1f47b.png") as image:  # currentColor draws black
        assert image.getpixel((16, 20)) == (0, 0, 0) and image.getpixel((1, 1)) == (255, 255, 255)


@needs_cairosvg
def test_every_image_records_its_artist(built_iconify, built):
    for out, _, dataset in (built_iconify, built):
        for im in dataset["images"]:
            assert im["artist"] == im["source"] and im["filepath"] == f"images/{im['artist']}"
        examples = read_dataset(out / "dataset.json")
        assert [e.metadata["artist"] for e in examples] == [im["artist"] for im in dataset["images"]]
        assert all("sentences" not in e.metadata and "split" not in e.metadata for e in examples)


@needs_cairosvg
def test_held_out_artist_only_in_test_artist_split(tmp_path):
    sources = ("google", "openmoji", "noto-v1", "fluent-flat")
    summary = build(tmp_path / "held", sources, source_dirs=ICONIFY_DIRS, holdout_artists=("openmoji", "noto-v1"))
    held = load(tmp_path / "held")
    for im in held["images"]:
        assert (im["split"] == emoji_data.ARTIST_SPLIT) == (im["artist"] in ("openmoji", "noto-v1")), im
    assert {im["split"] for im in held["images"] if im["artist"] == "google"} >= {"train", "val", "test"}
    assert summary["per_source"]["openmoji"]["test-artist"] == summary["per_source"]["openmoji"]["total"] == 5
    assert "| openmoji | 0 | 0 | 0 | 5 | 5 |" in (tmp_path / "held" / "SOURCES.md").read_text(encoding="utf-8")
    # The other artists' splits are those of a build without the held-out artists; and deterministic.
    build(tmp_path / "rest", ("google", "fluent-flat"), source_dirs=ICONIFY_DIRS)
    rest = {(im["artist"], im["emoji"]): im["split"] for im in load(tmp_path / "rest")["images"]}
    assert {(im["artist"], im["emoji"]): im["split"] for im in held["images"]
            if im["split"] != emoji_data.ARTIST_SPLIT} == rest
    build(tmp_path / "again", sources, source_dirs=ICONIFY_DIRS, holdout_artists=("noto-v1", "openmoji"))
    assert (tmp_path / "again" / "dataset.json").read_bytes() == (tmp_path / "held" / "dataset.json").read_bytes()


def test_split_images_holds_out_artists():
    captions = ["waving hand", "thumbs up", "waving hand: light skin tone", "thumbs up: light skin tone",
                "dog face", "cat face", "dog", "cat"] * 3
    artists = ["a"] * 8 + ["b"] * 8 + ["c"] * 8
    splits = emoji_data.split_images(captions, artists, holdout_artists=["b"], test_fraction=0.25, val_fraction=0.1)
    assert splits == emoji_data.split_images(captions, artists, holdout_artists=("b",), test_fraction=0.25,
                                             val_fraction=0.1)
    assert splits[8:16] == [emoji_data.ARTIST_SPLIT] * 8
    assert splits[:8] == splits[16:]  # the same caption is in the same split for every kept artist
    assert "test" in splits[:8] and "train" in splits[:8]
    with pytest.raises(ValueError, match="artists"):
        emoji_data.split_images(captions, artists[:-1])


def test_holdout_artist_must_be_built(tmp_path):
    with pytest.raises(emoji_data.EmojiSourceError, match="not among the sources"):
        build(tmp_path / "out", ("google",), holdout_artists=("fluent-flat",))


def test_reserved_and_unavailable_sets_are_refused(tmp_path, monkeypatch):
    for name in ("apple", "facebook", "twemoji", "emoji-datasource-twitter"):
        with pytest.raises(emoji_data.EmojiSourceError, match="held-out"):
            build(tmp_path / "out", (name,))
    with pytest.raises(emoji_data.EmojiSourceError, match="ships no images"):
        build(tmp_path / "out", ("google", "blobmoji"))
    # Refused before npm is even looked for: nothing reserved is ever downloaded.
    monkeypatch.setattr(shutil, "which", lambda name: pytest.fail("npm must not be looked up"))
    for package in ("@iconify-json/twemoji", "@svgmoji/twemoji", "emoji-datasource-apple", "emoji-datasource-facebook"):
        with pytest.raises(emoji_data.EmojiSourceError, match="held-out"):
            emoji_data.fetch_npm_source(package, "1.0.0", tmp_path / "x", log=lambda m: None)
    # A reserved package passed as an allowed set's folder.
    fake = tmp_path / "twemoji-iconify"
    shutil.copytree(ICONIFY, fake)
    (fake / "package.json").write_text(json.dumps({"name": "@iconify-json/twemoji"}), encoding="utf-8")
    with pytest.raises(emoji_data.EmojiSourceError, match="held-out"):
        build(tmp_path / "out", ("noto-v1",), source_dirs={"noto-v1": fake})


def test_cli_source_dir_and_holdout_artist(tmp_path, capsys):
    assert cli.main([
        "data", "emoji", "--out", str(tmp_path / "out"), "--sources", "google,noto-v1", "--google-dir", str(GOOGLE),
        "--source-dir", f"noto-v1={ICONIFY}", "--holdout-artist", "noto-v1", "--emoji-test", str(EMOJI_TEST),
        "--image-size", "16", "--cache-dir", str(tmp_path / "cache"), "--jobs", "1", "--quiet",
    ]) == (0 if HAVE_CAIROSVG else 2)
    if HAVE_CAIROSVG:
        printed = capsys.readouterr().out
        assert "test-artist" in printed and "unmapped" in printed
        assert {im["split"] for im in load(tmp_path / "out")["images"] if im["artist"] == "noto-v1"} == {"test-artist"}
    assert cli.main(["data", "emoji", "--out", str(tmp_path / "y"), "--source-dir", "nonsense=/x", "--quiet"]) == 2
    assert "not an npm emoji source" in capsys.readouterr().err


def test_icon_names_map_through_cldr_slugs():
    table = emoji_data.NameTable()
    for cps, name in [((0x1F468, 0x1F3FF, 0x200D, 0x1F9B2), "man: dark skin tone, bald"), ((0x1F468, 0x200D, 0x1F9B2), "man: bald"),
                      ((0x1F9D1, 0x1F3FB, 0x200D, 0x1F3A8), "artist: light skin tone"), ((0x1F1EB, 0x1F1F7), "flag: France"),
                      ((0x1F471, 0x200D, 0x2642, 0xFE0F), "man: blond hair"), ((0x0023, 0xFE0F, 0x20E3), "keycap: #"),
                      ((0x002A, 0xFE0F, 0x20E3), "keycap: *"), ((0x1F1E8, 0x1F1EE), "flag: Côte d’Ivoire")]:
        table.add(cps, name, "test")
    slugs = table.slug_index()
    assert emoji_data.slugify("flag: Côte d’Ivoire") == "flag-cote-divoire" and "flag-cote-divoire" in slugs
    assert emoji_data.slugify("eight o'clock") == emoji_data.slugify("eight o’clock") == "eight-oclock"
    assert "keycap" not in slugs  # "keycap: #" and "keycap: *" slug alike: neither is guessed
    expected = {
        "man-bald": ((0x1F468, 0x200D, 0x1F9B2), "slug"),
        "man-bald-dark": ((0x1F468, 0x1F3FF, 0x200D, 0x1F9B2), "slug + skin-tone suffix"),
        "artist-light": ((0x1F9D1, 0x1F3FB, 0x200D, 0x1F3A8), "slug + skin-tone suffix"),
        "flag-for-france": ((0x1F1EB, 0x1F1F7), "respelled slug"),
        "flag-for-flag-france": ((0x1F1EB, 0x1F1F7), "respelled slug"),
        "flag-for-cote-divoire": ((0x1F1E8, 0x1F1EE), "respelled slug"),
        "man-blonde-hair": ((0x1F471, 0x200D, 0x2642), "respelled slug"),
        "admissiontickets": None, "keycap": None, "man-bald-purple": None,
    }
    assert {name: emoji_data.map_icon_name(name, slugs) for name in expected} == expected


# --------------------------------------------------------------------------------------------- languages
CLDR = FIXTURES / "cldr"  # both CLDR annotation packages, cut down to the fixtures' emoji


def test_languages_caption_every_image_in_each_language_with_the_same_splits(tmp_path, built):
    _, english_summary, english = built
    out = tmp_path / "dataset"
    sources = tuple(dict.fromkeys(im["source"] for im in english["images"]))
    summary = build(out, sources, languages="en,de,ja,ar", cldr_dir=CLDR)
    dataset = load(out)
    assert [(im["filename"], im["source"], im["split"]) for im in dataset["images"]] == \
        [(im["filename"], im["source"], im["split"]) for im in english["images"]]
    by_char = {}
    for image, plain in zip(dataset["images"], english["images"]):
        by_language = {s["language"]: s["raw"] for s in image["sentences"]}
        assert by_language["en"] == plain["sentences"][0]["raw"]  # English as without languages
        by_char[image["char"]] = by_language
    assert by_char["🐶"] == {"en": "dog face", "de": "hundegesicht", "ja": "イヌの顔", "ar": "وجه كلب"}
    thumbs = next(v for k, v in by_char.items() if k.startswith("👍") and len(k) == 2)
    assert thumbs["de"].startswith("daumen hoch: ")  # derived names: skin tones
    assert by_char["🇫🇷"]["de"] == "flagge: frankreich" and "ar" not in by_char["🇫🇷"]
    assert json.loads((out / emoji_data.UNNAMED_FILE).read_text()) == \
        {"en": [], "de": [], "ja": [], "ar": ["1F1EB-1F1F7"]}
    per = summary["languages"]["per_language"]
    assert per["ar"]["unnamed_emoji"] == 1 and per["de"]["unnamed_emoji"] == 0
    assert per["ja"]["tokenizer"] == "chars" and per["de"]["captions"] == len(dataset["images"])
    sources_md = (out / "SOURCES.md").read_text()
    assert "## Languages" in sources_md and "Unicode License v3" in sources_md
    sentids = [s["sentid"] for im in dataset["images"] for s in im["sentences"]]
    assert sentids == list(range(len(sentids)))
    examples = read_dataset(out / "dataset.json")  # the readers take the sentences' languages
    assert [e.languages for e in examples] == [[s["language"] for s in im["sentences"]] for im in dataset["images"]]
    assert english_summary.get("languages") is None and not (Path(built[0]) / emoji_data.UNNAMED_FILE).exists()


def test_regional_locale_inherits_its_language_names_and_unknown_locales_are_refused(tmp_path):
    folders = emoji_data.resolve_cldr(CLDR)
    swiss = emoji_data.cldr_names(folders, "de-CH")
    assert swiss[(0x1F436,)] == "Hundegesicht (CH)" and swiss[(0x1F431,)] == "Katzengesicht"
    assert emoji_data.locale_chain("zh-Hant-HK") == ["zh-Hant-HK", "zh-Hant"]
    with pytest.raises(emoji_data.EmojiSourceError, match="has no emoji names for 'fr'; it has ar, de, de-CH, ja"):
        emoji_data.cldr_names(folders, "fr")
    with pytest.raises(emoji_data.EmojiSourceError, match="cldr-annotations-full@48.2.0 .*data emoji --fetch"):
        build(tmp_path / "out", ("google",), languages="de")


def test_cli_languages(tmp_path, capsys):
    out = tmp_path / "dataset"
    code = cli.main(["data", "emoji", "--out", str(out), "--sources", "google", "--google-dir", str(GOOGLE),
                     "--emoji-test", str(EMOJI_TEST), "--image-size", "32", "--jobs", "1", "--quiet",
                     "--cache-dir", str(tmp_path / "cache"), "--languages", "de,ja", "--cldr-dir", str(CLDR)])
    assert code == 0
    assert "captions per language: de " in capsys.readouterr().out
    assert {s["language"] for im in load(out)["images"] for s in im["sentences"]} == {"de", "ja"}
    assert cli.main(["data", "emoji", "--out", str(out), "--sources", "google", "--google-dir", str(GOOGLE),
                     "--languages", "de,klingon!", "--cldr-dir", str(CLDR)]) == 2
    assert "--languages: 'klingon!' is not a language code" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------- artists of issue 22
# Real icons (cut-down copies of the npm sets, licences in fixtures/emoji/README.md) and the emoji-test.txt
# lines of what they draw.
STREAMLINE, EMOJIONE_MONOTONE, FXEMOJI = FIXTURES / "streamline", FIXTURES / "emojione-monotone", FIXTURES / "fxemoji"
MORE_ARTISTS = {"streamline": STREAMLINE, "emojione-monotone": EMOJIONE_MONOTONE, "fxemoji": FXEMOJI}
MORE_EMOJI_TEST = FIXTURES / "emoji-test-more-artists.txt"


def more_artists_table() -> emoji_data.NameTable:
    table = emoji_data.NameTable()
    for cps, name in read_emoji_test(MORE_EMOJI_TEST)[0]:
        table.add(cps, name, "emoji-test.txt")
    return table


@pytest.fixture(scope="module")
def built_more(tmp_path_factory):
    out = tmp_path_factory.mktemp("emoji-more") / "dataset"
    summary = build(out, tuple(MORE_ARTISTS), source_dirs=MORE_ARTISTS, emoji_test=MORE_EMOJI_TEST)
    return out, summary, load(out)


@needs_cairosvg
def test_new_artists_map_their_names_to_cldr_and_count_the_rest(built_more):
    out, summary, dataset = built_more
    by_artist = defaultdict(dict)
    for im in dataset["images"]:
        by_artist[im["artist"]][im["emoji"]] = im["sentences"][0]["raw"]
    # Streamline: slugs; "baby-1" is the default-coloured baby, "baby-2" a skin tone it does not name (not used);
    # a country alone is its flag, "turkey" too (the flag is drawn, not 🦃).
    assert by_artist["streamline"] == {"1F476": "baby", "1F525": "fire", "1F1EB-1F1F7": "flag: france",
                                       "1F1F9-1F1F7": "flag: turkey"}
    assert summary["mapping"]["streamline"] == {"country name as its flag": 2, "slug": 1,
                                                "slug of the first numbered drawing": 1, "unmapped": 1}
    assert summary["skipped"]["streamline"] == {"numbered drawing after the first": 1}
    # EmojiOne monotone: slugs, a plain alias ("bear" for "bear-face"), "flag-for-" with "and" for CLDR's "&",
    # and EmojiOne's flags that are not countries.
    assert by_artist["emojione-monotone"] == {"1F436": "dog face", "1F43B": "bear", "1F3F3-FE0F": "white flag",
                                              "1F1F9-1F1F9": "flag: trinidad & tobago"}
    assert summary["mapping"]["emojione-monotone"] == {"respelled slug": 2, "slug": 2, "unmapped": 1}
    # Firefox OS: names without separators, CLDR's ("admissiontickets") or Unicode's ("blackdiamondsuit",
    # "housebuilding"); "cat" draws a cat face, so the name that matches 🐈 is not used.
    assert by_artist["fxemoji"] == {"1F39F-FE0F": "admission tickets", "2666-FE0F": "diamond suit", "1F3E0": "house"}
    assert summary["mapping"]["fxemoji"] == {"compact name": 3, "unmapped": 1}
    assert summary["skipped"]["fxemoji"] == {"named like another emoji than drawn (checked by eye)": 1}
    assert json.loads((out / "unmapped.json").read_text(encoding="utf-8")) == {
        "emojione-monotone": ["letter-a"], "fxemoji": ["2hearts"], "streamline": ["amazed-face"]}
    text = (out / "SOURCES.md").read_text(encoding="utf-8")
    assert "@iconify-json/streamline-emojis@1.2.4" in text and "@iconify-json/fxemoji@1.2.2" in text
    assert "@iconify-json/emojione-monotone@1.2.1" in text and "CC BY 4.0" in text and "Apache License 2.0" in text
    assert "EmojiOne: `emojione-2`, `emojione-1`, `emojione-monotone`" in text
    with Image.open(out / "images" / "fxemoji" / "2666-fe0f.png") as image:  # its own 512-unit viewBox, drawn
        assert image.size == (32, 32) and image.getpixel((16, 16)) != (255, 255, 255)


def test_compact_names_map_only_when_one_character_has_them():
    index = compact_index(more_artists_table())
    assert index["admissiontickets"] == (0x1F39F,)  # CLDR's name (Unicode's too)
    assert index["blackdiamondsuit"] == index["diamondsuit"] == (0x2666,)  # Unicode's name, CLDR's name
    assert index["housebuilding"] == (0x1F3E0,)
    assert index["beamingfacewithsmilingeyes"] == (0x1F601,)
    # CLDR's name of 😄 is Unicode's of 😁; CLDR's "house" 🏠 is Unicode's U+2302 ⌂ (no emoji): neither guessed.
    assert "grinningfacewithsmilingeyes" not in index and "house" not in index
    assert emoji_data.map_icon_name("admissiontickets", more_artists_table().slug_index()) is None  # not a slug


def test_numbered_drawings_and_country_flags_only_where_a_set_names_so():
    slugs = more_artists_table().slug_index()
    baby, turkey, flag_tr = (0x1F476,), (0x1F983,), (0x1F1F9, 0x1F1F7)
    assert emoji_data.map_icon_name("baby-1", slugs) is None
    assert emoji_data.map_icon_name("baby-1", slugs, numbered=True) == (baby, "slug of the first numbered drawing")
    assert emoji_data.map_icon_name("baby-2", slugs, numbered=True) is None
    assert emoji_data.map_icon_name("turkey", slugs) == (turkey, "slug")
    assert emoji_data.map_icon_name("turkey", slugs, country_flags=True) == (flag_tr, "country name as its flag")
    assert emoji_data.map_icon_name("flag-for-trinidad-and-tobago", slugs) == ((0x1F1F9, 0x1F1F9), "respelled slug")
    assert emoji_data.map_icon_name("flag-for-white-flag", slugs) == ((0x1F3F3,), "respelled slug")


def test_a_set_whose_licence_changed_is_refused(tmp_path):
    changed = tmp_path / "fxemoji"
    shutil.copytree(FXEMOJI, changed)
    info = json.loads((changed / "info.json").read_text(encoding="utf-8"))
    info["license"] = {"title": "Proprietary", "spdx": "LicenseRef-Proprietary"}
    (changed / "info.json").write_text(json.dumps(info), encoding="utf-8")
    with pytest.raises(emoji_data.EmojiSourceError, match=r"info.json: license.spdx is 'LicenseRef-Proprietary'"):
        build(tmp_path / "out", ("fxemoji",), source_dirs={"fxemoji": changed}, emoji_test=MORE_EMOJI_TEST)
    (changed / "info.json").write_text("[1, 2", encoding="utf-8")
    with pytest.raises(emoji_data.EmojiSourceError, match=r"info.json: not an Iconify info.json"):
        build(tmp_path / "out", ("fxemoji",), source_dirs={"fxemoji": changed}, emoji_test=MORE_EMOJI_TEST)


def _resplit():
    spec = importlib.util.spec_from_file_location("resplit_emoji", ROOT / "scripts" / "resplit_emoji.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


@needs_cairosvg
def test_resplit_of_a_multilingual_dataset_is_what_the_builder_writes(tmp_path, capsys):
    """Held out by resplit_emoji.py == held out by the builder, with German captions first in each image."""
    sources = ("google", "emojione-2", *MORE_ARTISTS)
    dirs = {"emojione-2": ICONIFY, **MORE_ARTISTS}
    options = dict(source_dirs=dirs, languages="de,en", cldr_dir=CLDR, split_by="image", test_fraction=0.2)
    build(tmp_path / "all", sources, **options)
    assert any(im["sentences"][0]["language"] == "de" for im in load(tmp_path / "all")["images"])
    capsys.readouterr()
    assert _resplit()([str(tmp_path / "all" / "dataset.json"), "emojione", "--holdout-artist", "emojione-monotone",
                       "--split-by", "image", "--test-fraction", "0.2"]) == 0
    assert "part of EmojiOne; emojione-2 still train" in capsys.readouterr().err
    build(tmp_path / "held", sources, holdout_artists=("emojione-monotone",), **options)
    assert "part of EmojiOne; emojione-2 still train" in capsys.readouterr().err
    resplit = json.loads((tmp_path / "all" / "dataset-emojione.json").read_text(encoding="utf-8"))
    assert resplit == load(tmp_path / "held")
    assert {im["split"] for im in resplit["images"] if im["artist"] == "emojione-monotone"} == {"test-artist"}

    build(tmp_path / "german", ("google",), languages="de", cldr_dir=CLDR)
    with pytest.raises(SystemExit):
        _resplit()([str(tmp_path / "german" / "dataset.json"), "x", "--holdout-artist", "google"])
    assert "has no English caption" in capsys.readouterr().err
