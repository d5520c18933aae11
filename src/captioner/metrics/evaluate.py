"""One-call caption evaluation with coco-caption's metrics and conventions."""

from __future__ import annotations

import json
import os
from typing import Any, Hashable, Iterable, Mapping, Sequence

from ..errors import InvalidInputError, MissingFileError
from ._inputs import check_ids, check_pair

__all__ = ["ALL_METRICS", "evaluate_captions", "exact_match", "load_coco_references", "load_coco_results",
           "scoring_tokenizer"]



#: Canonical metric groups, in coco-caption's order.
ALL_METRICS = ("BLEU", "METEOR", "ROUGE_L", "CIDEr", "SPICE")
_ALIASES = {
    "bleu": "BLEU", "bleu_1": "BLEU", "bleu_2": "BLEU", "bleu_3": "BLEU", "bleu_4": "BLEU", "bleu4": "BLEU",
    "meteor": "METEOR",
    "rouge": "ROUGE_L", "rouge_l": "ROUGE_L", "rougel": "ROUGE_L",
    "cider": "CIDEr", "cider_d": "CIDEr", "cider-d": "CIDEr", "ciderd": "CIDEr",
    "spice": "SPICE",
}


def _metric_set(metrics: Iterable[str] | None) -> list[str]:
    if metrics is None:
        return list(ALL_METRICS)
    if isinstance(metrics, str):
        metrics = [metrics]
    out = []
    for m in metrics:
        key = _ALIASES.get(str(m).lower())
        if key is None:
            raise InvalidInputError(f"unknown metric {m!r}; choose from {', '.join(ALL_METRICS)}")
        if key not in out:
            out.append(key)
    return [m for m in ALL_METRICS if m in out]


def _predictions(pred: Any) -> dict[Hashable, str]:
    if isinstance(pred, Mapping):
        out = {}
        for k, v in pred.items():
            if isinstance(v, (list, tuple)) and len(v) == 1:
                v = v[0]
            if isinstance(v, Mapping) and "caption" in v:
                v = v["caption"]
            if not isinstance(v, str):
                raise InvalidInputError(f"prediction for image {k!r} must be a caption string, got {type(v).__name__}")
            out[k] = v
        return out
    if isinstance(pred, Sequence) and not isinstance(pred, (str, bytes)):
        out = {}
        for i, item in enumerate(pred):
            if not isinstance(item, Mapping) or "image_id" not in item or "caption" not in item:
                raise InvalidInputError(f"results entry {i} must be a dict with 'image_id' and 'caption': {item!r:.100}")
            if not isinstance(item["caption"], str):
                raise InvalidInputError(f"results entry {i}: 'caption' must be a string")
            if item["image_id"] in out:
                raise InvalidInputError(f"results contain image_id {item['image_id']!r} more than once")
            out[item["image_id"]] = item["caption"]
        return out
    raise InvalidInputError("predictions must be a mapping image_id -> caption or a COCO results list")


def _references(refs: Any) -> dict[Hashable, list[str]]:
    if isinstance(refs, Mapping) and "annotations" in refs:
        anns = refs["annotations"]
        if not isinstance(anns, Sequence):
            raise InvalidInputError("'annotations' must be a list")
        out: dict[Hashable, list[str]] = {}
        for i, a in enumerate(anns):
            if not isinstance(a, Mapping) or "image_id" not in a or not isinstance(a.get("caption"), str):
                raise InvalidInputError(f"annotation {i} must be a dict with 'image_id' and string 'caption'")
            out.setdefault(a["image_id"], []).append(a["caption"])
        # images listed without captions are an error only if predicted; keep order of "images" if present
        return out
    if isinstance(refs, Mapping):
        out = {}
        for k, v in refs.items():
            if isinstance(v, str) or not isinstance(v, Sequence):
                raise InvalidInputError(f"references for image {k!r} must be a list of strings")
            caps = []
            for c in v:
                if isinstance(c, Mapping) and "caption" in c:
                    c = c["caption"]
                if not isinstance(c, str):
                    raise InvalidInputError(f"references for image {k!r} must be strings")
                caps.append(c)
            if not caps:
                raise InvalidInputError(f"image {k!r} has no reference captions")
            out[k] = caps
        return out
    raise InvalidInputError("references must be a mapping image_id -> [captions] or a COCO captions dict")


