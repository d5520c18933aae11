"""Vocabularies: captions ↔ token ids, built from the training captions, saved as plain JSON.

Two kinds, created by name (:func:`create_vocabulary`), both with ids 0..3 = ``<pad> <start> <end> <unk>``
so decoders and decoding never need to know which one they use:

- ``word`` (:class:`Vocabulary`): one token per word seen at least ``min_count`` times;
- ``bpe`` / ``unigram`` (:class:`SubwordVocabulary`): pieces of words learned from the training
  captions with Hugging Face ``tokenizers``, saved as the library's own ``tokenizer.json`` (plain JSON)
  beside ``vocab.json``. Pieces that start a word carry ``▁`` (SentencePiece's convention).

Either way words come first from the word tokenizer of the caption's language
(:mod:`captioner.data.language`): a vocabulary records its languages and the tokenizer of each in
``vocab.json`` (``"languages": {"de": "unicode"}``; files written before languages existed are English
split with ``ptb``). With more than one language, every caption starts with its language's token,
``<start> <2de> w1 .. wn <end>`` (the multilingual NMT recipe, Johnson et al. 2017); the tokens sit
at ids 4, 5, ... in the order of ``languages``. One language needs no token, so a one-language
vocabulary encodes exactly as before.
"""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Iterable, Mapping, Sequence, Union

from ..errors import InvalidInputError
from .examples import Example
from .language import DEFAULT_LANGUAGE, char_segments, get_tokenizer, normalize_language, tokenizer_for, word_joiner

PAD, START, END, UNK = "<pad>", "<start>", "<end>", "<unk>"
SPECIAL_TOKENS = (PAD, START, END, UNK)
SUBWORD_FILE = "tokenizer.json"
WORD_START = "▁"  # U+2581, what starts a subword piece that begins a word
# A caption for building a vocabulary: its text (in the vocabulary's first language) or (text, language).
CaptionText = Union[str, tuple[str, str]]

# A tokenizer.json larger than this, or a vocabulary with more entries, is not one this package wrote.
MAX_SUBWORD_FILE_BYTES = 64 * 2**20
MAX_VOCAB_SIZE = 1_000_000


def language_token(language: str) -> str:
    """The token that starts captions in ``language``: ``<2de>``."""
    return f"<2{language}>"


def _marker_tokens(languages: Mapping[str, str]) -> list[str]:
    """The ids 0.. of a vocabulary of these languages: the special tokens, then a token per language
    when there are several."""
    tokens = [language_token(lang) for lang in languages] if len(languages) > 1 else []
    return [*SPECIAL_TOKENS, *tokens]


def _check_languages(languages: Mapping[str, str] | None) -> dict[str, str]:
    if not languages:
        return {DEFAULT_LANGUAGE: "ptb"}
    if not isinstance(languages, Mapping):
        raise ValueError(f"vocabulary languages must map a language to its tokenizer, got {languages!r}")
    checked = {}
    for language, tokenizer in languages.items():
        get_tokenizer(tokenizer)  # an unknown name raises, naming the known ones
        checked[normalize_language(language, "vocabulary language")] = tokenizer
    return checked


