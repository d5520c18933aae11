"""Captions in many languages: language codes, and the word tokenizer each language is split with.

Word tokenizers are registered by name; each turns one caption into the words that vocabularies
count and metrics score (lower case, punctuation dropped):

- ``ptb``: coco-caption's PTB tokenizer (:func:`captioner.data.tokenizer.ptb_tokenize`), English only —
  the default for English, so English scores stay equal to coco-caption's;
- ``unicode``: words of any space-delimited script — runs of letters, combining marks and digits
  (Devanagari vowel signs and viramas, Arabic harakat stay inside their word), with ZWJ/ZWNJ and
  inner apostrophes and hyphens; every symbol (an emoji with its modifiers, a currency sign) is a
  word of its own; punctuation and spaces are dropped;
- ``chars``: one word per user-perceived character (Unicode extended grapheme cluster), for scripts
  written without spaces (Chinese, Japanese, Thai, Lao, Khmer, Burmese); punctuation and spaces
  dropped. Characters rather than a word segmenter: one rule for every such script, no dictionary
  to ship or keep in step, and the usual unit of Chinese and Japanese caption metrics; a subword
  vocabulary (``data.vocabulary: bpe``) learns longer pieces on top of them.

``unicode`` and ``chars`` apply NFC first and lower-case with ``str.lower`` — not ``casefold``,
which would rewrite the words the model learns to write ("Fußball" → "fussball"). Grapheme clusters
and Unicode properties come from the ``regex`` package (Python's ``re`` knows neither).

:func:`tokenizer_for` picks a language's tokenizer from :data:`DEFAULT_TOKENIZERS` (``unicode`` for
any language not listed). Language codes are BCP 47 tags as CLDR spells them: ``en``, ``pt-PT``,
``zh-Hant``; :func:`normalize_language` checks one and spells it so.
"""
from __future__ import annotations

import re
import unicodedata
from functools import lru_cache
from typing import Callable

from ..errors import InvalidInputError, UnknownNameError
from .tokenizer import ptb_tokenize

#: The language of captions whose dataset does not say (every dataset before languages existed).
DEFAULT_LANGUAGE = "en"

#: Word tokenizer of each language that does not use ``unicode``, by primary language subtag.
DEFAULT_TOKENIZERS = {
    "en": "ptb",
    "zh": "chars", "yue": "chars", "ja": "chars",  # Han, kana
    "th": "chars", "lo": "chars", "km": "chars", "my": "chars",  # Thai, Lao, Khmer, Burmese
}

_TOKENIZERS: dict[str, Callable[[str], list[str]]] = {}
# Tokenizers whose words are written without a space between them (decoding joins them with "").
_UNSPACED: set[str] = set()


def register_tokenizer(name: str, unspaced: bool = False):
    """Decorator: ``get_tokenizer(name)`` returns this function (caption → words). ``unspaced``:
    its words are written without spaces between them. A duplicate name raises."""

    def register(fn):
        if name in _TOKENIZERS:
            raise ValueError(f"tokenizer {name!r} is already registered")
        _TOKENIZERS[name] = fn
        if unspaced:
            _UNSPACED.add(name)
        return fn

    return register


def list_tokenizers() -> list[str]:
    return sorted(_TOKENIZERS)


def get_tokenizer(name: str) -> Callable[[str], list[str]]:
    """The word tokenizer registered as ``name``."""
    if name not in _TOKENIZERS:
        raise UnknownNameError(f"unknown tokenizer {name!r}; choose one of {', '.join(list_tokenizers())}")
    return _TOKENIZERS[name]


def word_joiner(tokenizer: str) -> str:
    """What goes between two words of a caption split by ``tokenizer``: ``""`` for characters."""
    get_tokenizer(tokenizer)
    return "" if tokenizer in _UNSPACED else " "


_LANGUAGE_RE = re.compile(r"[A-Za-z]{2,3}(?:[-_][A-Za-z0-9]{2,8})*")


def normalize_language(code: str, where: str = "language") -> str:
    """A language tag spelled as CLDR does (``zh_hant`` → ``zh-Hant``, ``PT-pt`` → ``pt-PT``);
    anything else raises, naming ``where`` it came from."""
    if not isinstance(code, str) or not _LANGUAGE_RE.fullmatch(code.strip()):
        raise InvalidInputError(f"{where}: {code!r} is not a language code (expected e.g. en, de, ja, zh-Hant, pt-PT)")
    primary, *rest = re.split("[-_]", code.strip())
    parts = [primary.lower()]
    for part in rest:
        if len(part) == 4 and part.isalpha():
            parts.append(part.title())  # script
        elif len(part) in (2, 3) and (part.isalpha() or part.isdigit()):
            parts.append(part.upper())  # region
        else:
            parts.append(part.lower())  # variant
    return "-".join(parts)


def primary_language(code: str) -> str:
    """``zh-Hant`` → ``zh``."""
    return code.split("-")[0].lower()


def tokenizer_for(language: str) -> str:
    """The default word tokenizer of ``language`` (:data:`DEFAULT_TOKENIZERS`, else ``unicode``)."""
    return DEFAULT_TOKENIZERS.get(primary_language(language), "unicode")


# --------------------------------------------------------------------------------------------- tokenizers


register_tokenizer("ptb")(ptb_tokenize)


def _regex():
    import regex  # the only Unicode-property / grapheme-cluster regular expressions for Python

    return regex


@lru_cache(maxsize=1)
def _unicode_word_re():
    rx = _regex()
    core = r"[\p{L}\p{M}\p{N}\u200c\u200d]"
    # A word: letters/marks/digits, joined by one inner apostrophe or hyphen ("o'clock", "mittel-dunkel");
    # else one grapheme cluster, kept if it is a symbol (an emoji with its skin tone or ZWJ parts).
    return rx.compile(rf"[\p{{L}}\p{{M}}\p{{N}}]{core}*(?:['’\-‐‑]{core}+)*|\X")


def _is_kept_cluster(cluster: str) -> bool:
    """A grapheme cluster that is not a space, punctuation or a control/format character."""
    category = unicodedata.category(cluster[0])
    return category[0] not in "PZC"


@lru_cache(maxsize=1 << 16)
def _unicode_words_cached(text: str) -> tuple[str, ...]:
    text = unicodedata.normalize("NFC", text).lower()
    return tuple(t for t in _unicode_word_re().findall(text) if _is_kept_cluster(t))


@register_tokenizer("unicode")
def unicode_tokenize(text: str) -> list[str]:
    """Words of a caption in a space-delimited script (see the module's docstring)."""
    return list(_unicode_words_cached(text))



@lru_cache(maxsize=1 << 16)
def _segments_cached(text: str) -> tuple[tuple[str, ...], ...]:
    text = unicodedata.normalize("NFC", text).lower()
    segments, current = [], []
    for cluster in _regex().findall(r"\X", text):
        if _is_kept_cluster(cluster):
            current.append(cluster)
        elif current:
            segments.append(tuple(current))
            current = []
    if current:
        segments.append(tuple(current))
    return tuple(segments)


def char_segments(text: str) -> list[list[str]]:
    """The ``chars`` tokenizer's characters, grouped into the runs that spaces and punctuation
    separate (what a subword model may merge across)."""
    return [list(s) for s in _segments_cached(text)]


@register_tokenizer("chars", unspaced=True)
def chars_tokenize(text: str) -> list[str]:
    """One word per grapheme cluster, spaces and punctuation dropped (see the module's docstring)."""
    return [c for segment in _segments_cached(text) for c in segment]
