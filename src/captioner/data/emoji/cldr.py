"""Emoji names in other languages: the ``tts`` short names of Unicode CLDR's annotations.

Two npm packages (Unicode License v3), fetched with ``npm pack`` like the art sets:

- ``cldr-annotations-full``: ``annotations/<locale>/annotations.json``, the base emoji (1,966 a locale);
- ``cldr-annotations-derived-full``: ``annotationsDerived/<locale>/annotations.json``, the names CLDR
  composes (skin tones, ZWJ sequences, flags, keycaps: 2,376 a locale).

Keys are emoji strings, compared here without U+FE0F (:func:`~.names.emoji_key`). A regional locale
(``de-CH``, ``pt-PT``) holds only what differs from its language, so a locale's names are its own over
those of the locales it truncates to (``de-CH`` → ``de``), never across a script (``zh-Hant`` stops
there: ``zh`` is written in other characters). English captions stay those of ``emoji-test.txt``
(CLDR's own English names, one flag spelled differently), so an English build is unchanged.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

from .names import emoji_key
from .sources import EmojiSourceError, find_package_dir, fetch_npm_source, npm_command

CLDR_VERSION = "48.2.0"
# folder inside the package → npm package name
CLDR_PACKAGES = {"annotations": "cldr-annotations-full", "annotationsDerived": "cldr-annotations-derived-full"}
CLDR_LICENCE = "Unicode License v3 (https://www.unicode.org/license.txt)"
MAX_ANNOTATIONS_BYTES = 16 * 2**20  # a locale's file is ~0.5 MB; anything far larger is not CLDR's


def resolve_cldr(cldr_dir=None, cache_dir: Path | None = None, fetch: bool = False,
                 log: Callable[[str], None] = print) -> dict[str, Path]:
    """The folder holding ``annotations/`` and the one holding ``annotationsDerived/`` (untarred npm
    packages): in ``cldr_dir`` (both packages untarred there), else in the cache folder, fetched there
    when ``fetch``. Missing ones raise, with the command that installs them."""
    folders, missing = {}, []
    for top, package in CLDR_PACKAGES.items():
        if cldr_dir is not None:
            base = Path(cldr_dir).expanduser()
        else:
            base = Path(cache_dir) / f"{package}-{CLDR_VERSION}"
        folder = find_package_dir(base, top)
        if folder is None and fetch and cldr_dir is None:
            fetch_npm_source(package, CLDR_VERSION, base, log)
            folder = find_package_dir(base, top)
        if folder is None:
            missing.append(f"{package}@{CLDR_VERSION} (no {top}/ in {base}): " + (
                "untar it there" if cldr_dir is not None else
                f"`captioner data emoji --fetch` or {npm_command(package, CLDR_VERSION, base)}"))
        else:
            folders[top] = folder
    if missing:
        raise EmojiSourceError("emoji names in other languages need Unicode CLDR's annotations: "
                               + "; ".join(missing))
    return folders


def locale_chain(locale: str) -> list[str]:
    """``locale`` and the locales it inherits names from, nearest first: ``de-CH`` → ``[de-CH, de]``;
    a script subtag ends the chain (``zh-Hant-HK`` → ``[zh-Hant-HK, zh-Hant]``)."""
    chain = [locale]
    parts = locale.split("-")
    while len(parts) > 1 and not (len(parts[-1]) == 4 and parts[-1].isalpha()):
        parts = parts[:-1]
        chain.append("-".join(parts))
    return chain


def available_locales(folders: dict[str, Path]) -> list[str]:
    return sorted(p.name for p in (folders["annotations"] / "annotations").iterdir() if p.is_dir())


def _read_annotations(path: Path, top: str) -> dict:
    if path.stat().st_size > MAX_ANNOTATIONS_BYTES:
        raise EmojiSourceError(f"{path} is larger than {MAX_ANNOTATIONS_BYTES >> 20} MiB: not a CLDR annotations file")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))[top]["annotations"]
    except (ValueError, KeyError, TypeError) as e:
        raise EmojiSourceError(f"{path}: not a CLDR annotations file ({type(e).__name__}: {e})") from None
    if not isinstance(data, dict):
        raise EmojiSourceError(f"{path}: {top}.annotations is not an object")
    return data


def cldr_names(folders: dict[str, Path], locale: str) -> dict[tuple[int, ...], str]:
    """Emoji key → CLDR short name (``tts``) in ``locale``, base and derived annotations, with the
    names of the locales it inherits from (:func:`locale_chain`) where it has none of its own."""
    chain = [loc for loc in locale_chain(locale) if (folders["annotations"] / "annotations" / loc).is_dir()]
    if not chain:
        raise EmojiSourceError(f"CLDR {CLDR_VERSION} has no emoji names for {locale!r}; it has "
                               f"{', '.join(available_locales(folders))}")
    names: dict[tuple[int, ...], str] = {}
    for loc in reversed(chain):  # the farthest first, so nearer locales overwrite
        for top, folder in folders.items():
            path = folder / top / loc / "annotations.json"
            if not path.is_file():
                continue
            for text, entry in _read_annotations(path, top).items():
                tts = entry.get("tts") if isinstance(entry, dict) else None
                name = tts[0] if isinstance(tts, list) and tts and isinstance(tts[0], str) else ""
                if isinstance(text, str) and name.strip():
                    names[emoji_key(ord(c) for c in text)] = name
    return names
