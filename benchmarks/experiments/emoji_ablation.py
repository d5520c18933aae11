"""Score trained emoji models on held-out artists and held-out emoji, one table row per run.

The runs of an ablation share one dataset split (``captioner data emoji --holdout-artist ...``)
and one training budget; this script captions the ``test-artist`` split (every image of the
held-out artists) and the ``test`` split (emoji never seen in training, in the training
artists' styles) with each run's best model, from a feature cache of those images (one
extraction per encoder + preprocessing, shared by every run that uses them), and scores them
like ``captioner evaluate --by artist``: exact match after PTB tokenization, coco-caption
BLEU-4 and CIDEr-D, with the held-out artists' images also split into emoji seen in training
(drawn by other artists) and unseen.

    OMP_NUM_THREADS=2 python -m benchmarks.experiments.emoji_ablation \\
        --data data/emoji/dataset-fluent.json --beam-size 3 --output ablation.json \\
        runs/f-base runs/f-aug2 runs/f-ls ...
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import score
from captioner import Captioner
from captioner.cache import cache_root
from captioner.data.emoji import ARTIST_SPLIT
from captioner.data.feature_cache import FeatureCache
from captioner.data.sources import read_dataset
from captioner.evaluate import iter_val_features

SPLITS = (ARTIST_SPLIT, "test")


@torch.no_grad()
def caption_split(model: Captioner, examples, cache_root_dir: Path, beam_size: int, batch_size: int) -> list[str]:
    """The model's caption of every example, from the feature cache of their images."""
    cache = FeatureCache(cache_root_dir, model.encoder, model.preprocess, [e.image_ref for e in examples],
                         with_grid=model.decoder.needs_grid)
    cache.build(progress=False)
    model.eval()
    captions = []
    for _, features in iter_val_features(model, examples, list(range(len(examples))), cache, batch_size, "cpu"):
        captions += [model.vocab.decode(h[0].tokens) for h in model.generate(features, beam_size=beam_size)]
    return captions


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", help="trained model directories (captioner train --out)")
    parser.add_argument("--data", required=True, help="the dataset.json the runs were trained on")
    parser.add_argument("--beam-size", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--cache-dir", default=None, help="feature cache root (default: captioner's cache)")
    parser.add_argument("--output", default=None, help="write every score as JSON here")
    args = parser.parse_args(argv)

    examples = read_dataset(args.data)
    train_captions = {c for e in examples if e.split == "train" for c in e.captions}
    cache_dir = Path(args.cache_dir) if args.cache_dir else cache_root("features")
    results = []
    for run in args.runs:
        started = time.monotonic()
        model = Captioner.from_pretrained(run)
        result = {"run": run}
        for split in SPLITS:
            chosen = [e for e in examples if e.split == split]
            if not chosen:
                continue
            predicted = caption_split(model, chosen, cache_dir, args.beam_size, args.batch_size)
            rows = np.arange(len(chosen))
            references = [e.captions[0] for e in chosen]
            result[split] = score(split, rows, predicted, references,
                                  [str(e.metadata.get("artist", "?")) for e in chosen])
            if split == ARTIST_SPLIT:
                seen = ["seen emoji" if e.captions[0] in train_captions else "unseen emoji" for e in chosen]
                by_seen = score(split, rows, predicted, references, seen)
                result[split] |= {g: s for g, s in by_seen.items() if g not in ("all", "protocol")}
        result["seconds"] = round(time.monotonic() - started, 1)
        results.append(result)
        print(json.dumps({"run": run, **{s: result[s]["all"] for s in SPLITS if s in result}}), flush=True)

    print(f"| run | {ARTIST_SPLIT} exact | BLEU-4 | CIDEr-D | seen / unseen emoji exact | test exact | CIDEr-D |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in results:
        a, t = r.get(ARTIST_SPLIT, {}), r.get("test", {})
        seen, unseen = a.get("seen emoji", {}), a.get("unseen emoji", {})
        print(f"| {Path(r['run']).name} | {100 * a['all']['exact_match']:.1f}% | {a['all']['Bleu_4']:.3f} | "
              f"{a['all']['CIDEr']:.3f} | {100 * seen.get('exact_match', 0):.1f}% / "
              f"{100 * unseen.get('exact_match', 0):.1f}% | {100 * t['all']['exact_match']:.1f}% | "
              f"{t['all']['CIDEr']:.3f} |")
    if args.output:
        Path(args.output).write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
