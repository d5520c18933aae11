"""Making a model's datastore (:mod:`captioner.retrieval`): from a dataset's images and
captions, at the end of training or with ``captioner datastore build``; adding a user's own
captioned images (``captioner datastore add``); tuning the reranking on validation images."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from .captions import caption_signals
from .decoding import DecodeOptions, Features, host_array
from .retrieval import (
    DATASTORE_FILE, DEFAULT_DIMS, DEFAULT_NEIGHBOURS, Datastore, DatastoreError, Neighbours, RerankConfig,
)


# --- building from a dataset, tuning on validation images ---------------------------------
def example_captions(example, default_language: str) -> dict[str, list[str]]:
    """An example's captions by language (``{"en": [...], "de": [...]}``)."""
    out: dict[str, list[str]] = {}
    for caption, language in zip(example.captions, example.caption_languages(default_language)):
        out.setdefault(language, []).append(caption)
    return out


def pooled_rows(features, count: int) -> np.ndarray:
    """The pooled features of ``count`` images from batches of their features (any iterable, read
    once), in one array filled batch by batch: a small array kept per batch would sit between the
    batches' freed grids and hold the heap (a 6,000-image datastore peaked at 2.9 GB so, 1.8 GB
    this way). A single batch of all ``count`` rows is used as it is, not copied (training's
    retrieval gathers its rows first)."""
    pooled, filled = None, 0
    for f in features:
        batch = host_array(f.pooled)
        if pooled is None and len(batch) == count:
            pooled = batch
        elif filled + len(batch) <= count:
            if pooled is None:
                pooled = np.empty((count, *batch.shape[1:]), dtype=batch.dtype)
            pooled[filled : filled + len(batch)] = batch
        filled += len(batch)
    if pooled is None or filled != count:
        raise DatastoreError(f"{filled} features for {count} examples")
    return pooled


def build_datastore(model, examples: Sequence, features, dims: int = DEFAULT_DIMS,
                    rerank: Optional[RerankConfig] = None) -> Datastore:
    """A datastore of ``examples`` (their captions) and ``features`` (batches of their encoded
    images, in order) for ``model``; examples with the same captions share one caption group."""
    pooled = pooled_rows(features, len(examples))
    default = model.vocab.default_language
    group_of: dict[str, int] = {}
    groups, captions = [], []
    for example in examples:
        entry = example_captions(example, default)
        key = json.dumps(entry, sort_keys=True, ensure_ascii=False)
        if key not in group_of:
            group_of[key] = len(captions)
            captions.append(entry)
        groups.append(group_of[key])
    return Datastore.build(pooled, captions, model.encoder_identity(), dims, groups, rerank)


def own_rows_neighbours(store: Datastore, pooled: np.ndarray, k: int, labels: Optional[np.ndarray] = None,
                        chunk: int = 1024) -> Neighbours:
    """The ``k`` nearest rows of each of the store's own images (``pooled``: their features, row
    i of the store being image i), the image itself left out and, with ``labels`` (one per
    image), every image that shares its label: what an image retrieves when its decoder
    learns to read retrieved captions, which at caption time never include the image's own."""
    rows, similarity = [], []
    for start in range(0, len(pooled), chunk):
        stop = min(start + chunk, len(pooled))
        exclude = np.zeros((stop - start, len(store)), dtype=bool)  # (chunk, rows)
        exclude[np.arange(stop - start), np.arange(start, stop)] = True
        if labels is not None:
            exclude |= labels[start:stop, None] == labels[None, :]
        found = store.search(pooled[start:stop], k, exclude)
        rows.append(found.rows)
        similarity.append(found.similarity)
    return Neighbours(np.concatenate(rows), np.concatenate(similarity))


RERANK_WEIGHTS = (0.0, 0.25, 0.5, 1.0, 2.0)