def scoring_tokenizer(tokenizer: str | None = None, language: str | None = None) -> tuple[str, str]:
    """The (tokenizer name, language) captions are scored with: ``tokenizer`` if given, else the
    default of ``language`` (:func:`captioner.data.language.tokenizer_for`); English and PTB when
    neither is given, as coco-caption."""
    from ..data.language import DEFAULT_LANGUAGE, get_tokenizer, normalize_language, tokenizer_for

    language = normalize_language(language) if language is not None else DEFAULT_LANGUAGE
    name = tokenizer if tokenizer is not None else tokenizer_for(language)
    get_tokenizer(name)  # an unknown name raises, naming the known ones
    return name, language


def _english_only_reason(metric: str, tokenizer: str, language: str) -> str | None:
    """Why coco-caption's Java metric cannot score these captions, or None when it can: METEOR 1.5
    matches English stems and paraphrases, SPICE parses English; both as coco-caption runs them,
    on PTB tokens."""
    from ..data.language import primary_language

    if primary_language(language) == "en" and tokenizer == "ptb":
        return None
    tool = "English stems and paraphrase tables" if metric == "METEOR" else "an English dependency parser"
    return (f"{metric} is English-only ({tool}, on PTB tokens); these captions are {language!r} "
            f"split by the {tokenizer!r} tokenizer")


def _tokenized(captions: Mapping[Hashable, Sequence[str]], tokenizer: str) -> dict[Hashable, list[str]]:
    """``{id: [caption, ...]}`` → ``{id: ["space joined words", ...]}`` with ``tokenizer``; ``ptb`` as
    coco-caption does it (:func:`captioner.data.tokenizer.tokenize_corpus`)."""
    if tokenizer == "ptb":
        from ..data.tokenizer import tokenize_corpus

        return tokenize_corpus(captions)
    from ..data.language import get_tokenizer

    split = get_tokenizer(tokenizer)
    return {k: [" ".join(split(c)) for c in caps] for k, caps in captions.items()}


def evaluate_captions(
    predictions: Mapping[Hashable, str] | Sequence[Mapping[str, Any]],
    references: Mapping[Hashable, Sequence[str]] | Mapping[str, Any],
    metrics: Iterable[str] | None = None,
    tokenize: bool = True,
    java_timeout: float = 300.0,
    *,
    tokenizer: str | None = None,
    language: str | None = None,
) -> dict[str, Any]:
    """Score captions like coco-caption's ``COCOEvalCap``.

    ``predictions``: ``{image_id: caption}`` or a COCO results list
    ``[{"image_id": ..., "caption": ...}]``.  ``references``: ``{image_id:
    [captions]}`` or a COCO captions dict (with ``"annotations"``).  With
    ``tokenize`` the captions are split into words by the word tokenizer named
    ``tokenizer``, else by the default of the captions' ``language``
    (:mod:`captioner.data.language`), else — English — by PTB tokenization +
    punctuation removal as coco-caption does it
    (:func:`captioner.data.tokenizer.tokenize_corpus`, references and predictions
    tokenized as two separate batches). METEOR and SPICE, English-only tools, are
    skipped for other languages and tokenizers.

    Returns ``{"Bleu_1".."Bleu_4", "METEOR", "ROUGE_L", "CIDEr", "SPICE": float,
    "tokenizer": name, "language": code, "skipped": {metric: reason},
    "per_image": {image_id: {metric: float}}}`` (``tokenizer`` is ``None`` when
    ``tokenize`` is false); metrics that cannot run (Java / pycocoevalcap / SPICE
    models missing, timeout, not English) are listed in ``"skipped"`` instead.
    """
    wanted = _metric_set(metrics)
    pred = _predictions(predictions)
    refs = _references(references)
    check_ids(pred, refs)
    ids = list(refs)
    tokenizer, language = scoring_tokenizer(tokenizer, language)
    if tokenize:
        gts = _tokenized({k: refs[k] for k in ids}, tokenizer)
        res_l = _tokenized({k: [pred[k]] for k in ids}, tokenizer)
        res = {k: res_l[k][0] for k in ids}
    else:
        gts = {k: list(refs[k]) for k in ids}
        res = {k: pred[k] for k in ids}
    ids, res, gts = check_pair(res, gts)

    result: dict[str, Any] = {"tokenizer": tokenizer if tokenize else None, "language": language}
    skipped: dict[str, str] = {}
    per_image: dict[Hashable, dict[str, float]] = {k: {} for k in ids}

    def put(name: str, total: float, scores) -> None:
        result[name] = float(total)
        for k, s in zip(ids, scores):
            per_image[k][name] = float(s)

    java_status = None
    for m in wanted:
        if m == "BLEU":
            from .bleu import compute_bleu

            totals, per = compute_bleu(res, gts)
            for j in range(4):
                put(f"Bleu_{j + 1}", totals[j], per[j])
        elif m == "ROUGE_L":
            from .rouge import compute_rouge_l

            put("ROUGE_L", *compute_rouge_l(res, gts))
        elif m == "CIDEr":
            from .cider import compute_cider_d

            put("CIDEr", *compute_cider_d(res, gts))
        else:  # Java metrics
            from . import java

            english_only = _english_only_reason(m, tokenizer, language) if tokenize else None
            if english_only is not None:
                skipped[m] = english_only
                continue
            if java_status is None:
                java_status = java.java_metrics_status()
            reason = java_status.get(m)
            if reason is not None:
                skipped[m] = reason
                continue
            fn = java.meteor_score if m == "METEOR" else java.spice_score
            try:
                put(m, *fn(res, gts, timeout=java_timeout))
            except java.JavaMetricError as e:
                skipped[m] = str(e)
    result["skipped"] = skipped
    result["per_image"] = per_image
    return result


