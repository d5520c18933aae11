"""Validation on *generated* captions (not teacher-forced argmax): CIDEr-D, BLEU, exact
match, the share ending in a function word — plus the teacher-forced cross-entropy on the
same images (its own, without the training objective's label smoothing or regularisers,
comparable across objectives)."""
from __future__ import annotations

import math

import numpy as np
import torch
from torch.utils.data import DataLoader

from ..data.loaders import ImageRows
from ..data.examples import is_sample_ref
from ..data.webdataset import ShardImages
from ..metrics import exact_match
from ..decoders.base import Features
from ..objectives import CaptionCrossEntropy, bad_ending_rate


def iter_val_features(model, val_examples, val_rows, cache, batch_size, device):
    """(row offset, Features) chunks for the validation images, from the cache or pixels."""
    if cache is not None:
        for start in range(0, len(val_rows), batch_size):
            pooled, grid = cache.rows(np.asarray(val_rows[start : start + batch_size]))
            yield start, Features(pooled.to(device), grid.to(device) if grid is not None else None)
        return
    refs = [e.image_ref for e in val_examples]
    images = (ShardImages if refs and is_sample_ref(refs[0]) else ImageRows)(refs, model.preprocess)
    loader = DataLoader(images, batch_size=batch_size)
    for pixels, indices in loader:
        yield int(indices[0]), model.encode(pixels.to(device))


@torch.no_grad()
def validate(model, val_examples, val_rows, val_pairs, cache, config, device) -> dict:
    """Metrics of one epoch's model on the val split (``record`` keys for metrics.jsonl)."""
    record, _ = caption_and_score(
        model, val_examples, val_rows, val_pairs, cache, config.batch_size, config.val_beam_size, device
    )
    model.train()
    return record


@torch.no_grad()
def caption_and_score(model, examples, rows, pairs, cache, batch_size, beam_size, device,
                      metrics=("BLEU", "ROUGE_L", "CIDEr"), language=None):
    """Generate a caption for every example and score them against its references in ``language``
    (default: the vocabulary's first), split into words by that language's tokenizer.

    Returns (record of metrics + teacher-forced loss, predictions {image_id: caption}).
    """
    from ..metrics import evaluate_captions

    vocab = model.vocab
    language = vocab.check_language(language)
    tokenizer = vocab.tokenizer_of(language)
    model.eval()
    cross_entropy = CaptionCrossEntropy(model.vocab.pad_id)
    predictions, references = {}, {}
    loss_sum, token_sum = 0.0, 0
    for offset, features in iter_val_features(model, examples, rows, cache, batch_size, device):
        n = features.pooled.shape[0]
        results = model.generate(features, beam_size=beam_size)
        for i, hypotheses in enumerate(results):
            example = examples[offset + i]
            in_language = [c for c, lang in zip(example.captions, example.caption_languages(vocab.default_language))
                           if lang == language]
            if in_language:  # an image without a reference in this language is not scored
                predictions[example.image_id] = vocab.decode(hypotheses[0].tokens, language)
                references[example.image_id] = in_language
        # Teacher-forced loss on every caption of these images.
        pair_index = np.nonzero(np.isin(pairs.image_rows, np.asarray(rows[offset : offset + n])))[0]
        local = {row: i for i, row in enumerate(rows[offset : offset + n])}
        select = torch.tensor([local[r] for r in pairs.image_rows[pair_index]], device=device)
        pair_features = Features(
            features.pooled[select], features.grid[select] if features.grid is not None else None
        )
        result = cross_entropy(model, pair_features, pairs.captions(pair_index).to(device))
        loss_sum += float(result.logs["loss"]) * int(result.weight)
        token_sum += int(result.weight)
    scores = evaluate_captions(predictions, references, metrics=metrics, tokenizer=tokenizer, language=language)
    val_loss = loss_sum / max(token_sum, 1)
    record = {
        "val_loss": val_loss,
        "val_ppl": math.exp(min(val_loss, 50)),
        "exact_match": exact_match(predictions, references, tokenizer),
        "bad_ending": bad_ending_rate(predictions.values()),
        **{k: v for k, v in scores.items() if isinstance(v, float)},
    }
    if scores.get("skipped"):
        record["skipped"] = scores["skipped"]
    return record, predictions
