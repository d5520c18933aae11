"""Emoji-art captioning dataset: emoji images captioned with their Unicode CLDR short names.

``captioner data emoji --out DIR`` (or :func:`build_emoji_dataset`) builds ``DIR/dataset.json`` (Karpathy
split format, each image with its ``artist``), ``DIR/images/<artist>/<codepoints>.png``, ``DIR/SOURCES.md``
(artists, licences, split counts) and ``DIR/unmapped.json`` from these emoji art sets, one artist each:

- ``google``: PNGs from npm ``emoji-datasource-google@16.0.0``, Apache-2.0;
- ``noto``: Noto Color Emoji (Debian ``fonts-noto-color-emoji``) rendered with Pillow, the emoji list and
  names from ``emoji-test.txt`` (Debian ``unicode-data``), font OFL-1.1 (the same art as ``google``);
- ``openmoji``: colour SVGs from npm ``openmoji@17.0.0`` rendered with ``cairosvg``, CC BY-SA 4.0;
- ``fluent-color``, ``fluent-flat``, ``fluent-high-contrast`` (MIT), ``emojione-2`` (CC BY 4.0),
  ``emojione-1`` (CC BY-SA 4.0), ``noto-v1`` (Apache-2.0), ``emojione-monotone`` (CC BY 4.0),
  ``streamline`` (CC BY 4.0): Iconify JSON sets from npm ``@iconify-json/*`` whose icon names are slugs of
  CLDR names, mapped back through the sets' ``chars.json`` or the slugs of the known names;
- ``fxemoji`` (Firefox OS emoji, Apache-2.0): an Iconify set named by CLDR or Unicode names without
  separators (``admissiontickets``), mapped only where that spelling names exactly one character.

  Icons that do not map are counted and listed; each set's quirks (numbered drawings, flags named by
  country, names that match another emoji than drawn) were checked on contact sheets
  (:class:`~.sources.IconifySet`). Sibling styles of one design are listed in
  :data:`~.sources.ARTIST_FAMILIES`, to be held out together.

Twemoji (every packaging), Apple's and Facebook's art are refused: they are reserved for external
held-out evaluations. Blobmoji is not buildable offline (``@svgmoji/blob`` ships no images).

Captions are CLDR short names, lowercased ("woman running: medium-dark skin tone"). Names come from, in
order: ``emoji-test.txt``, OpenMoji's ``annotation`` field, the ``emoji`` package. The same emoji from
several sources gives several images with the same caption, always in the same split.

``languages=["en", "de", "ja", ...]`` (``--languages``) gives every image a caption per language, tagged with
its ``language``: English as above, the others Unicode CLDR's short names in that language (npm
``cldr-annotations-full`` and ``cldr-annotations-derived-full``, :mod:`.cldr`); emoji a language does not
name are counted and listed in ``DIR/unnamed.json``.

Splits are deterministic and compositional: test (~10% of distinct captions) and val (~5%) hold whole
emoji never seen in training, picked (in a fixed hash order) only when every word of their caption still
occurs in a training caption, so the held-out emoji are new combinations of seen parts. Held-out artists
(``holdout_artists``) go, every image, to a ``test-artist`` split.

Modules: :mod:`.names` (code points, CLDR names, slugs), :mod:`.sources` (the art sets, fetching,
reading), :mod:`.cldr` (names in other languages), :mod:`.rendering`, :mod:`.splits`, :mod:`.build`.
"""
from .build import DEFAULT_IMAGE_SIZE, UNNAMED_FILE, build_emoji_dataset, format_summary
from .cldr import CLDR_PACKAGES, CLDR_VERSION, cldr_names, locale_chain, resolve_cldr
from .names import NameTable, emoji_key, hex_string, map_icon_name, normalize_name, parse_codepoints, slugify, tokenize
from .sources import (
    ARTIST_FAMILIES, ICONIFY_SETS, NOTO_FONT_CANDIDATES, SOURCES, UNAVAILABLE, EmojiSourceError, fetch_npm_source, resolve_sources,
)
from .splits import ARTIST_SPLIT, SPLITS, assign_splits, split_images

__all__ = [
    "ARTIST_FAMILIES", "CLDR_PACKAGES", "CLDR_VERSION", "UNNAMED_FILE", "cldr_names", "locale_chain", "resolve_cldr",
    "ARTIST_SPLIT", "DEFAULT_IMAGE_SIZE", "ICONIFY_SETS", "NOTO_FONT_CANDIDATES", "SOURCES", "SPLITS", "UNAVAILABLE",
    "EmojiSourceError", "NameTable", "assign_splits", "build_emoji_dataset", "emoji_key", "fetch_npm_source", "map_icon_name",
    "format_summary", "hex_string", "normalize_name", "parse_codepoints", "resolve_sources", "slugify",
    "split_images", "tokenize",
]
