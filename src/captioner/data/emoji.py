"""Emoji-art captioning dataset: emoji images captioned with their Unicode CLDR short names.

``captioner data emoji --out DIR`` builds ``DIR/dataset.json`` (Karpathy split format),
``DIR/images/<source>/<codepoints>.png`` and ``DIR/SOURCES.md`` from up to three emoji art sets:

- ``google``: PNGs from npm ``emoji-datasource-google@16.0.0`` (``img/google/64`` + ``emoji.json``),
  Apache-2.0;
- ``noto``: Noto Color Emoji (Debian ``fonts-noto-color-emoji``) rendered with Pillow, the emoji list and
  names from ``emoji-test.txt`` (Debian ``unicode-data``), font OFL-1.1;
- ``openmoji``: colour SVGs from npm ``openmoji@17.0.0`` rendered with ``cairosvg``, CC BY-SA 4.0.

The Twemoji set (``emoji-datasource-twitter``) is deliberately refused: it is reserved for an external
held-out evaluation.

Captions are CLDR short names, lowercased ("woman running: medium-dark skin tone"). Names come from, in
order: ``emoji-test.txt``, OpenMoji's ``annotation`` field, the ``emoji`` package. The same emoji from
several sources gives several images with the same caption, always in the same split.

Splits are deterministic and compositional: test (~10% of distinct captions) and val (~5%) hold whole
emoji never seen in training, picked (in a fixed hash order) only when every word of their caption still
occurs in a training caption, so the held-out emoji are new combinations of seen parts.
"""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from ..errors import CaptionerError, InvalidInputError

SOURCES = ("google", "noto", "openmoji")
SPLITS = ("train", "val", "test")
GOOGLE_PACKAGE, GOOGLE_VERSION = "emoji-datasource-google", "16.0.0"
OPENMOJI_PACKAGE, OPENMOJI_VERSION = "openmoji", "17.0.0"
NOTO_FONT_SIZE = 109  # the only bitmap strike of NotoColorEmoji.ttf (136x128 glyphs)
DEFAULT_IMAGE_SIZE = 64  # the Google PNGs' own size
SPLIT_SEED = "captioner-emoji-v1"
RESERVED_MESSAGE = (
    "the Twemoji set (emoji-datasource-twitter) is reserved for the external held-out evaluation "
    "of captioner: do not build training data from it"
)

NOTO_FONT_CANDIDATES = (
    "/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf",  # Debian / Ubuntu
    "/usr/share/fonts/noto/NotoColorEmoji.ttf",  # Arch
    "/usr/share/fonts/google-noto-color-emoji-fonts/NotoColorEmoji.ttf",  # Fedora
    "/usr/share/fonts/google-noto-emoji/NotoColorEmoji.ttf",
    "/usr/local/share/fonts/NotoColorEmoji.ttf",
)
EMOJI_TEST_CANDIDATES = (
    "/usr/share/unicode/emoji/emoji-test.txt",  # Debian / Ubuntu unicode-data
    "/usr/share/unicode-data/emoji/emoji-test.txt",
    "/usr/share/unicode/emoji-test.txt",
)

SKIN_TONES = {
    0x1F3FB: "light skin tone",
    0x1F3FC: "medium-light skin tone",
    0x1F3FD: "medium skin tone",
    0x1F3FE: "medium-dark skin tone",
    0x1F3FF: "dark skin tone",
}
# Emoji components (skin-tone swatches, hair pieces): not fully-qualified emoji on their own.
COMPONENT_KEYS = frozenset((c,) for c in (*SKIN_TONES, 0x1F9B0, 0x1F9B1, 0x1F9B2, 0x1F9B3))
# Name parts that CLDR puts after a colon ("woman: medium skin tone, red hair").
_COLON_PARTS = tuple(SKIN_TONES.values()) + ("red hair", "curly hair", "white hair", "bald", "blond hair", "beard")
# OpenMoji groups that are not Unicode emoji (OpenMoji's own icons, brands, non-RGI sequences) or are
# bare components (skin-tone swatches, hair components; not fully-qualified emoji).
OPENMOJI_DROP_GROUPS = ("extras-openmoji", "extras-unicode", "component")

LICENSES = {
    "google": (
        f"npm `{GOOGLE_PACKAGE}@{GOOGLE_VERSION}` (iamcal/emoji-data), `img/google/64/*.png`: Google's "
        "Noto Emoji artwork, Apache License 2.0."
    ),
    "noto": (
        "Noto Color Emoji font (Debian `fonts-noto-color-emoji`) rendered with Pillow; the font is under the "
        "SIL Open Font License 1.1 (the artwork is Google's Noto Emoji, Apache-2.0). Emoji list and names from "
        "Unicode `emoji-test.txt` (Debian `unicode-data`, Unicode License)."
    ),
    "openmoji": (
        f"npm `{OPENMOJI_PACKAGE}@{OPENMOJI_VERSION}` colour SVGs rendered with cairosvg: \"All emojis designed by "
        "OpenMoji – the open-source emoji and icon project. License: CC BY-SA 4.0\" "
        "(https://openmoji.org, https://creativecommons.org/licenses/by-sa/4.0/). The PNGs here are adaptations "
        "and are shared under the same licence."
    ),
}


