"""Emoji names: code points, CLDR short names, captions and the slugs icon sets name their files by."""
from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

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
# Icon sets that name skin-tone variants "<base>-medium-dark" where CLDR says "<base>: medium-dark skin tone".
_TONE_SUFFIXES = tuple(sorted((t[: -len(" skin tone")].replace(" ", "-") for t in SKIN_TONES.values()),
                           key=len, reverse=True))


def parse_codepoints(text: str) -> tuple[int, ...]:
    """``"1F3C3-1F3FE-200D"`` or ``"1F3C3 1F3FE 200D"`` → code points."""
    return tuple(int(part, 16) for part in re.split(r"[\s\-_]+", text.strip()) if part)


def hex_string(cps: Iterable[int]) -> str:
    """Code points → ``"1F3C3-1F3FE"`` (the ``emoji`` field of dataset.json)."""
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


def slugify(name: str) -> str:
    """A CLDR name as Iconify's emoji sets spell their icon names: ``"flag: Côte d’Ivoire"`` →
    ``"flag-cote-divoire"``, ``"eight o’clock"`` → ``"eight-oclock"`` (accents and apostrophes dropped,
    every run of other characters one hyphen)."""
    ascii_name = unicodedata.normalize("NFKD", name.replace("'", "")).encode("ascii", "ignore").decode()
    return re.sub(r"[^a-z0-9]+", "-", ascii_name.lower()).strip("-")


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


@dataclass
class NameTable:
    """Emoji key → (fully-qualified code points, CLDR name); first source that knows an emoji wins.

    Every other name seen for an emoji (a later source's spelling) is kept too, only to recognise icon
    names: :meth:`slug_index`."""

    entries: dict = field(default_factory=dict)
    origin: dict = field(default_factory=dict)
    spellings: list = field(default_factory=list)  # (code points, name) of every name added

    def add(self, cps: tuple[int, ...], name: str, origin: str) -> None:
        key = emoji_key(cps)
        if not name:
            return
        self.spellings.append((tuple(cps), name))
        if key not in self.entries:
            self.entries[key] = (tuple(cps), name)
            self.origin[key] = origin

    def lookup(self, cps: tuple[int, ...]):
        return self.entries.get(emoji_key(cps))

    def caption_for(self, cps: tuple[int, ...], fallback: str | None = None):
        """``(fully-qualified code points, caption, where the name came from)``, the source's own
        ``fallback`` name when no table knows the emoji, else None."""
        hit = self.lookup(cps)
        if hit is not None:
            return hit[0], normalize_name(hit[1]), self.origin[emoji_key(cps)]
        if fallback:
            return tuple(cps), normalize_name(fallback), "source's own name"
        return None

    def slug_index(self) -> dict[str, tuple[int, ...]]:
        """Slug → emoji key for every known name. A slug two emoji share (``"keycap: #"`` and
        ``"keycap: *"`` are both ``keycap``) maps to nothing rather than to the wrong emoji. (The
        ``emoji`` package's shortcode aliases are left out: ``pouting_face`` is its alias of 🙎 "person
        pouting", while the icon sets' ``pouting-face`` is 😡, whose CLDR name it used to be.)"""
        index: dict[str, tuple[int, ...] | None] = {}
        for cps, name in self.spellings:
            slug, key = slugify(name), emoji_key(cps)
            index[slug] = None if slug in index and index[slug] != key else key
        return {slug: key for slug, key in index.items() if key is not None}


# CLDR's hair components as they end a slug ("man-dark-skin-tone-red-hair").
_HAIR_SLUGS = ("red-hair", "curly-hair", "white-hair", "blond-hair", "bald", "beard")


def _spellings(name: str):
    """An icon name, then the other spellings of it that icon sets use."""
    yield name
    if "blonde" in name:  # Fluent: "man-blonde-hair"; CLDR: "man: blond hair"
        yield name.replace("blonde", "blond")
    if name.startswith("flag-for-"):  # EmojiOne: "flag-for-france", Noto v1: "flag-for-flag-france"
        country = name[len("flag-for-"):].removeprefix("flag-")
        yield "flag-" + country
        # CLDR writes "&" in country names, which slugs drop: "flag: Trinidad & Tobago".
        if "-and-" in country:
            yield "flag-" + country.replace("-and-", "-")
        # EmojiOne files the flags that are not countries with them: "flag-for-white-flag" is "white flag".
        if country.endswith(("-flag", "-flags")):
            yield country