class Vocabulary:
    """Word ↔ id mapping; ids 0..3 are ``<pad> <start> <end> <unk>``, then one ``<2xx>`` token per
    language when there are several, then the words.

    ``languages``: language → the name of its word tokenizer, the first the default (the language of
    captions given without one); default ``{"en": "ptb"}``.
    """

    kind = "word"
    pad_id, start_id, end_id, unk_id = 0, 1, 2, 3

    def __init__(self, words: Iterable[str], languages: Mapping[str, str] | None = None):
        self.languages: dict[str, str] = _check_languages(languages)
        markers = _marker_tokens(self.languages)
        reserved = set(markers)
        self.itos: list[str] = markers + [w for w in words if w not in reserved]
        self.stoi: dict[str, int] = {w: i for i, w in enumerate(self.itos)}
        if len(self.stoi) != len(self.itos):
            raise ValueError("vocabulary words must be unique")
        self.language_ids: dict[str, int] = (
            {lang: self.stoi[language_token(lang)] for lang in self.languages} if len(self.languages) > 1 else {}
        )

    def __len__(self) -> int:
        return len(self.itos)

    def __contains__(self, word: str) -> bool:
        return word in self.stoi

    # --- languages ------------------------------------------------------------------------------
    @property
    def default_language(self) -> str:
        """The language of captions given without one (the first the vocabulary was built with)."""
        return next(iter(self.languages))

    def check_language(self, language: str | None) -> str:
        """``language`` spelled as the vocabulary knows it (``None``: the default language); a language
        it was not built with raises one line naming those it knows."""
        if language is None:
            return self.default_language
        code = normalize_language(language)
        if code not in self.languages:
            raise InvalidInputError(
                f"language {language!r} is not one this model was trained on; it knows "
                f"{', '.join(self.languages)}"
            )
        return code

    def language_token_id(self, language: str | None) -> int | None:
        """The id of the token that starts captions in ``language`` (``None``: the default language), or
        ``None`` when the vocabulary has one language and so no language tokens. Decoding forces it as
        the first token; an unknown language raises (:meth:`check_language`)."""
        return self.language_ids.get(self.check_language(language))

    def tokenizer_of(self, language: str | None = None) -> str:
        """The name of the word tokenizer of ``language`` (default: the default language)."""
        return self.languages[self.check_language(language)]

    def tokenize(self, caption: str, language: str | None = None) -> list[str]:
        """The words of ``caption`` as this vocabulary splits them (metrics score these words)."""
        return get_tokenizer(self.tokenizer_of(language))(caption)

    def _language_in(self, ids: Sequence[int], language: str | None) -> str:
        """The language of a caption's ids: its language token's, else ``language``, else the default."""
        by_id = {i: lang for lang, i in self.language_ids.items()}
        for i in ids:
            if int(i) in by_id:
                return by_id[int(i)]
        return self.check_language(language)

    def _content(self, ids: Iterable[int]) -> list[int]:
        """Ids up to the first ``<end>``, without markers, padding and language tokens."""
        out = []
        for i in ids:
            i = int(i)
            if i == self.end_id:
                break
            if i in (self.pad_id, self.start_id) or (self.language_ids and i in self.language_ids.values()):
                continue
            out.append(i)
        return out

    # --- building, encoding, decoding -----------------------------------------------------------
    @classmethod
    def build(cls, captions: Iterable[CaptionText], min_count: int = 4,
              languages: Mapping[str, str] | None = None) -> "Vocabulary":
        """Words seen at least ``min_count`` times, most frequent first (ties alphabetical).
        ``captions``: texts in the first of ``languages``, or (text, language) pairs."""
        probe = cls([], languages)
        counts = Counter(w for text, lang in _with_languages(captions) for w in probe.tokenize(text, lang))
        words = sorted((w for w, c in counts.items() if c >= min_count), key=lambda w: (-counts[w], w))
        return cls(words, probe.languages)

    def encode(self, caption: str, max_length: int | None = None, language: str | None = None) -> list[int]:
        """``<start> [<2xx>] t1 .. tn <end>`` ids; ``max_length`` counts the tokens, not the markers."""
        tokens = self._token_ids(caption, language)
        if max_length is not None:
            tokens = tokens[:max_length]
        first = self.language_token_id(language)
        return [self.start_id, *([first] if first is not None else []), *tokens, self.end_id]

    def _token_ids(self, caption: str, language: str | None) -> list[int]:
        return [self.stoi.get(w, self.unk_id) for w in self.tokenize(caption, language)]

    def words(self, ids: Iterable[int], language: str | None = None) -> list[str]:
        """The words of a caption's ids (up to ``<end>``, markers left out) — what metrics and rewards
        score."""
        return [self.itos[i] for i in self._content(ids)]

    def decode(self, ids: Iterable[int], language: str | None = None) -> str:
        """The caption's text: its words up to the first ``<end>``, markers and padding left out, joined
        as the language writes them (no spaces between characters of Chinese, Japanese, Thai). The
        language is the ids' language token's, else ``language``, else the default."""
        ids = list(ids)
        joiner = word_joiner(self.languages[self._language_in(ids, language)])
        return joiner.join(self.words(ids, language))

    def unknown_words(self, captions: Iterable[CaptionText]) -> tuple[Counter, int]:
        """The words of ``captions`` (texts in the default language, or (text, language) pairs) this
        vocabulary encodes as ``<unk>``, counted, and the number of words in all."""
        unknown, total = Counter(), 0
        for text, language in _with_languages(captions):
            for word in self.tokenize(text, language):
                total += 1
                if self._is_unknown(word, language):
                    unknown[word] += 1
        return unknown, total

    def _is_unknown(self, word: str, language: str | None) -> bool:
        return word not in self.stoi

    @property
    def word_starts(self) -> list[bool]:
        """Per id, whether the token starts a new word (every token of a word vocabulary does): what
        decoding's no-repeat rule counts words with."""
        return [True] * len(self.itos)

    # --- saving ---------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {"kind": self.kind, "languages": self.languages, "itos": self.itos}

    @classmethod
    def from_dict(cls, data: dict, folder: Path | None = None) -> "Vocabulary":
        """A vocabulary from its ``vocab.json`` content (``folder``: where a subword model's file is)."""
        if not isinstance(data, dict):
            raise ValueError(f"a vocabulary is a JSON object, got {type(data).__name__}")
        kind = data.get("kind", "word")
        if kind in SUBWORD_KINDS:
            return SubwordVocabulary.from_dict(data, folder)
        if kind != "word":
            raise ValueError(f"unknown vocabulary kind {kind!r} (expected word, {', '.join(SUBWORD_KINDS)})")
        itos = data["itos"]
        if not isinstance(itos, list) or not all(isinstance(w, str) for w in itos):
            raise ValueError("vocabulary 'itos' must be a list of strings")
        languages = _check_languages(data.get("languages"))
        markers = _marker_tokens(languages)
        if list(itos[: len(markers)]) != markers:
            raise ValueError(f"vocabulary must start with {markers}")
        return cls(itos[len(markers):], languages)

    def save(self, path: str | Path) -> None:
        """Write ``vocab.json`` at ``path`` (and a subword vocabulary's ``tokenizer.json`` beside it)."""
        from ..io import atomic_write_text

        atomic_write_text(path, json.dumps(self.to_dict(), ensure_ascii=False, indent=0))

    @classmethod
    def load(cls, path: str | Path) -> "Vocabulary":
        """The vocabulary saved at ``path`` (any kind); plain JSON only, nothing executable."""
        path = Path(path)
        return cls.from_dict(json.loads(path.read_text(encoding="utf-8")), path.parent)


