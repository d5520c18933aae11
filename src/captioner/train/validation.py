"""Validation on *generated* captions (not teacher-forced argmax): CIDEr-D, BLEU, exact
match, the share ending in a function word — plus the teacher-forced cross-entropy on the
same images (its own, without the training objective's label smoothing or regularisers,
comparable across objectives). The captioning and scoring is evaluation's
(:func:`captioner.evaluate.caption_and_score`)."""
from __future__ import annotations

import torch

from ..decoding import DecodeOptions
from ..evaluate import caption_and_score


@torch.no_grad()
def validate(model, val_examples, val_rows, val_pairs, cache, config, device) -> dict:
    """Metrics of one epoch's model on the val split (``record`` keys for metrics.jsonl)."""
    record, _ = caption_and_score(model, val_examples, val_rows, val_pairs, cache, config.batch_size,
                                  DecodeOptions(beam_size=config.val_beam_size, retrieval=False), device)  # the decoder's own
    model.train()
    return record