def _with_skin_tone(name: str):
    """Fluent's short skin-tone suffix in CLDR's order: ``artist-medium-dark`` →
    ``artist-medium-dark-skin-tone``, ``man-beard-dark`` → ``man-dark-skin-tone-beard``."""
    for tone in _TONE_SUFFIXES:
        if name.endswith("-" + tone):
            base = name[: -len(tone) - 1]
            yield f"{name}-skin-tone"
            for hair in _HAIR_SLUGS:
                if base.endswith("-" + hair):
                    yield f"{base[: -len(hair) - 1]}-{tone}-skin-tone-{hair}"
            return


_NUMBERED_RE = re.compile(r"(.+)-([0-9]+)")


def numbered_drawing(name: str) -> tuple[str, int] | None:
    """``"baby-2"`` → ``("baby", 2)``: sets that draw one emoji several times number the drawings."""
    m = _NUMBERED_RE.fullmatch(name)
    return (m.group(1), int(m.group(2))) if m else None


def map_icon_name(name: str, slugs: dict, *, numbered: bool = False,
                  country_flags: bool = False) -> tuple[tuple[int, ...], str] | None:
    """An icon's slug name → ``(emoji key, how)`` through :meth:`NameTable.slug_index`: the slug of a
    known name (also respelled: EmojiOne's ``flag-for-``, Fluent's ``blonde``), else with Fluent's short
    skin-tone suffix; None when nothing matches.

    For sets that name that way (each checked on a contact sheet): ``numbered``, the first of several
    numbered drawings is the emoji itself (Streamline's ``baby-1`` is "baby" in the default yellow; its
    ``baby-2`` and ``baby-3`` are skin tones it does not name, left to the caller); ``country_flags``, a
    country's name alone is its flag (Streamline's ``france``; its ``turkey`` is the flag, not 🦃)."""
    if country_flags and f"flag-{name}" in slugs:
        return slugs[f"flag-{name}"], "country name as its flag"
    for spelling in _spellings(name):
        if spelling in slugs:
            return slugs[spelling], "slug" if spelling == name else "respelled slug"
    for spelling in _spellings(name):
        for candidate in _with_skin_tone(spelling):
            if candidate in slugs:
                return slugs[candidate], "slug + skin-tone suffix"
    if numbered and (drawing := numbered_drawing(name)) and drawing[1] == 1 and drawing[0] in slugs:
        return slugs[drawing[0]], "slug of the first numbered drawing"
    return None


def compact(name: str) -> str:
    """A name without separators, as Firefox OS emoji spell theirs: ``"admission tickets"`` →
    ``"admissiontickets"``."""
    return slugify(name).replace("-", "")


# Blocks holding every single-code-point emoji (and the symbols around them, whose names may collide).
_NAMED_BLOCKS = ((0x00A0, 0x33FF), (0x1F000, 0x1FBFF))


def compact_index(table: NameTable) -> dict[str, tuple[int, ...]]:
    """Compact spelling (:func:`compact`) → emoji key, of every name in ``table`` and of the Unicode
    character name of every code point in the emoji blocks (``BLACK DIAMOND SUIT`` is ♦ "diamond suit").

    A spelling that two characters share maps to nothing, even when one of them is not an emoji:
    ``grinningfacewithsmilingeyes`` is CLDR's name of 😄 and Unicode's of 😁; ``house`` is 🏠 to CLDR
    and U+2302 ⌂ to Unicode. (Unicode names are Python's ``unicodedata``: emoji newer than its Unicode
    version have only their CLDR name here.)"""
    found: dict[str, tuple[int, ...] | None] = {}

    def add(spelling: str, key: tuple[int, ...]) -> None:
        found[spelling] = None if spelling in found and found[spelling] != key else key

    for cps, name in table.spellings:
        add(compact(name), emoji_key(cps))
    for first, last in _NAMED_BLOCKS:
        for c in range(first, last + 1):
            name = unicodedata.name(chr(c), "")
            if name:
                add(compact(name), (c,))
    return {spelling: key for spelling, key in found.items() if key is not None and key in table.entries}


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


def add_emoji_package_names(table: NameTable) -> bool:
    """Add the ``emoji`` package's names to ``table``; False when the package is not installed."""
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