def _with_languages(captions: Iterable[CaptionText]):
    """(text, language) pairs: a plain text is in the vocabulary's default language."""
    for caption in captions:
        yield (caption, None) if isinstance(caption, str) else caption


# --------------------------------------------------------------------------------------------- subwords
SUBWORD_KINDS = ("bpe", "unigram")


class SubwordVocabulary(Vocabulary):
    """Subword pieces from a BPE or unigram model (Hugging Face ``tokenizers``) over the words of each
    language: the same ids, markers and methods as a word :class:`Vocabulary`, ``itos`` the pieces.

    Words are made by the language's word tokenizer first, so pieces never cross a word boundary and
    punctuation is dropped as for words. A language written without spaces gives the model its
    runs of characters between punctuation, so pieces may span several characters; its "words" for
    :attr:`word_starts` are those runs.
    """

    def __init__(self, model, kind: str, languages: Mapping[str, str] | None = None):
        if kind not in SUBWORD_KINDS:
            raise ValueError(f"unknown subword vocabulary kind {kind!r}; choose from {', '.join(SUBWORD_KINDS)}")
        size = model.get_vocab_size()
        if not 4 <= size <= MAX_VOCAB_SIZE:
            raise ValueError(f"a subword model of {size} pieces is not one captioner writes")
        pieces = [model.id_to_token(i) for i in range(size)]
        languages = _check_languages(languages)
        markers = _marker_tokens(languages)
        if pieces[: len(markers)] != markers:
            raise ValueError(f"the subword model's first pieces are {pieces[: len(markers)]}, not {markers}")
        super().__init__(pieces[len(markers):], languages)
        if self.itos != pieces:
            raise ValueError("the subword model's pieces are not unique")
        self.model, self.kind = model, kind
        self._word_starts = [i < len(markers) or p.startswith(WORD_START) for i, p in enumerate(pieces)]

    @classmethod
    def build(cls, captions: Iterable[CaptionText], vocab_size: int = 4000, kind: str = "bpe",
              languages: Mapping[str, str] | None = None) -> "SubwordVocabulary":
        """Train a ``kind`` model of at most ``vocab_size`` pieces (markers included) on ``captions``
        (texts in the first of ``languages``, or (text, language) pairs)."""
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

        probe = Vocabulary([], languages)
        markers = _marker_tokens(probe.languages)
        if vocab_size < len(markers) + 1:
            raise InvalidInputError(f"vocab_size {vocab_size} leaves no room for pieces after the {len(markers)} "
                                    "marker tokens; choose a larger data.vocab_size")
        if kind == "bpe":
            model = Tokenizer(models.BPE(unk_token=UNK))
            trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=markers, show_progress=False)
        elif kind == "unigram":
            model = Tokenizer(models.Unigram())
            trainer = trainers.UnigramTrainer(vocab_size=vocab_size, special_tokens=markers, unk_token=UNK,
                                              show_progress=False)
        else:
            raise InvalidInputError(f"unknown subword vocabulary {kind!r}; choose one of {', '.join(SUBWORD_KINDS)}")
        model.pre_tokenizer = pre_tokenizers.Metaspace(replacement=WORD_START, prepend_scheme="always")
        model.decoder = decoders.Metaspace(replacement=WORD_START, prepend_scheme="always")
        texts = [_spaced_words(probe, text, lang) for text, lang in _with_languages(captions)]
        model.train_from_iterator(texts, trainer, length=len(texts))
        return cls(model, kind, probe.languages)

    def _token_ids(self, caption: str, language: str | None) -> list[int]:
        return self.model.encode(_spaced_words(self, caption, language), add_special_tokens=False).ids

    def _is_unknown(self, word: str, language: str | None) -> bool:
        return self.unk_id in self._token_ids(word, language)

    def pieces_to_words(self, ids: Iterable[int]) -> list[str]:
        """The caption's words (pieces joined at the pieces that start a word), markers left out."""
        words: list[str] = []
        for i in self._content(ids):
            piece = self.itos[i]
            if self._word_starts[i] or not words:
                words.append(piece[len(WORD_START):] if piece.startswith(WORD_START) else piece)
            else:
                words[-1] += piece
        return [w for w in words if w]

    def words(self, ids: Iterable[int], language: str | None = None) -> list[str]:
        ids = list(ids)
        return self.tokenize(self.decode(ids, language), self._language_in(ids, language))

    def decode(self, ids: Iterable[int], language: str | None = None) -> str:
        ids = list(ids)
        joiner = word_joiner(self.languages[self._language_in(ids, language)])
        return joiner.join(self.pieces_to_words(ids))

    @property
    def word_starts(self) -> list[bool]:
        return list(self._word_starts)

    def to_dict(self) -> dict:
        return {**super().to_dict(), "subwords": SUBWORD_FILE}

    @classmethod
    def from_dict(cls, data: dict, folder: Path | None = None) -> "SubwordVocabulary":
        from tokenizers import Tokenizer

        name = data.get("subwords")
        if name != SUBWORD_FILE:  # the only file it may name: nothing outside the model's folder is read
            raise ValueError(f"a subword vocabulary's model is {SUBWORD_FILE!r} beside vocab.json, not {name!r}")
        if folder is None:
            raise ValueError(f"a subword vocabulary needs the folder holding its {SUBWORD_FILE}")
        path = Path(folder) / SUBWORD_FILE
        if not path.is_file():
            raise ValueError(f"{path} is missing (a {data.get('kind')} vocabulary keeps its pieces there)")
        if path.stat().st_size > MAX_SUBWORD_FILE_BYTES:
            raise ValueError(f"{path} is larger than {MAX_SUBWORD_FILE_BYTES >> 20} MiB: not a captioner vocabulary")
        try:
            model = Tokenizer.from_str(path.read_text(encoding="utf-8"))
        except Exception as e:  # tokenizers raises a bare Exception for a file it cannot parse
            raise ValueError(f"{path} is not a readable tokenizers model ({e})") from None
        vocab = cls(model, data.get("kind"), data.get("languages"))
        if data.get("itos") != vocab.itos:
            raise ValueError(f"{path} does not hold the pieces vocab.json lists beside it")
        return vocab

    def save(self, path: str | Path) -> None:
        from ..io import atomic_write_text

        # The pieces first: a vocab.json naming a tokenizer.json is only written once that exists.
        atomic_write_text(Path(path).with_name(SUBWORD_FILE), self.model.to_str(pretty=False))
        super().save(path)