def tune_rerank(model, features: Sequence, references: Sequence[Sequence[str]], language: Optional[str] = None,
                weights: Sequence[float] = RERANK_WEIGHTS, log=lambda message: None) -> dict:
    """Choose ``model.datastore.rerank`` on validation images (``features``: batches of them,
    ``references``: each image's captions in ``language``): every weight, with and without the
    neighbours' captions as candidates, and without reranking at all; the best CIDEr-D wins and
    is set on the datastore. Returns every setting's CIDEr-D and exact match."""
    from .metrics.cider import compute_cider_d

    store = model.datastore
    tokenize = lambda text: " ".join(model.vocab.tokenize(text, language))  # noqa: E731
    refs = {i: [tokenize(r) for r in image_refs] for i, image_refs in enumerate(references)}
    trials = [None] + [RerankConfig(store.rerank.neighbours, w, n) for n in (False, True) for w in weights
                       if w or n]
    results, best = {}, (-math.inf, None)
    for config in trials:
        options = DecodeOptions(language=language, retrieval=config is not None)
        if config is not None:
            store.rerank = config
        texts = [c.text for f in features for c in caption_signals(model, f, options)[0]]
        cider, _ = compute_cider_d({i: tokenize(t) for i, t in enumerate(texts)}, refs)
        exact = float(np.mean([tokenize(t) in refs[i] for i, t in enumerate(texts)]))
        name = "no reranking" if config is None else json.dumps(config.to_dict())
        results[name] = {"CIDEr": cider, "exact_match": exact}
        log(f"rerank {name}: CIDEr-D {cider:.3f}, exact {exact:.1%}")
        if cider > best[0]:
            best = (cider, config)
    store.rerank = best[1] or RerankConfig(store.rerank.neighbours, 0.0, False)  # keeps the beam's order
    return results


# --- the datastore command --------------------------------------------------------------
def _dataset_features(model, data, images, format, split: Optional[str], batch_size: int):
    """The examples of a captions file (of ``split``, or all) and batches of their pooled features,
    encoded as they are read (the region grids, 25 times larger, are dropped as each batch is
    encoded: a datastore keeps pooled features only, and 20,000 images' grids would take gigabytes)."""
    from .data.sources import DatasetError, read_dataset, split_examples, validate_examples

    examples = read_dataset(data, images, format)
    if split is not None:
        examples = split_examples(examples, split)
    if not examples:
        raise DatasetError(f"{data} has no {split or ''} examples to put in a datastore".replace("  ", " "))
    problems = validate_examples(examples)
    if problems:
        raise DatasetError(f"{data} has problems:\n{problems.report()}")
    paths = [e.image_ref for e in examples]
    return examples, (Features(model.encode_images(paths[i : i + batch_size]).pooled)
                      for i in range(0, len(paths), batch_size))


def datastore_command(action: str, model_dir, data, images=None, format=None, split: Optional[str] = "train",
                      dims: int = DEFAULT_DIMS, neighbours: int = DEFAULT_NEIGHBOURS, tune_split: Optional[str] = "val",
                      batch_size: int = 32, log=print) -> Path:
    """``captioner datastore build|add``: a model folder's datastore made from a captions file's
    ``split`` (reranking tuned on its ``tune_split`` when it has one), or the file's images added
    to it (every example, each its own caption group; no retraining). Returns the file written."""
    from .model import Captioner

    model = Captioner.from_pretrained(model_dir, with_datastore=action == "add")
    if action == "add":
        if model.datastore is None:
            raise DatastoreError(f"{model_dir} has no {DATASTORE_FILE} to add to; make one with "
                                 "`captioner datastore build`")
        examples, features = _dataset_features(model, data, images, format, None, batch_size)
        default = model.vocab.default_language
        model.datastore.add(pooled_rows(features, len(examples)),
                            [example_captions(e, default) for e in examples])
        log(f"added {len(examples)} images: {len(model.datastore)} in the datastore")
        return model.datastore.save(model_dir)
    examples, features = _dataset_features(model, data, images, format, split, batch_size)
    model.datastore = build_datastore(model, examples, features, dims, RerankConfig(neighbours=neighbours))
    log(f"datastore of {len(examples)} images ({split or 'every split'} of {data})")
    if tune_split is not None:
        from .data.sources import read_dataset, split_examples

        held_out = split_examples(read_dataset(data, images, format), tune_split)
        if held_out:
            language = model.vocab.default_language
            refs = [e.captions_in(language, language) for e in held_out]
            paths = [e.image_ref for e in held_out]
            tune_rerank(model, [model.encode_images(paths[i : i + batch_size])
                                for i in range(0, len(paths), batch_size)], refs, language, log=log)
    return model.datastore.save(model_dir)


__all__ = ["build_datastore", "datastore_command", "example_captions", "own_rows_neighbours", "pooled_rows",
           "tune_rerank"]