# --------------------------------------------------------------------------
# file helpers
# --------------------------------------------------------------------------
def _load_json(path: str | os.PathLike, what: str) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise MissingFileError(f"{what} file not found: {path}") from None
    except json.JSONDecodeError as e:
        raise InvalidInputError(f"{what} file {path} is not valid JSON: {e}") from None


def load_coco_results(path: str | os.PathLike) -> dict[Hashable, str]:
    """Read a COCO results file ``[{"image_id": ..., "caption": ...}, ...]`` -> ``{image_id: caption}``."""
    data = _load_json(path, "results")
    if not isinstance(data, list):
        raise InvalidInputError(f"results file {path} must contain a JSON list of {{'image_id', 'caption'}} objects")
    try:
        return _predictions(data)
    except ValueError as e:
        raise InvalidInputError(f"results file {path}: {e}") from None


def load_coco_references(path: str | os.PathLike) -> dict[Hashable, list[str]]:
    """Read a COCO captions file (``{"annotations": [{"image_id", "caption"}, ...]}``) or a plain
    ``{image_id: [captions]}`` JSON -> ``{image_id: [captions]}``."""
    data = _load_json(path, "references")
    if not isinstance(data, dict):
        raise InvalidInputError(f"references file {path} must contain a JSON object")
    try:
        return _references(data)
    except ValueError as e:
        raise InvalidInputError(f"references file {path}: {e}") from None


def coco_references_language(path: str | os.PathLike) -> str | None:
    """The one language a COCO captions file's annotations name (their ``language`` fields), or None
    when they name none; annotations in several languages raise (score each language on its own)."""
    data = _load_json(path, "references")
    annotations = data.get("annotations") if isinstance(data, dict) else None
    if not isinstance(annotations, list):
        return None
    languages = sorted({a["language"] for a in annotations if isinstance(a, dict) and a.get("language")}, key=str)
    if len(languages) > 1:
        raise InvalidInputError(f"references file {path} holds captions in {len(languages)} languages "
                                f"({', '.join(map(str, languages))}); score each language against its own file")
    return str(languages[0]) if languages else None


def exact_match(predictions: Mapping[Hashable, str], references: Mapping[Hashable, Sequence[str]],
                tokenizer: str = "ptb") -> float:
    """Share of images whose caption equals one of its references, word for word (words from the
    word tokenizer named ``tokenizer``, PTB by default)."""
    from ..data.language import get_tokenizer

    split = get_tokenizer(tokenizer)
    hits = 0
    for key, caption in predictions.items():
        tokens = split(caption)
        hits += any(tokens == split(ref) for ref in references[key])
    return hits / max(len(predictions), 1)