class EmojiSourceError(CaptionerError, RuntimeError):
    """No usable emoji source (or a forbidden one); the message says how to get one."""


# --------------------------------------------------------------------------------------------- helpers


def default_cache_dir() -> Path:
    """``$CAPTIONER_CACHE/emoji-sources``, else ``~/.cache/captioner/emoji-sources``."""
    root = os.environ.get("CAPTIONER_CACHE")
    base = Path(root).expanduser() if root else Path.home() / ".cache" / "captioner"
    return base / "emoji-sources"


def parse_codepoints(text: str) -> tuple[int, ...]:
    """``"1F3C3-1F3FE-200D"`` or ``"1F3C3 1F3FE 200D"`` → code points."""
    return tuple(int(part, 16) for part in re.split(r"[\s\-_]+", text.strip()) if part)


def hex_string(cps: Iterable[int]) -> str:
    return "-".join(f"{c:04X}" for c in cps)


def emoji_key(cps: Iterable[int]) -> tuple[int, ...]:
    """Identity of an emoji regardless of qualification: the code points without U+FE0F."""
    return tuple(c for c in cps if c != 0xFE0F)


def normalize_name(name: str) -> str:
    """CLDR name → caption: lowercased, typographic quotes made plain, spaces collapsed."""
    name = name.replace("’", "'").replace("‘", "'").replace("“", '"').replace("”", '"')
    return " ".join(name.lower().split())


_TOKEN_RE = re.compile(r"[^\W_]+(?:['\-][^\W_]+)*|[#*]")


def tokenize(caption: str) -> list[str]:
    """Lowercase words; hyphenated words and apostrophes kept ("medium-dark", "o'clock"), ``#``/``*`` kept
    (keycaps), other punctuation dropped."""
    return _TOKEN_RE.findall(normalize_name(caption))


def _is_flag(cps: tuple[int, ...]) -> bool:
    if len(cps) == 2 and all(0x1F1E6 <= c <= 0x1F1FF for c in cps):
        return True
    return len(cps) > 2 and cps[0] == 0x1F3F4 and all(0xE0020 <= c <= 0xE007F for c in cps[1:])


def _name_from_emoji_package(cps: tuple[int, ...], en_name: str) -> str:
    """The ``emoji`` package's ``:woman_running_medium-dark_skin_tone:`` → CLDR-style
    ``woman running: medium-dark skin tone`` (same words as CLDR; punctuation approximated)."""
    name = en_name.strip(":").replace("_", " ")
    key = emoji_key(cps)
    if _is_flag(key):
        return "flag: " + name
    if key and key[-1] == 0x20E3 and name.lower().startswith("keycap "):
        return "keycap: " + name[len("keycap "):]
    parts = []
    while True:
        for part in sorted(_COLON_PARTS, key=len, reverse=True):
            if name.endswith(" " + part):
                parts.insert(0, part)
                name = name[: -len(part) - 1]
                break
        else:
            break
    return name + (": " + ", ".join(parts) if parts else "")


# --------------------------------------------------------------------------------------------- names


@dataclass
class NameTable:
    """Emoji key → (fully-qualified code points, CLDR name); first source that knows an emoji wins."""

    entries: dict = field(default_factory=dict)
    origin: dict = field(default_factory=dict)

    def add(self, cps: tuple[int, ...], name: str, origin: str) -> None:
        key = emoji_key(cps)
        if key not in self.entries and name:
            self.entries[key] = (tuple(cps), name)
            self.origin[key] = origin

    def lookup(self, cps: tuple[int, ...]):
        return self.entries.get(emoji_key(cps))


def read_emoji_test(path: Path) -> tuple[list[tuple[tuple[int, ...], str]], str]:
    """Fully-qualified entries of ``emoji-test.txt`` in file order, and its ``# Version:``."""
    entries, version = [], "?"
    line_re = re.compile(r"^([0-9A-Fa-f ]+);\s*([\w-]+)\s*#\s*\S+\s+E\d+(?:\.\d+)?\s+(.+)$")
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.startswith("# Version:"):
                version = line.split(":", 1)[1].strip()
            if not line.strip() or line.startswith("#"):
                continue
            m = line_re.match(line.rstrip("\n"))
            if m and m.group(2) == "fully-qualified":
                entries.append((parse_codepoints(m.group(1)), m.group(3).strip()))
    return entries, version


def _emoji_package_names(table: NameTable) -> bool:
    try:
        import emoji as emoji_pkg
    except ImportError:
        return False
    fully_qualified = getattr(emoji_pkg, "STATUS", {}).get("fully_qualified", 2)
    for text, data in emoji_pkg.EMOJI_DATA.items():
        if data.get("status") != fully_qualified or "en" not in data:
            continue
        cps = tuple(ord(c) for c in text)
        table.add(cps, _name_from_emoji_package(cps, data["en"]), "emoji package")
    return True


# --------------------------------------------------------------------------------------------- sources


def _find_dir(base: Path | None, *markers: str) -> Path | None:
    """``base`` or ``base/package`` (an untarred npm tarball), whichever holds all ``markers``."""
    if base is None:
        return None
    base = Path(base).expanduser()
    for candidate in (base, base / "package"):
        if all((candidate / m).exists() for m in markers):
            return candidate
    return None


