"""Training a decoder that reads retrieved captions (``decoder.retrieved_shape``; SmallCap, Ramos
et al. 2023): the datastore of the training images, attached to the model so that validation
captions with it as captioning will, and each training pair's retrieved captions — the captions
of its image's nearest other training images, in the pair's language."""
from __future__ import annotations

from typing import Callable, Optional

import numpy as np
import torch

from ..confidence import features_from_cache
from ..data.loaders import CaptionPairs
from ..datastore import build_datastore, own_rows_neighbours, pooled_rows
from ..decoding import Features
from ..errors import InvalidInputError
from ..retrieval import RerankConfig, retrieved_tokens
from .config import ConfigError, TrainConfig

IMAGE = "image"  # retrieval.leave_out: only the image itself


class PairRetrieved:
    """Pair indices → their retrieved captions (batch, neighbours, length) int64: one table per
    language of each training image's neighbours' captions, computed once."""

    def __init__(self, tables: dict[str, np.ndarray], image_rows: np.ndarray, languages: np.ndarray):
        self.tables, self.image_rows, self.languages = tables, image_rows, languages

    def __call__(self, indices: np.ndarray) -> torch.Tensor:
        rows, languages = self.image_rows[indices], self.languages[indices]
        first = next(iter(self.tables.values()))
        out = np.empty((len(indices), *first.shape[1:]), dtype=np.int64)  # (batch, neighbours, length)
        for language, table in self.tables.items():
            chosen = languages == language
            out[chosen] = table[rows[chosen]]
        return torch.from_numpy(out)


def check_training_retrieval(model, config: TrainConfig, train_examples: list) -> None:
    """Refuse, before any features are extracted, what a decoder that reads retrieved captions
    cannot train with: an encoder that trains (its features, and so the datastore the
    decoder learns to read, would move under it), no datastore, or a ``retrieval.leave_out``
    field some training images lack."""
    name = model.decoder.name
    if not model.encoder.frozen:
        raise InvalidInputError(f"decoder {name!r} learns to read its training images' datastore, whose features a "
                                "trained encoder would change under it: train it with a frozen encoder "
                                "(trainable_blocks: 0)")
    if not config.retrieval.datastore:
        raise ConfigError(f"decoder {name!r} reads the captions of its datastore: retrieval.datastore must stay true")
    check_leave_out(config, train_examples)


def check_leave_out(config: TrainConfig, examples: list) -> None:
    """Refuse a ``retrieval.leave_out`` field some of ``examples`` lack (before any extraction)."""
    leave_out = config.retrieval.leave_out
    missing = [e.image_id for e in examples if leave_out != IMAGE and leave_out not in e.metadata]
    if missing:
        raise ConfigError(f"retrieval.leave_out: {len(missing)} images have no {leave_out!r} field "
                          f"(e.g. {missing[0]!r}); name a per-image field of the dataset, or 'image'")


def leave_out_labels(config: TrainConfig, examples: list) -> Optional[np.ndarray]:
    """Each example's ``retrieval.leave_out`` field, or ``None`` for "image" (leave out only itself)."""
    leave_out = config.retrieval.leave_out
    return None if leave_out == IMAGE else np.array([str(e.metadata[leave_out]) for e in examples])


def training_retrieval(model, config: TrainConfig, cache, train_examples: list, pairs,
                       log: Callable[[str], None] = print) -> PairRetrieved:
    """Set ``model.datastore`` to the datastore of the training images (the feature cache's
    first rows, as the finished model's will be) and return each training pair's retrieved
    captions: the captions of its image's nearest training images, in the pair's caption
    language (images as rows, for self-critical training: the model's first language), leaving
    out the image itself and, with ``config.retrieval.leave_out`` naming a per-image field of
    the dataset (``artist``), every image of the same value."""
    check_training_retrieval(model, config, train_examples)
    shape, leave_out = model.decoder.retrieved_shape, config.retrieval.leave_out
    labels = leave_out_labels(config, train_examples)
    pooled = pooled_rows(features_from_cache(cache, range(len(train_examples))), len(train_examples))
    model.datastore = build_datastore(model, train_examples, [Features(pooled)], config.retrieval.dims,
                                      RerankConfig(neighbours=config.retrieval.neighbours))
    neighbours = own_rows_neighbours(model.datastore, pooled, shape[0], labels)
    default = model.vocab.default_language
    languages = pairs.languages if isinstance(pairs, CaptionPairs) else np.full(len(pairs), default)
    tables = {language: retrieved_tokens(model.datastore, neighbours, model.vocab, language, shape)
              for language in sorted(set(languages.tolist()))}
    log(f"retrieval: {len(model.datastore)} training images; each reads its {shape[0]} nearest others' captions "
        f"(leaving out {'itself' if labels is None else f'its own {leave_out}'})")
    return PairRetrieved(tables, pairs.image_rows, languages)


__all__ = ["PairRetrieved", "check_leave_out", "check_training_retrieval", "leave_out_labels", "training_retrieval"]
