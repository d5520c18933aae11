"""What the benchmarks share: the data a decoder comparison trains on (``prepare``), reports,
and scoring by group. Benchmarks run from the repository root as modules
(``python -m benchmarks.experiments.compare_decoders ...``), so they import this as
``benchmarks.common``."""
from __future__ import annotations

import json
import random
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from captioner.cache import cache_root
from captioner.data.feature_cache import FeatureCache
from captioner.data.sources import read_dataset, split_examples, validate_examples
from captioner.data.vocab import Vocabulary
from captioner.encoders import create_encoder
from captioner.metrics.groups import evaluate_by_group

GROUP_METRICS = ("BLEU", "CIDEr")  # what the per-artist tables report (plus exact match)


def same_width_options(width: int) -> dict[str, dict]:
    """Decoder options that give every family the same main width."""
    return {
        "one-shot": {"hidden_dim": width},
        "show-tell": {"embed_dim": width, "hidden_dim": width},
        "merge": {"embed_dim": width, "hidden_dim": width},
        "show-attend-tell": {"embed_dim": width, "hidden_dim": width, "attention_dim": width},
        "transformer": {"d_model": width, "num_layers": 2, "num_heads": 4, "ff_dim": 4 * width},
    }


def subsample(examples: list, limit: int, seed: int) -> list:
    if not limit or limit >= len(examples):
        return examples
    keep = sorted(random.Random(seed).sample(range(len(examples)), limit))
    return [examples[i] for i in keep]


def load_data(args):
    examples = read_dataset(args.data, args.images, args.format, args.val_fraction, seed=args.seed)
    problems = validate_examples(examples)
    if problems:
        raise SystemExit(f"{args.data} has problems:\n{problems.report()}")
    train = subsample(split_examples(examples, "train"), args.max_train_images, args.seed)
    held_out_split = "test" if split_examples(examples, "test") else "val"
    test = subsample(split_examples(examples, held_out_split), args.max_test_images, args.seed)
    if not train or not test:
        raise SystemExit(f"{args.data}: need train and test (or val) examples; pass --val-fraction for unsplit files")
    return train, test, held_out_split


def score(name: str, test_rows: np.ndarray, predicted: list[str], captions: list[str], groups: list[str]) -> dict:
    keys = [str(r) for r in test_rows]
    scores = evaluate_by_group(dict(zip(keys, predicted)), {k: [captions[int(k)]] for k in keys},
                               dict(zip(keys, groups)), metrics=GROUP_METRICS)
    return {group: {"images": s["images"], "exact_match": s["exact_match"], "Bleu_4": s["Bleu_4"],
                    "CIDEr": s["CIDEr"]} for group, s in scores.items()} | {"protocol": name}


def write_report(script: str, argv, args, data: "BenchmarkData", results: list[dict], table: str) -> None:
    """The command, settings, results and table as JSON at ``args.json``."""
    report = {
        "command": " ".join(["python", script, *(argv or sys.argv[1:])]),
        "settings": {**vars(args), **data.settings()},
        "results": results,
        "table": table,
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(report, indent=2, ensure_ascii=False), encoding="utf-8")


@dataclass
class BenchmarkData:
    """What every run of a benchmark shares: the examples, vocabulary, encoder and feature cache."""

    train: list
    test: list
    held_out_split: str
    vocab: Vocabulary
    encoder: object
    preprocess: object
    cache: FeatureCache
    device: torch.device
    extraction_seconds: float

    def settings(self) -> dict:
        return {"held_out_split": self.held_out_split, "train_images": len(self.train),
                "test_images": len(self.test), "vocabulary": len(self.vocab), "preprocess": self.preprocess.to_dict(),
                "device": str(self.device), "torch_threads": torch.get_num_threads(),
                "feature_extraction_seconds": self.extraction_seconds}


def prepare(args, device) -> BenchmarkData:
    """Examples (``load_data``), the training vocabulary, and the frozen encoder's features of
    train + test in one cache with the grid (the pooled-only decoders ignore the grid)."""
    train, test, held_out_split = load_data(args)
    vocab = Vocabulary.build((c for e in train for c in e.captions), args.min_word_count)
    encoder = create_encoder(args.encoder)
    overrides = {k: v for k, v in (("resize", args.resize), ("crop_size", args.crop_size)) if v is not None}
    preprocess = replace(encoder.default_preprocess, **overrides)
    print(f"train {len(train)} images, {held_out_split} {len(test)} images, vocabulary {len(vocab)}; "
          f"{args.encoder} at {preprocess.crop_size}px ({preprocess.resize}) on {device}", file=sys.stderr)
    cache = FeatureCache(args.feature_cache or cache_root("features"), encoder, preprocess,
                         [str(e.path) for e in train + test], with_grid=True)
    started = time.perf_counter()
    cache.build(device, progress=sys.stderr.isatty())
    extraction_seconds = time.perf_counter() - started
    print(f"features: {extraction_seconds:.0f} s ({cache.folder})", file=sys.stderr)
    return BenchmarkData(train, test, held_out_split, vocab, encoder, preprocess, cache.open(), device,
                         extraction_seconds)