def _check_not_twemoji(folder: Path) -> None:
    package_json = folder / "package.json"
    name = ""
    if package_json.is_file():
        try:
            name = json.loads(package_json.read_text(encoding="utf-8")).get("name", "")
        except (OSError, ValueError):
            pass
    if "twitter" in name or "twemoji" in name.lower():
        raise EmojiSourceError(f"{folder}: {RESERVED_MESSAGE}")


def _package_version(folder: Path) -> str:
    try:
        return json.loads((folder / "package.json").read_text(encoding="utf-8")).get("version", "?")
    except (OSError, ValueError):
        return "?"


def _find_or_fetch(found: "ResolvedSources", source: str, base: Path, package: str, version: str,
                   markers: tuple[str, ...], fetch: bool, log) -> Path | None:
    """The folder under ``base`` holding ``markers``, fetched from npm first when missing and
    ``fetch``; a failed fetch is recorded in ``found.missing[source]``."""
    folder = _find_dir(base, *markers)
    if folder is None and fetch:
        try:
            fetch_npm_source(package, version, base, log)
            folder = _find_dir(base, *markers)
        except EmojiSourceError as e:
            found.missing[source] = str(e)
    return folder


def _npm_command(package: str, version: str, dest: Path) -> str:
    tgz = f"{package}-{version}.tgz"
    return f"mkdir -p {dest} && cd {dest} && npm pack {package}@{version} && tar xzf {tgz} && rm {tgz}"


def _google_dir_default(cache: Path) -> Path:
    return cache / f"{GOOGLE_PACKAGE}-{GOOGLE_VERSION}"


def _openmoji_dir_default(cache: Path) -> Path:
    return cache / f"{OPENMOJI_PACKAGE}-{OPENMOJI_VERSION}"


def _wanted_member(package: str, name: str) -> bool:
    if package == GOOGLE_PACKAGE:
        return name in ("package/emoji.json", "package/package.json", "package/LICENSE") or (
            name.startswith("package/img/google/64/") and name.endswith(".png")
        )
    return name in ("package/data/openmoji.json", "package/package.json", "package/LICENSE.txt") or (
        name.startswith("package/color/svg/") and name.endswith(".svg")
    )


def fetch_npm_source(package: str, version: str, dest: Path, log=print) -> Path:
    """``npm pack package@version`` into a temp folder, untar only what the builder reads into ``dest``."""
    if "twitter" in package:
        raise EmojiSourceError(RESERVED_MESSAGE)
    npm = shutil.which("npm")
    if npm is None:
        raise EmojiSourceError(
            f"--fetch needs npm (install Node.js, e.g. `apt-get install -y npm`), or run by hand: "
            f"{_npm_command(package, version, dest)}"
        )
    dest.parent.mkdir(parents=True, exist_ok=True)
    log(f"fetching {package}@{version} with npm pack into {dest} ...")
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=".fetch-") as tmp:
        proc = subprocess.run(
            [npm, "pack", f"{package}@{version}", "--silent"], cwd=tmp, capture_output=True, text=True
        )
        tgzs = sorted(Path(tmp).glob("*.tgz"))
        if proc.returncode != 0 or not tgzs:
            raise EmojiSourceError(
                f"npm pack {package}@{version} failed (exit {proc.returncode}): {proc.stderr.strip()[-500:]}"
            )
        staging = Path(tmp) / "out"
        with tarfile.open(tgzs[0], "r:gz") as tar:
            members = [m for m in tar.getmembers() if m.isfile() and _wanted_member(package, m.name)]
            for m in members:
                if m.name.startswith("/") or ".." in Path(m.name).parts:
                    raise EmojiSourceError(f"unsafe path in {tgzs[0].name}: {m.name}")
            if hasattr(tarfile, "data_filter"):
                tar.extractall(staging, members=members, filter="data")
            else:  # pragma: no cover - Python < 3.11.4
                tar.extractall(staging, members=members)
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(staging, dest)
    return dest


@dataclass
class ResolvedSources:
    google: Path | None = None
    openmoji: Path | None = None
    noto_font: Path | None = None
    emoji_test: Path | None = None
    missing: dict = field(default_factory=dict)


