"""Scoring a trained model on a dataset split, or a predictions file, as library functions.

``metrics/`` scores caption strings and knows nothing of models; this module sits above it
(and above ``data/``): it loads a model and a dataset, generates captions
(:func:`caption_and_score`, which training's validation uses too) and hands them to
:func:`captioner.metrics.evaluate_captions`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Hashable, Optional, Union

import numpy as np
import torch
from torch.utils.data import DataLoader

from .captions import caption_signals, check_language, model_languages
from .data.examples import is_sample_ref
from .data.loaders import ImageRows
from .data.webdataset import ShardImages
from .decoders.base import Features
from .decoding import DecodeOptions
from .metrics import exact_match
from .model import Captioner
from .objectives import CaptionCrossEntropy, bad_ending_rate
from .retrieval import with_retrieved


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
    options: Optional[DecodeOptions] = None,
    batch_size: int = 64,
    device: str = "auto",
    by: Optional[str] = None,
    **decode_options,
) -> Evaluation:
    """Caption the ``split`` examples of the captions file ``data`` with ``model`` (a model
    directory, a loaded :class:`Captioner`, or ``None`` for the bundled model) and score them
    with every coco-caption metric, decoding as ``options`` (or their names as keywords) say.
    ``images``: the image root (default: ``data``'s folder);
    ``format``: the captions format (default: detected). ``by``: a per-image field of the
    dataset (e.g. ``artist``) to score each of its values on its own as well
    (:func:`captioner.metrics.groups.evaluate_by_group`).

    Captioned and scored in ``options.language`` (default: the model's first language; captions
    the dataset does not tag count as that language), split into words by the model's tokenizer of
    that language; ``scores["tokenizer"]`` and ``scores["language"]`` say which."""
    from .data.loaders import CaptionPairs
    from .data.sources import DatasetError, read_dataset, select_languages, split_examples, validate_examples
    from .metrics import ALL_METRICS
    from .device import resolve_device

    if isinstance(model, Captioner):
        torch_device = model.device
    else:
        torch_device = resolve_device(device)
        model = Captioner.from_pretrained(model, device=torch_device)
    options = DecodeOptions.of(options, **decode_options)
    language = check_language(model, options.language, options.retrieval)
    tokenizer = model_languages(model)[language]
    examples = split_examples(read_dataset(data, images, format), split)
    if not examples:
        raise DatasetError(f"{data} has no {split!r} examples")
    examples = select_languages(examples, model.vocab.default_language, [language])
    problems = validate_examples(examples)
    if problems:
        raise DatasetError(f"{data} has problems:\n{problems.report()}")
    groups = _groups(examples, by, data) if by else None
    rows = list(range(len(examples)))
    # The teacher-forced loss needs captions the decoder writes: none in a language the datastore translates into.
    pairs = CaptionPairs(examples, rows, model.vocab, model.max_length) if language in model.vocab.languages else None
    record, predictions = caption_and_score(
        model, examples, rows, pairs, None, batch_size, options, torch_device, metrics=ALL_METRICS,
    )
    renamed = {"val_loss": "loss", "val_ppl": "perplexity"}  # teacher-forced, on this split
    by_group = None
    if groups is not None:
        from .metrics.groups import evaluate_by_group

        by_group = evaluate_by_group(predictions, {e.image_id: e.captions for e in examples}, groups,
                                     tokenizer=tokenizer, language=language)
    scores = {renamed.get(k, k): v for k, v in record.items()}
    return Evaluation({**scores, "tokenizer": tokenizer, "language": language}, predictions, by_group)


def iter_val_features(model, examples, rows, cache, batch_size, device):
    """(row offset, Features) chunks for the examples' images, from the feature cache (its
    ``rows``) or from pixels."""
    if cache is not None:
        for start in range(0, len(rows), batch_size):
            pooled, grid = cache.rows(np.asarray(rows[start : start + batch_size]))
            yield start, Features(pooled.to(device), grid.to(device) if grid is not None else None)
        return
    refs = [e.image_ref for e in examples]
    images = (ShardImages if refs and is_sample_ref(refs[0]) else ImageRows)(refs, model.preprocess)
    loader = DataLoader(images, batch_size=batch_size)
    for pixels, indices in loader:
        yield int(indices[0]), model.encode(pixels.to(device))


@torch.no_grad()
def caption_and_score(model, examples, rows, pairs, cache, batch_size, options: DecodeOptions, device,
                      metrics=("BLEU", "ROUGE_L", "CIDEr")):
    """Generate a caption for every example (decoding as ``options`` say, in ``options.language``,
    default the vocabulary's first; reranked with the model's datastore when it has one and
    ``options.retrieval``, as ``captioner caption`` does) and score them against its references in that language,
    split into words by its tokenizer; the teacher-forced cross-entropy on the same images too
    (``pairs``: their encoded captions; ``None`` in a language only the datastore holds: no loss).

    Returns (record of metrics + loss, predictions {image_id: caption}); leaves ``model`` in eval mode.
    """
    from .metrics import evaluate_captions

    vocab = model.vocab
    language = check_language(model, options.language, options.retrieval)
    tokenizer = model_languages(model)[language]
    written = language if language in vocab.languages else vocab.default_language  # what the decoder writes
    model.eval()
    cross_entropy = CaptionCrossEntropy(vocab.pad_id)
    predictions, references = {}, {}
    loss_sum, token_sum = 0.0, 0
    for offset, features in iter_val_features(model, examples, rows, cache, batch_size, device):
        features = with_retrieved(model, features, written)  # once, for the captions and the loss
        n = features.pooled.shape[0]
        captions = caption_signals(model, features, options)[0]  # as `caption` does (reranked when it does)
        for i, text in enumerate(c.text for c in captions):
            example = examples[offset + i]
            in_language = example.captions_in(language, vocab.default_language)
            if in_language:  # an image without a reference in this language is not scored
                predictions[example.image_id] = text
                references[example.image_id] = in_language
        if pairs is None:
            continue
        # Teacher-forced loss on every caption of these images.
        pair_index = np.nonzero(np.isin(pairs.image_rows, np.asarray(rows[offset : offset + n])))[0]
        local = {row: i for i, row in enumerate(rows[offset : offset + n])}
        select = torch.tensor([local[r] for r in pairs.image_rows[pair_index]], device=device)
        pair_features = Features(
            features.pooled[select], features.grid[select] if features.grid is not None else None,
            retrieved=features.retrieved[select] if features.retrieved is not None else None,
        )
        result = cross_entropy(model, pair_features, pairs.captions(pair_index).to(device))
        loss_sum += float(result.logs["loss"]) * int(result.weight)
        token_sum += int(result.weight)
    scores = evaluate_captions(predictions, references, metrics=metrics, tokenizer=tokenizer, language=language)
    val_loss = loss_sum / max(token_sum, 1)
    record = {
        **({"val_loss": val_loss, "val_ppl": math.exp(min(val_loss, 50))} if pairs is not None else {}),
        "exact_match": exact_match(predictions, references, tokenizer),
        "bad_ending": bad_ending_rate(predictions.values()),
        **{k: v for k, v in scores.items() if isinstance(v, float)},
    }
    if scores.get("skipped"):
        record["skipped"] = scores["skipped"]
    return record, predictions


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