def _spaced_words(vocab: Vocabulary, text: str, language: str | None) -> str:
    """What the subword model reads: the caption's words with one space between them; for a language
    written without spaces, its runs of characters between spaces and punctuation."""
    tokenizer = vocab.tokenizer_of(language)
    if word_joiner(tokenizer) == "":
        return " ".join("".join(run) for run in char_segments(text))
    return " ".join(get_tokenizer(tokenizer)(text))


VOCABULARY_KINDS = ("word", *SUBWORD_KINDS)


def create_vocabulary(kind: str, captions: Iterable[CaptionText], *, languages: Mapping[str, str] | None = None,
                      min_count: int = 4, vocab_size: int = 4000) -> Vocabulary:
    """Build a vocabulary of ``kind`` (``word``, ``bpe`` or ``unigram``) from the training captions (texts
    in the first of ``languages``, or (text, language) pairs): ``min_count`` applies to words,
    ``vocab_size`` to subwords."""
    if kind == "word":
        return Vocabulary.build(captions, min_count, languages)
    if kind in SUBWORD_KINDS:
        return SubwordVocabulary.build(captions, vocab_size, kind, languages)
    raise InvalidInputError(f"unknown vocabulary {kind!r}; choose one of {', '.join(VOCABULARY_KINDS)}")


def vocabulary_for(examples: Iterable[Example], *, kind: str = "word", language: str = DEFAULT_LANGUAGE,
                   tokenizer: str | None = None, min_count: int = 4, vocab_size: int = 4000) -> Vocabulary:
    """The vocabulary of ``kind`` for these training examples, over the languages of their captions
    (``language`` where an example names none): ``language`` first when present, then the others by
    caption count. Each language is split by ``tokenizer``, or by its default
    (:func:`captioner.data.language.tokenizer_for`)."""
    captions = [(caption, lang) for example in examples
                for caption, lang in zip(example.captions, example.caption_languages(language))]
    counts = Counter(lang for _, lang in captions)
    order = sorted(counts, key=lambda lang: (lang != language, -counts[lang], lang))
    languages = {lang: tokenizer or tokenizer_for(lang) for lang in order}
    return create_vocabulary(kind, captions, languages=languages, min_count=min_count, vocab_size=vocab_size)