def resolve_sources(
    sources: Iterable[str],
    *,
    google_dir=None,
    openmoji_dir=None,
    noto_font=None,
    emoji_test=None,
    fetch: bool = False,
    cache_dir: Path | None = None,
    log=print,
) -> ResolvedSources:
    """Find each requested source (fetching the npm ones when asked); missing ones get a message with the
    exact command that installs them."""
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    sources = list(sources)
    found = ResolvedSources()

    # emoji-test.txt: needed by noto, used for names by every source.
    test_candidates = [Path(emoji_test).expanduser()] if emoji_test else [
        *map(Path, EMOJI_TEST_CANDIDATES), cache / "emoji-test.txt"]
    found.emoji_test = next((p for p in test_candidates if p.is_file()), None)

    if "google" in sources:
        base = Path(google_dir).expanduser() if google_dir else _google_dir_default(cache)
        folder = _find_or_fetch(found, "google", base, GOOGLE_PACKAGE, GOOGLE_VERSION, ("emoji.json", "img/google/64"),
                                fetch and not google_dir, log)
        if folder is not None:
            _check_not_twemoji(folder)
            found.google = folder
        elif "google" not in found.missing:
            if _find_dir(base, "emoji.json", "img/twitter/64"):
                raise EmojiSourceError(f"{base}: {RESERVED_MESSAGE}")
            found.missing["google"] = (
                f"google: no {GOOGLE_PACKAGE} (emoji.json + img/google/64/) in {base}. Get it with "
                f"`captioner data emoji --fetch` or: {_npm_command(GOOGLE_PACKAGE, GOOGLE_VERSION, base)}"
                + (" (or pass --google-dir)" if not google_dir else "")
            )

    if "openmoji" in sources:
        base = Path(openmoji_dir).expanduser() if openmoji_dir else _openmoji_dir_default(cache)
        folder = _find_or_fetch(found, "openmoji", base, OPENMOJI_PACKAGE, OPENMOJI_VERSION,
                                ("data/openmoji.json", "color/svg"), fetch and not openmoji_dir, log)
        if folder is not None:
            try:
                import cairosvg  # noqa: F401
            except (ImportError, OSError) as e:
                found.missing["openmoji"] = (
                    f"openmoji: found {folder} but cannot import cairosvg ({e}); install it with "
                    "`pip install 'captioner[emoji]'` (and the Cairo library: `apt-get install -y libcairo2`)"
                )
            else:
                found.openmoji = folder
        elif "openmoji" not in found.missing:
            found.missing["openmoji"] = (
                f"openmoji: no {OPENMOJI_PACKAGE} (data/openmoji.json + color/svg/) in {base}. Get it with "
                f"`captioner data emoji --fetch` or: {_npm_command(OPENMOJI_PACKAGE, OPENMOJI_VERSION, base)}"
                + (" (or pass --openmoji-dir)" if not openmoji_dir else "")
            )

    if "noto" in sources:
        font_candidates = [Path(noto_font).expanduser()] if noto_font else [
            *map(Path, NOTO_FONT_CANDIDATES), cache / "NotoColorEmoji.ttf"]
        font = next((p for p in font_candidates if p.is_file()), None)
        problems = []
        if font is None:
            problems.append(
                f"no Noto Color Emoji font ({noto_font or 'looked in ' + ', '.join(map(str, font_candidates))})"
            )
        if found.emoji_test is None:
            problems.append(
                f"no emoji-test.txt ({emoji_test or 'looked in ' + ', '.join(map(str, test_candidates))})"
            )
        if problems:
            found.missing["noto"] = (
                "noto: " + "; ".join(problems) + ". Install with: "
                "`apt-get install -y fonts-noto-color-emoji unicode-data` (Debian/Ubuntu), "
                "or pass --noto-font PATH/NotoColorEmoji.ttf --emoji-test PATH/emoji-test.txt"
            )
        else:
            found.noto_font = font
    return found


# --------------------------------------------------------------------------------------------- rendering


