"""What captioning returns — a :class:`Caption` per image with its n-best alternatives,
serialised to JSON values only — and :class:`CaptionModel`, what returns it. Torch-free, so
the torch model (:class:`captioner.model.Captioner`) and the exported one
(:class:`captioner.exported.OnnxCaptioner`) build the same objects with the same code."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Protocol, Sequence, Union, runtime_checkable

from array_api_compat import array_namespace

from .data.language import normalize_language, tokenizer_for
from .decoding import DecodeOptions, Features, Hypothesis, host_array
from .errors import InvalidInputError


def _json_score(score: float) -> Optional[float]:
    # JSON has no infinities or NaN: an impossible caption's score (-inf) becomes null.
    return float(score) if math.isfinite(score) else None


@dataclass
class Alternative:
    """One of the n-best captions of an image and its score."""

    text: str
    score: float

    def to_dict(self) -> dict:
        return {"caption": self.text, "score": _json_score(self.score)}


@dataclass
class Caption:
    """A caption for one image: its text, score (length-penalised log-probability), the
    n-best ``alternatives`` (the best included, first), for attention decoders the per-word
    attention weights (words × regions) over a ``grid_shape`` grid, and the ``confidence`` in
    [0, 1] (``None`` for a model without ``confidence.safetensors``; see
    :mod:`captioner.confidence`) with ``low_confidence`` set below the model's threshold."""

    text: str
    score: float
    alternatives: list[Alternative] = field(default_factory=list)
    attention: Any = None  # (words, regions) weights, a torch tensor or numpy array
    grid_shape: Optional[tuple[int, int]] = None
    words: list[str] = field(default_factory=list)
    confidence: Optional[float] = None
    low_confidence: Optional[bool] = None

    @classmethod
    def from_hypotheses(cls, hypotheses, vocab, language: Optional[str] = None, **extra) -> "Caption":
        """The caption of one image's n-best ``hypotheses`` (best first; anything with
        ``tokens`` and ``score``), text from ``vocab`` in ``language`` (how its words join);
        ``extra`` fills the other fields."""
        best = hypotheses[0]
        words, attention = word_attention(vocab, list(best.tokens), extra.pop("attention", None), language)
        return cls(
            text=vocab.decode(best.tokens, language),
            score=best.score,
            alternatives=[Alternative(vocab.decode(h.tokens, language), h.score) for h in hypotheses],
            words=words,
            attention=attention,
            **extra,
        )

    def to_dict(self, attention: bool = False, digits: int = 4) -> dict:
        """``{"caption", "score", "confidence", "low_confidence", "alternatives"}``, JSON values
        only (a -inf or NaN score is ``None``, so are both confidence fields for a model without
        confidence statistics); ``attention=True`` adds ``{"words", "grid", "weights"}`` (weights
        rounded to ``digits``) when the caption has attention weights."""
        result = {
            "caption": self.text,
            "score": _json_score(self.score),
            "confidence": None if self.confidence is None else round(self.confidence, digits),
            "low_confidence": self.low_confidence,
            "alternatives": [a.to_dict() for a in self.alternatives],
        }
        if attention and self.attention is not None:
            result["attention"] = {
                "words": list(self.words),
                "grid": list(self.grid_shape) if self.grid_shape else None,
                "weights": [[round(float(w), digits) for w in row] for row in self.attention.tolist()],
            }
        return result


def word_attention(vocab, tokens: list[int], attention, language: Optional[str] = None) -> tuple[list[str], Any]:
    """A caption's words and, when given (tokens × regions), each word's attention: the mean over
    its pieces for a subword vocabulary (pieces are joined into the words a reader sees, the
    ``▁`` marker gone), the token's own row for a word vocabulary."""
    starts = vocab.word_starts
    groups: list[list[int]] = []
    for position, token in enumerate(tokens):
        if starts[token] or not groups:
            groups.append([position])
        else:
            groups[-1].append(position)
    if len(groups) == len(tokens):  # one token a word: the tokens as they are (markers a model writes too)
        return [vocab.itos[t] for t in tokens], attention
    words = [vocab.decode([tokens[p] for p in group], language) for group in groups]
    if attention is None or len(attention) < len(tokens):
        return words, attention
    xp = array_namespace(attention)
    return words, xp.stack([xp.mean(attention[g[0] : g[-1] + 1], axis=0) for g in groups])


def mean_word_probability(token_log_probs: Sequence[float], words: int) -> float:
    """Mean probability of a caption's ``words`` first chosen tokens (its words, not ``<end>``)."""
    chosen = token_log_probs[: max(words, 1)]  # an empty caption: its <end> alone
    if not chosen:
        return 0.0
    return sum(math.exp(lp) for lp in chosen if lp > -math.inf) / len(chosen)


