"""The end of a run: the best model's fine-tuned encoder is frozen again for inference, and the
model gets what captioning reads beside its weights — the datastore of its training images
(reranking tuned on the val images) and the confidence fitted on them (``captioner.retrieval``,
``captioner.confidence``)."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch

from ..confidence import MIN_HELD_OUT, features_from_cache, fit_confidence
from ..data.activation_cache import TopFeatures
from ..decoding import DecodeOptions
from ..evaluate import iter_val_features
from ..model import Captioner
from ..datastore import build_datastore, tune_rerank
from ..retrieval import RerankConfig
from .config import TrainConfig
from .retrieval import leave_out_labels

DATASTORE_BATCH = 64  # images encoded at once when a fine-tuned encoder's features are not cached


@torch.inference_mode()
def finish_model(out: Path, device, train_examples: list, val_examples: list, config: TrainConfig, cache=None,
                 log: Callable[[str], None] = print) -> None:
    """Freeze a fine-tuned encoder (``Encoder.freeze``: captioning then runs it as a frozen one,
    in ONNX Runtime on the CPU), and write the datastore (unless ``config.retrieval.datastore``
    is off) and the confidence into the model folder ``out``. The cache rows are the training
    images, then the val images; an activation cache's are read through the best model's top."""
    with torch.inference_mode(False):
        # Ordinary tensors: the frozen encoder's ONNX Runtime twin (``Captioner.encode``, the
        # pixel path below) checks the weights' version counters, which inference tensors lack.
        model = Captioner.from_pretrained(out, device)
    if not model.encoder.frozen:
        model.encoder.freeze()
        model.save_pretrained(out)
        log(f"encoder frozen for inference (trainable_blocks 0): its fine-tuned weights are in {out / 'model.safetensors'}")
    if isinstance(cache, TopFeatures):
        cache = TopFeatures(cache.cache, model)
    examples = train_examples + val_examples
    train_count = len(train_examples)

    def features(rows: range):
        """Batches of these rows' features: from the cache, or encoded from their images (files or shard samples)."""
        if cache is not None:
            return features_from_cache(cache, rows)
        return (f for _, f in iter_val_features(model, examples[rows.start : rows.stop], list(rows), None,
                                                DATASTORE_BATCH, device))

    val_rows = range(train_count, len(examples))
    language = model.vocab.default_language
    references = [e.captions_in(language, language) for e in val_examples]
    if config.retrieval.datastore:
        model.datastore = build_datastore(model, train_examples, features(range(train_count)), config.retrieval.dims,
                                          RerankConfig(neighbours=config.retrieval.neighbours))
        if len(val_examples) >= MIN_HELD_OUT:
            tune_rerank(model, list(features(val_rows)), references, language, log=log)
        path = model.datastore.save(out)
        log(f"datastore: {path} ({len(model.datastore)} images; rerank {model.datastore.rerank.to_dict()})")
    if len(val_examples) < MIN_HELD_OUT:
        log(f"confidence: not fitted ({len(val_examples)} val images; its calibration needs at least {MIN_HELD_OUT})")
        return
    labels = leave_out_labels(config, examples) if model.datastore is not None else None
    model.confidence = fit_confidence(model, features(range(train_count)), features(val_rows), references,
                                      DecodeOptions(language=language),
                                      held_out_labels=None if labels is None else labels[train_count:],
                                      store_labels=None if labels is None else labels[:train_count])
    path = model.confidence.save(out)
    log(f"confidence: {path} (predicts {model.confidence.target} on {len(val_examples)} val images"
        + ("" if labels is None else f", each captioned without its own {config.retrieval.leave_out}'s datastore rows")
        + f"; flags the {model.confidence.threshold:.0%} least familiar)")