def _flatten(im, size: int):
    """Any PIL image → RGB ``size``×``size`` on white."""
    from PIL import Image

    im = im.convert("RGBA")
    if im.size != (size, size):
        if im.width != im.height:  # pad to a centred square first, keeping relative sizes
            side = max(im.size)
            square = Image.new("RGBA", (side, side), (0, 0, 0, 0))
            square.paste(im, ((side - im.width) // 2, (side - im.height) // 2))
            im = square
        im = im.resize((size, size), Image.LANCZOS)
    background = Image.new("RGBA", im.size, (255, 255, 255, 255))
    background.alpha_composite(im)
    return background.convert("RGB")


_FONT_CACHE: dict = {}


def _noto_font(path: str):
    from PIL import ImageFont

    if path not in _FONT_CACHE:
        font = ImageFont.truetype(path, NOTO_FONT_SIZE)
        _FONT_CACHE[path] = (font, font.getlength("\U0001F600"))
    return _FONT_CACHE[path]


def render_noto(text: str, font_path: str, size: int):
    """One emoji with the Noto colour font → RGB image, or None when the font has no single glyph for it
    (missing glyph, or a ZWJ sequence / flag it cannot join)."""
    from PIL import Image, ImageDraw

    font, reference = _noto_font(font_path)
    if font.getlength(text) > 1.25 * reference:  # several glyphs: the sequence is not supported
        return None
    box = 128  # the glyphs are 136x128 with 4 px side bearings: a 128 square is the art's em box
    canvas = Image.new("RGBA", (box, box), (0, 0, 0, 0))
    ImageDraw.Draw(canvas).text((box / 2, box / 2), text, font=font, embedded_color=True, anchor="mm")
    if canvas.getbbox() is None:
        return None
    return _flatten(canvas, size)


def render_svg(path: str, size: int):
    import cairosvg
    from PIL import Image

    png = cairosvg.svg2png(url=str(path), output_width=size, output_height=size)
    return _flatten(Image.open(io.BytesIO(png)), size)


def _save_png(im, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    im.save(tmp, format="PNG")
    os.replace(tmp, path)


def _render_job(job: tuple) -> str:
    """Worker: ``(source, input, out_path, size, font_path)`` → "ok" or why it was skipped."""
    source, src, out_path, size, font_path = job
    try:
        if source == "google":
            from PIL import Image

            with Image.open(src) as im:
                im.load()
                rgb = _flatten(im, size)
        elif source == "noto":
            rgb = render_noto(src, font_path, size)
            if rgb is None:
                return "no glyph in the font"
        else:
            rgb = render_svg(src, size)
        _save_png(rgb, Path(out_path))
        return "ok"
    except Exception as e:  # a broken input file skips that image, not the build
        return f"error: {type(e).__name__}: {e}"


# --------------------------------------------------------------------------------------------- collecting


@dataclass
class Item:
    source: str
    cps: tuple[int, ...]  # fully-qualified code points
    caption: str
    input: str  # file path (google, openmoji) or the emoji text (noto)
    name_origin: str = ""

    @property
    def filename(self) -> str:
        return hex_string(self.cps).lower() + ".png"


def _caption_for(table: NameTable, cps: tuple[int, ...], fallback: str | None = None):
    hit = table.lookup(cps)
    if hit is not None:
        return hit[0], normalize_name(hit[1]), table.origin[emoji_key(cps)]
    if fallback:
        return tuple(cps), normalize_name(fallback), "source's own name"
    return None


def collect_google(folder: Path, table: NameTable, skipped: Counter) -> list[Item]:
    data = json.loads((folder / "emoji.json").read_text(encoding="utf-8"))
    image_dir = folder / "img" / "google" / "64"
    items = []
    for entry in data:
        base_name = str(entry.get("name") or "").lower()
        variants = [(entry, base_name)]
        for tone_key, variant in sorted((entry.get("skin_variations") or {}).items()):
            tones = [SKIN_TONES.get(c) for c in parse_codepoints(tone_key)]
            fallback = f"{base_name}: {', '.join(t for t in tones if t)}" if base_name and all(tones) else None
            variants.append((variant, fallback))
        for variant, fallback in variants:
            if variant.get("has_img_google") is False:
                skipped["no google image"] += 1
                continue
            if emoji_key(parse_codepoints(variant["unified"])) in COMPONENT_KEYS:
                skipped["component (skin tone / hair swatch)"] += 1
                continue
            path = image_dir / variant.get("image", "")
            if not variant.get("image") or not path.is_file():
                skipped["image file missing"] += 1
                continue
            named = _caption_for(table, parse_codepoints(variant["unified"]), fallback)
            if named is None:
                skipped["no name"] += 1
                continue
            items.append(Item("google", named[0], named[1], str(path), named[2]))
    return items


def collect_noto(entries: list, table: NameTable) -> list[Item]:
    items = []
    for cps, name in entries:
        fq, caption, origin = _caption_for(table, cps, name)
        items.append(Item("noto", fq, caption, "".join(chr(c) for c in cps), origin))
    return items


def openmoji_entries(folder: Path) -> list[dict]:
    """``openmoji.json`` entries that are Unicode emoji (extras, brands and bare components dropped)."""
    data = json.loads((folder / "data" / "openmoji.json").read_text(encoding="utf-8"))
    return [e for e in data if e.get("group") not in OPENMOJI_DROP_GROUPS and e.get("hexcode")]


def collect_openmoji(folder: Path, table: NameTable, skipped: Counter) -> list[Item]:
    data = json.loads((folder / "data" / "openmoji.json").read_text(encoding="utf-8"))
    items = []
    for entry in data:
        if entry.get("group") in OPENMOJI_DROP_GROUPS or not entry.get("hexcode"):
            skipped[f"group {entry.get('group')}"] += 1
            continue
        path = folder / "color" / "svg" / f"{entry['hexcode']}.svg"
        if not path.is_file():
            skipped["svg file missing"] += 1
            continue
        named = _caption_for(table, parse_codepoints(entry["hexcode"]), entry.get("annotation"))
        if named is None:
            skipped["no name"] += 1
            continue
        items.append(Item("openmoji", named[0], named[1], str(path), named[2]))
    return items


# --------------------------------------------------------------------------------------------- splits


def assign_splits(
    captions: Iterable[str], test_fraction: float = 0.1, val_fraction: float = 0.05, seed: str = SPLIT_SEED
) -> dict[str, str]:
    """Caption → split. Whole captions (emoji) are held out, in a fixed hash order, only while every word
    of the held-out caption is still in some training caption; deterministic, no global randomness."""
    unique = sorted(set(captions))
    word_sets = {c: frozenset(tokenize(c)) for c in unique}
    in_train = Counter(w for c in unique for w in word_sets[c])
    order = sorted(unique, key=lambda c: (hashlib.sha256(f"{seed}\0{c}".encode()).hexdigest(), c))
    split = {c: "train" for c in unique}
    for name, fraction in (("test", test_fraction), ("val", val_fraction)):
        target = round(fraction * len(unique))
        picked = 0
        for c in order:
            if picked >= target:
                break
            if split[c] != "train" or not word_sets[c]:
                continue
            if all(in_train[w] >= 2 for w in word_sets[c]):
                split[c] = name
                picked += 1
                for w in word_sets[c]:
                    in_train[w] -= 1
    return split


# --------------------------------------------------------------------------------------------- build


def _default_jobs() -> int:
    return max(1, min(os.cpu_count() or 1, 8))


def build_emoji_dataset(
    out_dir,
    sources: Iterable[str] = SOURCES,
    *,
    google_dir=None,
    openmoji_dir=None,
    noto_font=None,
    emoji_test=None,
    image_size: int = DEFAULT_IMAGE_SIZE,
    test_fraction: float = 0.1,
    val_fraction: float = 0.05,
    fetch: bool = False,
    progress: bool = True,
    jobs: int | None = None,
    cache_dir=None,
) -> dict:
    """Build ``out_dir/dataset.json`` (Karpathy format), ``out_dir/images/<source>/*.png`` and
    ``out_dir/SOURCES.md``; returns summary counts. Missing sources are reported (``summary["missing"]``,
    and on stderr) and skipped; :class:`EmojiSourceError` only when no requested source is available."""
    started = time.monotonic()
    sources = [s.strip().lower() for s in (sources.split(",") if isinstance(sources, str) else sources)]
    sources = [s for s in dict.fromkeys(sources) if s]
    for s in sources:
        if s in ("twitter", "twemoji"):
            raise EmojiSourceError(RESERVED_MESSAGE)
        if s not in SOURCES:
            raise EmojiSourceError(f"unknown emoji source {s!r}; choose from {', '.join(SOURCES)}")
    if not sources:
        raise EmojiSourceError(f"no emoji source asked for; choose from {', '.join(SOURCES)}")
    if not (0 <= test_fraction < 1 and 0 <= val_fraction < 1 and test_fraction + val_fraction < 1):
        raise InvalidInputError("test_fraction and val_fraction must be in [0, 1) and sum to less than 1")
    image_size = int(image_size)
    if not 8 <= image_size <= 1024:
        raise InvalidInputError(f"image_size must be between 8 and 1024, got {image_size}")

    def log(message: str) -> None:
        if progress:
            print(message, file=sys.stderr, flush=True)

    found = resolve_sources(
        sources, google_dir=google_dir, openmoji_dir=openmoji_dir, noto_font=noto_font, emoji_test=emoji_test,
        fetch=fetch, cache_dir=cache_dir, log=log,
    )
    for message in found.missing.values():
        print(f"warning: {message}", file=sys.stderr, flush=True)
    available = [s for s in sources if s not in found.missing]
    if not available:
        raise EmojiSourceError("no emoji source available:\n" + "\n".join(f"  {m}" for m in found.missing.values()))

    # Names: emoji-test.txt, then OpenMoji annotations, then the emoji package.
    table = NameTable()
    test_entries, unicode_version = [], None
    if found.emoji_test is not None:
        test_entries, unicode_version = read_emoji_test(found.emoji_test)
        for cps, name in test_entries:
            table.add(cps, name, "emoji-test.txt")
    if found.openmoji is not None:
        for entry in openmoji_entries(found.openmoji):
            table.add(parse_codepoints(entry["hexcode"]), entry.get("annotation", ""), "openmoji.json")
    has_emoji_package = _emoji_package_names(table)

    skipped: dict[str, Counter] = {s: Counter() for s in available}
    items: list[Item] = []
    if found.google is not None:
        items += collect_google(found.google, table, skipped["google"])
    if found.noto_font is not None:
        items += collect_noto(test_entries, table)
        from PIL import features

        if not features.check("raqm"):
            print("warning: noto: Pillow has no libraqm text layout, so skin tones, ZWJ sequences and flags "
                  "cannot be joined into one glyph and are skipped (install libraqm: "
                  "`apt-get install -y libraqm0`)", file=sys.stderr, flush=True)
    if found.openmoji is not None:
        items += collect_openmoji(found.openmoji, table, skipped["openmoji"])

    # One image per (source, emoji).
    unique: dict = {}
    for item in items:
        key = (item.source, emoji_key(item.cps))
        if key in unique:
            skipped[item.source]["duplicate"] += 1
        else:
            unique[key] = item
    source_rank = {s: i for i, s in enumerate(SOURCES)}
    items = sorted(unique.values(), key=lambda it: (emoji_key(it.cps), source_rank[it.source]))

    # Render.
    out_dir = Path(out_dir).expanduser()
    image_root = out_dir / "images"
    jobs_list = [
        (it.source, it.input, str(image_root / it.source / it.filename), image_size,
         str(found.noto_font) if found.noto_font else None)
        for it in items
    ]
    jobs = _default_jobs() if jobs is None else max(1, int(jobs))
    log(f"rendering {len(jobs_list)} images from {', '.join(available)} at {image_size}px with {jobs} process(es) ...")
    results = _run_jobs(jobs_list, jobs, progress)
    kept = []
    for item, result in zip(items, results):
        if result == "ok":
            kept.append(item)
        else:
            reason = result.split(":", 1)[0] if result.startswith("error") else result
            skipped[item.source][reason] += 1
            if result.startswith("error"):
                log(f"  {item.source} {hex_string(item.cps)}: {result}")

    # PNGs left by an earlier build in the folders of the sources built now and not part of this build.
    current = {(it.source, it.filename) for it in kept}
    for source in available:
        for stale in sorted((image_root / source).glob("*.png")):
            if (source, stale.name) not in current:
                stale.unlink()

    # Splits over distinct captions (so the same caption never lands in two splits).
    split_of = assign_splits((it.caption for it in kept), test_fraction, val_fraction)
    images = []
    for imgid, item in enumerate(kept):
        images.append({
            "filepath": f"images/{item.source}",
            "filename": item.filename,
            "imgid": imgid,
            "split": split_of[item.caption],
            "source": item.source,
            "emoji": hex_string(item.cps),
            "char": "".join(chr(c) for c in item.cps),
            "sentences": [{"raw": item.caption, "tokens": tokenize(item.caption), "imgid": imgid, "sentid": imgid}],
            "sentids": [imgid],
        })
    dataset = {"dataset": "emoji", "images": images}
    out_dir.mkdir(parents=True, exist_ok=True)
    _write_text(out_dir / "dataset.json", json.dumps(dataset, ensure_ascii=False, separators=(",", ":")) + "\n")

    names_from = Counter()
    for caption, origin in sorted({(it.caption, it.name_origin) for it in kept}):
        names_from[origin] += 1
    summary = _summarize(images, available, found, skipped, image_size, unicode_version, has_emoji_package, names_from)
    _write_text(out_dir / "SOURCES.md", _sources_markdown(summary))
    summary["out_dir"] = str(out_dir)
    summary["dataset_json"] = str(out_dir / "dataset.json")
    summary["seconds"] = round(time.monotonic() - started, 1)
    return summary


def _run_jobs(jobs_list: list, jobs: int, progress: bool) -> list[str]:
    total = len(jobs_list)
    results: list[str] = []
    step = max(1, total // 10)

    def report(done: int) -> None:
        if progress and (done % step == 0 or done == total):
            print(f"  {done}/{total}", file=sys.stderr, flush=True)

    if jobs <= 1 or total < 200:
        for job in jobs_list:
            results.append(_render_job(job))
            report(len(results))
        return results
    # Items are sorted by emoji, so each chunk mixes slow (SVG) and fast (PNG, font) jobs.
    with ProcessPoolExecutor(max_workers=jobs) as pool:
        for result in pool.map(_render_job, jobs_list, chunksize=32):
            results.append(result)
            report(len(results))
    return results


def _write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _summarize(images, available, found, skipped, image_size, unicode_version, has_emoji_package, names_from) -> dict:
    per_source = {s: {split: 0 for split in SPLITS} for s in available}
    split_images = Counter()
    split_captions: dict[str, set] = {split: set() for split in SPLITS}
    vocab, train_vocab = set(), set()
    for image in images:
        sentence = image["sentences"][0]
        per_source[image["source"]][image["split"]] += 1
        split_images[image["split"]] += 1
        split_captions[image["split"]].add(sentence["raw"])
        vocab.update(sentence["tokens"])
        if image["split"] == "train":
            train_vocab.update(sentence["tokens"])
    for counts in per_source.values():
        counts["total"] = sum(counts[s] for s in SPLITS)
    versions = {}
    if found.google is not None:
        versions["google"] = f"{GOOGLE_PACKAGE} {_package_version(found.google)}"
    if found.openmoji is not None:
        versions["openmoji"] = f"{OPENMOJI_PACKAGE} {_package_version(found.openmoji)}"
    if found.noto_font is not None:
        versions["noto"] = f"{found.noto_font.name} ({found.noto_font.stat().st_size} bytes), size {NOTO_FONT_SIZE}"
    return {
        "images": len(images),
        "distinct_captions": sum(len(c) for c in split_captions.values()),
        "splits": {s: {"images": split_images[s], "emoji": len(split_captions[s])} for s in SPLITS},
        "per_source": per_source,
        "vocab_size": len(vocab),
        "train_vocab_size": len(train_vocab),
        "image_size": image_size,
        "sources": available,
        "versions": versions,
        "emoji_test": f"emoji-test.txt {unicode_version}" if unicode_version else None,
        "names_from": dict(sorted(names_from.items())),  # distinct captions per name source
        "emoji_package": has_emoji_package,
        "skipped": {s: dict(sorted(c.items())) for s, c in skipped.items() if c},
        "missing": dict(found.missing),
    }


def _sources_markdown(summary: dict) -> str:
    lines = [
        "# Emoji captioning dataset",
        "",
        "Emoji art captioned with Unicode CLDR short names (lowercased), built by `captioner data emoji`.",
        "`dataset.json` is in Karpathy split format; images are "
        f"{summary['image_size']}x{summary['image_size']} RGB PNGs (transparency composited onto white) "
        "at `images/<source>/<codepoints>.png` (`filepath` + `filename`, relative to this folder).",
        "",
        "## Sources and licences",
        "",
    ]
    for source in summary["sources"]:
        version = summary["versions"].get(source)
        lines.append(f"- **{source}**" + (f" ({version})" if version else "") + f": {LICENSES[source]}")
    origins = ", ".join(f"{n} from {origin}" for origin, n in summary["names_from"].items())
    lines.append(
        f"- Captions (CLDR short names, lowercased): {origins}"
        + (f" ({summary['emoji_test']}, Unicode License)" if summary["emoji_test"] else "")
        + ". Lookup order: emoji-test.txt, OpenMoji `annotation`, the `emoji` Python package (BSD)."
    )
    lines += [
        "- Not used: the Twemoji set (`emoji-datasource-twitter`), reserved for external held-out evaluation.",
        "",
        "## Splits",
        "",
        "Whole emoji are held out: test (~10% of distinct captions) and val (~5%) contain emoji never seen in "
        "train, chosen in a fixed hash order only when every word of their caption also occurs in a train "
        "caption (new combinations of seen parts). The same emoji from several sources is in one split.",
        "",
        "| source | train | val | test | total |",
        "|---|---:|---:|---:|---:|",
    ]
    for source, counts in summary["per_source"].items():
        lines.append(f"| {source} | {counts['train']} | {counts['val']} | {counts['test']} | {counts['total']} |")
    splits = summary["splits"]
    lines.append(
        f"| **images** | {splits['train']['images']} | {splits['val']['images']} | {splits['test']['images']} "
        f"| {summary['images']} |"
    )
    lines.append(
        f"| **distinct emoji** | {splits['train']['emoji']} | {splits['val']['emoji']} | {splits['test']['emoji']} "
        f"| {summary['distinct_captions']} |"
    )
    lines += ["", f"Vocabulary: {summary['vocab_size']} words ({summary['train_vocab_size']} in train captions).", ""]
    if summary["skipped"]:
        lines += ["Skipped entries:", ""]
        for source, reasons in summary["skipped"].items():
            lines.append(f"- {source}: " + ", ".join(f"{n} {why}" for why, n in reasons.items()))
        lines.append("")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------- CLI


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Flags of ``captioner data emoji``."""
    parser.add_argument("--out", required=True, help="output folder (dataset.json, images/, SOURCES.md)")
    parser.add_argument("--sources", default=",".join(SOURCES),
                        help=f"comma-separated emoji sets to use (default: {','.join(SOURCES)})")
    parser.add_argument("--google-dir", default=None,
                        help=f"untarred npm {GOOGLE_PACKAGE}@{GOOGLE_VERSION} (holds emoji.json and img/google/64); "
                             "default: the cache folder")
    parser.add_argument("--openmoji-dir", default=None,
                        help=f"untarred npm {OPENMOJI_PACKAGE}@{OPENMOJI_VERSION} (holds data/openmoji.json and "
                             "color/svg); default: the cache folder")
    parser.add_argument("--noto-font", default=None,
                        help="NotoColorEmoji.ttf (default: the Debian fonts-noto-color-emoji path)")
    parser.add_argument("--emoji-test", default=None,
                        help="Unicode emoji-test.txt (default: the Debian unicode-data path)")
    parser.add_argument("--cache-dir", default=None,
                        help="where the npm sources live / are fetched to "
                             "(default: $CAPTIONER_CACHE/emoji-sources or ~/.cache/captioner/emoji-sources)")
    parser.add_argument("--fetch", action="store_true",
                        help="download missing npm sources into the cache folder with `npm pack`")
    parser.add_argument("--image-size", type=int, default=DEFAULT_IMAGE_SIZE,
                        help=f"side of the square PNGs in pixels (default {DEFAULT_IMAGE_SIZE})")
    parser.add_argument("--test-fraction", type=float, default=0.1, help="share of distinct emoji held out for test")
    parser.add_argument("--val-fraction", type=float, default=0.05, help="share of distinct emoji held out for val")
    parser.add_argument("--jobs", type=int, default=None, help="rendering processes (default: CPU count, max 8)")
    parser.add_argument("--quiet", action="store_true", help="no progress output")
    return parser


def format_summary(summary: dict) -> str:
    lines = [f"wrote {summary['dataset_json']} ({summary['images']} images, {summary['distinct_captions']} "
             f"distinct emoji, vocabulary {summary['vocab_size']}) in {summary['seconds']} s"]
    lines.append(f"  {'source':<10}" + "".join(f"{s:>8}" for s in (*SPLITS, "total")))
    for source, counts in summary["per_source"].items():
        lines.append(f"  {source:<10}" + "".join(f"{counts[s]:>8}" for s in (*SPLITS, "total")))
    lines.append(f"  {'emoji':<10}" + "".join(f"{summary['splits'][s]['emoji']:>8}" for s in SPLITS)
                 + f"{summary['distinct_captions']:>8}")
    for source, message in summary["missing"].items():
        lines.append(f"  skipped source {message}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """Entry point for ``captioner data emoji``; returns the exit code."""
    try:
        summary = build_emoji_dataset(
            args.out,
            sources=args.sources,
            google_dir=args.google_dir,
            openmoji_dir=args.openmoji_dir,
            noto_font=args.noto_font,
            emoji_test=args.emoji_test,
            image_size=args.image_size,
            test_fraction=args.test_fraction,
            val_fraction=args.val_fraction,
            fetch=args.fetch,
            progress=not getattr(args, "quiet", False),
            jobs=getattr(args, "jobs", None),
            cache_dir=getattr(args, "cache_dir", None),
        )
    except (EmojiSourceError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(format_summary(summary))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="captioner data emoji", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