def captions_from_results(results: Sequence[Sequence[Hypothesis]], vocab, features: Features,
                          language: Optional[str] = None) -> list[Caption]:
    """One :class:`Caption` per image from its n-best list (best first): the words (in
    ``language``), scores and attention of its best hypothesis; confidence is set by
    :func:`caption_features`."""
    return [
        Caption.from_hypotheses(
            hypotheses, vocab, language,
            attention=hypotheses[0].attention,
            grid_shape=features.grid_shape if hypotheses[0].attention is not None else None,
        )
        for hypotheses in results
    ]


def caption_signals(model: "CaptionModel", features: Features,
                    options: DecodeOptions) -> tuple[list[Caption], dict[str, list[float]]]:
    """Captions of encoded images and what the confidence reads of each: decode (the beam's
    whole n-best), rerank with the model's datastore when it has one and ``options.retrieval``
    (:func:`captioner.retrieval.rerank`), keep ``options.n_best``. The signals: word probability,
    log probability, margin to the second candidate and, with a datastore, consensus, agreement
    and similarity."""
    language = check_language(model, options.language, options.retrieval)
    if language not in model.vocab.languages:
        return _translated(model, features, options, language)
    store = model.datastore if options.retrieval else None
    wide = options if options.sample else DecodeOptions.of(options, n_best=options.beam_size)
    results = model.generate(features, wide)
    values: dict[str, list[float]] = {}
    pivot, preferred = None, None
    if store is not None:
        from .retrieval import rerank

        pivot, preferred = _translations(model, features, options, language)
        reranked = rerank(model, features, results, options.language, store.rerank, preferred,
                          keep=max(2, options.n_best))
        results = [r.hypotheses for r in reranked]
        values = {"consensus": [r.consensus for r in reranked], "agreement": [r.agreement for r in reranked],
                  "similarity": [r.similarity for r in reranked], "margin": [r.margin for r in reranked]}
    else:
        values["margin"] = [h[0].score - h[1].score if len(h) > 1 else 0.0 for h in results]
    values["word_probability"] = [mean_word_probability(h[0].token_log_probs, len(h[0].tokens)) for h in results]
    values["log_probability"] = [float(h[0].log_prob) for h in results]
    if pivot is not None:
        # A translated caption is as likely right as the caption it translates: its signals stand.
        for name, measured in values.items():
            values[name] = [p if translated else v for v, p, translated in zip(measured, pivot[name], preferred)]
    captions = captions_from_results([h[: options.n_best] for h in results], model.vocab, features, options.language)
    return captions, values


def _first_language_captions(model: "CaptionModel", features: Features, options: DecodeOptions, language: str):
    """Each image's caption in the model's first language (captioned as ``options`` say), its
    signals, and its translations into ``language`` through the model's datastore
    (``Datastore.translations``: the captions in ``language`` of the groups that hold it)."""
    vocab, first = model.vocab, model.vocab.default_language
    captions, values = caption_signals(model, features, DecodeOptions.of(options, language=first))
    key = lambda text: " ".join(vocab.tokenize(text, first))  # noqa: E731
    return captions, values, model.datastore.translations([c.text for c in captions], first, language, key)


def _translations(model: "CaptionModel", features: Features, options: DecodeOptions, language: str):
    """Captions in another language of a multilingual model, through its datastore: caption in the
    model's first language (usually its best: the one every epoch trains), then take the
    captions in ``language`` of the datastore groups that hold that caption. Returns the first
    language's signals and, per image, the translations (``None, None`` when the language is
    the first, or the datastore holds captions in only one of the two)."""
    first = model.vocab.default_language
    if options.sample or language == first or not {language, first} <= model.datastore.languages():
        return None, None
    _, values, translations = _first_language_captions(model, features, DecodeOptions.of(options, n_best=1), language)
    return values, translations


def model_languages(model: "CaptionModel") -> dict[str, str]:
    """The languages ``model`` captions in, each with the word tokenizer its captions are scored
    with: its vocabulary's (the first the default), then those its datastore translates into —
    a datastore that keeps each image's captions in several languages, the model's first among
    them, is a translation memory (:func:`_translated`)."""
    languages = dict(model.vocab.languages)
    store = model.datastore
    if store is not None and model.vocab.default_language in store.languages():
        for language in sorted(store.languages()):
            languages.setdefault(language, tokenizer_for(language))
    return languages


def check_language(model: "CaptionModel", language: Optional[str], retrieval: bool = True) -> str:
    """``language`` spelled as ``model`` knows it (``None``: its first); a language it does not
    caption in — or one only its datastore translates into, with ``retrieval`` off — raises one
    line naming those it does."""
    if language is None:
        return model.vocab.default_language
    code = normalize_language(language)
    known = model_languages(model) if retrieval else model.vocab.languages
    if code in known:
        return code
    through = sorted(set(model_languages(model)) - set(model.vocab.languages))
    raise InvalidInputError(
        f"language {language!r} is not one this model captions in; it knows {', '.join(known)}"
        + (f" ({', '.join(through)} only through its datastore, which --no-retrieval or retrieval=False turns off)"
           if through and not retrieval else "")
    )


