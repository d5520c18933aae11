"""Scoring a trained model on a dataset split, or a predictions file, as library functions.

``metrics/`` scores caption strings and knows nothing of models; this module sits above it
(and above ``data/`` and ``train/validation.py``): it loads a model and a dataset, generates
captions and hands them to :func:`captioner.metrics.evaluate_captions`.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Hashable, Optional, Union

from .model import Captioner


@dataclass
class Evaluation:
    """A model's scores on a split and the captions it generated ``{image_id: caption}``.

    ``scores`` holds the coco-caption metrics, ``loss`` and ``perplexity`` (teacher-forced, on
    the same images), and, from :func:`evaluate_captions`, ``per_image`` and ``skipped``."""

    scores: dict[str, Any]
    predictions: dict[Hashable, str]
    by_group: Optional[dict[str, dict[str, Any]]] = None  # ``by=FIELD``: scores per value of that field

    def coco_results(self) -> list[dict]:
        """The predictions as a COCO results file's list ``[{"image_id", "caption"}]``."""
        return [{"image_id": _coco_id(k), "caption": v} for k, v in self.predictions.items()]


def evaluate_model(
    model: Union[str, Path, Captioner, None],
    data: Union[str, Path],
    *,
    images: Union[str, Path, None] = None,
    format: Optional[str] = None,
    split: str = "test",
    beam_size: int = 3,
    batch_size: int = 64,
    device: str = "auto",
    by: Optional[str] = None,
    language: Optional[str] = None,
) -> Evaluation:
    """Caption the ``split`` examples of the captions file ``data`` with ``model`` (a model
    directory, a loaded :class:`Captioner`, or ``None`` for the bundled model) and score them
    with every coco-caption metric. ``images``: the image root (default: ``data``'s folder);
    ``format``: the captions format (default: detected). ``by``: a per-image field of the
    dataset (e.g. ``artist``) to score each of its values on its own as well
    (:func:`captioner.metrics.groups.evaluate_by_group`).

    Scored against the references in ``language`` (default: the model's first language; captions
    the dataset does not tag count as that language), split into words by the model's tokenizer of
    that language; ``scores["tokenizer"]`` and ``scores["language"]`` say which."""
    from .data.loaders import CaptionPairs
    from .data.sources import DatasetError, read_dataset, select_languages, split_examples, validate_examples
    from .metrics import ALL_METRICS
    from .device import resolve_device
    from .train.validation import caption_and_score

    if isinstance(model, Captioner):
        torch_device = model.device
    else:
        torch_device = resolve_device(device)
        model = Captioner.from_pretrained(model, device=torch_device)
    language = model.vocab.check_language(language)
    tokenizer = model.vocab.tokenizer_of(language)
    examples = split_examples(read_dataset(data, images, format), split)
    if not examples:
        raise DatasetError(f"{data} has no {split!r} examples")
    examples = select_languages(examples, model.vocab.default_language, [language])
    problems = validate_examples(examples)
    if problems:
        raise DatasetError(f"{data} has problems:\n{problems.report()}")
    groups = _groups(examples, by, data) if by else None
    rows = list(range(len(examples)))
    pairs = CaptionPairs(examples, rows, model.vocab, model.max_length)
    record, predictions = caption_and_score(
        model, examples, rows, pairs, None, batch_size, beam_size, torch_device, metrics=ALL_METRICS,
        language=language,
    )
    renamed = {"val_loss": "loss", "val_ppl": "perplexity"}  # teacher-forced, on this split
    by_group = None
    if groups is not None:
        from .metrics.groups import evaluate_by_group

        by_group = evaluate_by_group(predictions, {e.image_id: e.captions for e in examples}, groups,
                                     tokenizer=tokenizer, language=language)
    scores = {renamed.get(k, k): v for k, v in record.items()}
    return Evaluation({**scores, "tokenizer": tokenizer, "language": language}, predictions, by_group)


def _groups(examples, field: str, data) -> dict[Hashable, str]:
    """``{image_id: value of the per-image field}``; every example must have the field."""
    from .errors import CaptionerError

    missing = [e.image_id for e in examples if field not in e.metadata]
    if missing:
        known = sorted({k for e in examples for k in e.metadata})
        raise CaptionerError(
            f"--by {field}: {len(missing)} of {len(examples)} images of {data} have no {field!r} field "
            f"(e.g. {missing[0]!r}); per-image fields there: {', '.join(known) or 'none'}"
        )
    return {e.image_id: str(e.metadata[field]) for e in examples}


def evaluate_files(predictions: Union[str, Path], references: Union[str, Path], *,
                   language: Optional[str] = None, tokenizer: Optional[str] = None) -> dict[str, Any]:
    """Score a COCO results file ``[{"image_id", "caption"}]`` against a COCO captions file
    (or ``{image_id: [captions]}`` JSON) with every coco-caption metric. Words come from
    ``tokenizer``, else from the default tokenizer of ``language``, else of the one language the
    references' annotations name (``"language": "ja"``), else PTB (English)."""
    from .metrics import evaluate_captions, load_coco_references, load_coco_results
    from .metrics.evaluate import coco_references_language

    if language is None and tokenizer is None:
        language = coco_references_language(references)
    return evaluate_captions(load_coco_results(predictions), load_coco_references(references),
                             tokenizer=tokenizer, language=language)


def _coco_id(key: Hashable):
    return int(key) if str(key).isdigit() else key
