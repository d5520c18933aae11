"""Nearest-neighbour retrieval baseline for the emoji dataset: the floor a trained captioner must beat.

Every image is encoded once by the frozen ImageNet EfficientNet-Lite0 (pooled 1280-d features, the
bundled model's preprocessing; captioner's feature cache, ONNX Runtime with ``--onnx``). A test image's
caption is the caption of its most cosine-similar training image. Scored with captioner's metrics
(exact match after PTB tokenization, coco-caption BLEU-4 and CIDEr-D), per artist and overall, with
:func:`captioner.metrics.groups.evaluate_by_group`.

Protocols (each a row group of the output):

- ``heldout-emoji``: train split → test split of the dataset as built (emoji never seen in training, in
  every artist's style). Exact match is 0 by construction: a test caption never occurs in train.
- ``--holdout A[,B...]`` (repeatable), leave-artists-out: the dataset is re-split with
  :func:`captioner.data.emoji.split_images` holding out those artists; train = the new train split (the
  other artists), test = every image of the held-out artists (the ``test-artist`` split). The results
  are also split into ``seen emoji`` (the caption occurs in the new train split, in another style) and
  ``unseen emoji``.

    OMP_NUM_THREADS=1 python -m benchmarks.experiments.knn_baseline --data /work/data/emoji/dataset.json \\
        --onnx --holdout fluent-flat --holdout emojione-2 --output knn.json
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import score
from captioner.cache import cache_root
from captioner.data.emoji import ARTIST_SPLIT, split_images
from captioner.data.feature_cache import FeatureCache
from captioner.data.sources import read_dataset
from captioner.encoders import create_encoder



def pooled_features(paths: list[str], size: int, onnx: bool, batch_size: int, cache_dir: Path) -> np.ndarray:
    """L2-normalised pooled EfficientNet-Lite0 features (images, 1280), from the feature cache."""
    encoder = create_encoder("efficientnet_lite0").eval()
    preprocess = dataclasses.replace(encoder.default_preprocess, crop_size=size, resize="squash")
    cache = FeatureCache(cache_dir, encoder, preprocess, paths, with_grid=False)
    cache.build(batch_size=batch_size, runtime="onnx" if onnx else "auto", progress=True)
    pooled = np.asarray(cache.pooled, dtype=np.float32)
    return pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)


def nearest_captions(features: np.ndarray, train_rows: np.ndarray, test_rows: np.ndarray,
                     captions: list[str], chunk: int = 2048) -> list[str]:
    """For each test row, the caption of the most similar train row (cosine; ties: the lower row)."""
    train = torch.from_numpy(features[train_rows])
    found = []
    for start in range(0, len(test_rows), chunk):
        query = torch.from_numpy(features[test_rows[start:start + chunk]])
        best = (query @ train.T).argmax(dim=1).numpy()  # (chunk,) index into train_rows
        found += [captions[train_rows[i]] for i in best]
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="dataset.json written by `captioner data emoji`")
    parser.add_argument("--holdout", action="append", default=[], metavar="ARTIST[,ARTIST...]",
                        help="one leave-artists-out run holding out these artists together (repeatable)")
    parser.add_argument("--size", type=int, default=160, help="encoder input side (the bundled model's: 160)")
    parser.add_argument("--onnx", action="store_true", help="extract features with ONNX Runtime (CPU)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-test", type=int, default=0,
                        help="score at most this many test images per run (seeded subsample; 0 = all)")
    parser.add_argument("--cache-dir", default=None, help="feature cache root (default: captioner's cache)")
    parser.add_argument("--output", default=None, help="write the scores as JSON here")
    args = parser.parse_args(argv)

    started = time.monotonic()
    examples = read_dataset(args.data)
    paths = [str(e.path) for e in examples]
    captions = [e.captions[0] for e in examples]
    artists = [str(e.metadata.get("artist", "?")) for e in examples]
    features = pooled_features(paths, args.size, args.onnx, args.batch_size,
                               Path(args.cache_dir) if args.cache_dir else cache_root("features"))
    extracted = time.monotonic() - started
    print(f"features: {features.shape[0]} images in {extracted:.0f} s")

    runs = [("heldout-emoji", [], [e.split for e in examples])]
    for spec in args.holdout:
        held = [a.strip() for a in spec.split(",") if a.strip()]
        unknown = sorted(set(held) - set(artists))
        if unknown:
            parser.error(f"--holdout {spec}: no images by {', '.join(unknown)} in {args.data}")
        runs.append(("leave-out " + "+".join(held), held, split_images(captions, artists, holdout_artists=held)))

    results = []
    rng = np.random.default_rng(0)
    for name, held, splits in runs:
        test_split = ARTIST_SPLIT if held else "test"
        train_rows = np.array([i for i, s in enumerate(splits) if s == "train"])
        test_rows = np.array([i for i, s in enumerate(splits) if s == test_split])
        if args.max_test and len(test_rows) > args.max_test:
            test_rows = np.sort(rng.choice(test_rows, args.max_test, replace=False))
        predicted = nearest_captions(features, train_rows, test_rows, captions)
        groups = [artists[r] for r in test_rows]
        result = score(name, test_rows, predicted, captions, groups)
        if held:
            train_captions = {captions[r] for r in train_rows}
            seen = ["seen emoji" if captions[r] in train_captions else "unseen emoji" for r in test_rows]
            by_seen = score(name, test_rows, predicted, captions, seen)
            result |= {g: s for g, s in by_seen.items() if g not in ("all", "protocol")}
        result["train_images"] = len(train_rows)
        results.append(result)

    print("| protocol | group | test images | exact match | BLEU-4 | CIDEr-D |")
    print("|---|---|---:|---:|---:|---:|")
    for result in results:
        for group, s in result.items():
            if isinstance(s, dict):
                print(f"| {result['protocol']} ({result['train_images']} train) | {group} | {s['images']} | "
                      f"{100 * s['exact_match']:.1f}% | {s['Bleu_4']:.3f} | {s['CIDEr']:.3f} |")
    print(f"total {time.monotonic() - started:.0f} s (features {extracted:.0f} s)")
    if args.output:
        Path(args.output).write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