def _translated(model: "CaptionModel", features: Features, options: DecodeOptions, language: str):
    """Captions in a ``language`` only the model's datastore holds: each image's caption in the
    model's first language (decoded and reranked as usual), translated through the datastore
    (:meth:`~captioner.retrieval.Datastore.translations`: the captions in ``language`` of the
    stored images that carry that caption, the most often stored first; the n-best are the
    other translations). The signals are the first-language caption's. Where no stored image
    carries the caption (the decoder wrote a new one), the caption in ``language`` of the
    nearest image that has one stands, with word probability and margin 0 and log probability
    -inf — the decoder wrote none of it — so the confidence is low."""
    store = model.datastore
    pivots, values, translated = _first_language_captions(model, features, options, language)
    missing = [i for i, texts in enumerate(translated) if not texts]
    if missing:
        nearest = store.neighbour_captions(store.search(host_array(features.pooled)[missing], 64), language)
        for i, found in zip(missing, nearest):
            translated[i] = [found[0][0]] if found else [pivots[i].text]  # (a store with no caption in reach)
            values["word_probability"][i] = 0.0
            values["margin"][i] = 0.0
            values["log_probability"][i] = -math.inf
    captions = [Caption(texts[0], pivot.score, [Alternative(t, pivot.score) for t in texts[: options.n_best]])
                for pivot, texts in zip(pivots, translated)]
    return captions, values


def caption_features(model: "CaptionModel", features: Features, options: DecodeOptions) -> list[Caption]:
    """What both engines do with encoded images: :func:`caption_signals`, then each caption's
    confidence and flag from the model's :class:`~captioner.confidence.ConfidenceModel` (when it
    has one: the fit that reads the signals measured — with or without the datastore's — or,
    where there is none, the flag alone)."""
    captions, values = caption_signals(model, features, options)
    scorer = model.confidence
    if scorer is None:
        return captions
    familiarity = scorer.familiarity_of(features)
    fitted = scorer.fit_for(values)
    if fitted is not None:
        for caption, value, known in zip(captions, fitted.confidence({**values, "familiarity": familiarity}),
                                         familiarity):
            caption.confidence, caption.low_confidence = float(value), scorer.is_low(float(value), float(known))
    elif scorer.calibration == "logistic":
        # Without the datastore's signals (retrieval off) and no fit without them, there is no
        # confidence, but the flag reads the image's familiarity alone: a photo is still marked.
        for caption, known in zip(captions, familiarity):
            caption.low_confidence = scorer.is_low(math.nan, float(known))
    return captions


ImageInput = Union[str, Path, Any]  # a path, or a PIL image


def caption_in_batches(model: "CaptionModel", images: ImageInput | Sequence[ImageInput], options: DecodeOptions,
                       batch_size: int) -> Caption | list[Caption]:
    """What ``caption`` does for either engine: one image (a path or a PIL image) → its
    :class:`Caption`, a list → their captions, ``batch_size`` images a model call."""
    single = isinstance(images, (str, Path)) or hasattr(images, "convert")
    items = [images] if single else list(images)
    captions: list[Caption] = []
    for start in range(0, len(items), batch_size):
        captions.extend(model.caption_pixels(model.preprocess_images(items[start : start + batch_size]), options))
    return captions[0] if single else captions


@runtime_checkable
class CaptionModel(Protocol):
    """What every captioning model offers, whichever engine runs it: the torch
    :class:`~captioner.model.Captioner` and the exported :class:`~captioner.exported.OnnxCaptioner`
    (``captioner.load_model`` returns either). Pixels and features are the engine's arrays
    (torch tensors or numpy arrays); everything else is the same."""

    vocab: Any  # captioner.data.vocab.Vocabulary
    preprocess: Any  # captioner.data.images.PreprocessConfig
    max_length: int
    confidence: Any  # a ConfidenceModel, or None
    datastore: Any  # a captioner.retrieval.Datastore, or None

    @classmethod
    def from_pretrained(cls, directory=None, **kwargs) -> "CaptionModel": ...

    def caption(self, images: ImageInput | Sequence[ImageInput], options: DecodeOptions | None = None, *,
                batch_size: int = 32, **decode) -> Caption | list[Caption]: ...

    def caption_pixels(self, pixels, options: DecodeOptions | None = None, **decode) -> list[Caption]: ...

    def preprocess_images(self, images: Sequence[ImageInput]) -> Any: ...

    def encode(self, pixels) -> Features: ...

    def encode_images(self, images: Sequence[ImageInput]) -> Features: ...

    def generate(self, features: Features, options: DecodeOptions | None = None,
                 **decode) -> list[list[Hypothesis]]: ...

    def score_captions(self, features: Features, captions: Sequence[Sequence[Sequence[int]]],
                       language: Optional[str] = None,
                       floors: Optional[Sequence[Sequence[float]]] = None) -> list[list[Hypothesis]]: ...
