"""Every decoder family under one budget: same data, features, epochs, batch size, optimizer and
seed; scored on the held-out split with generated captions.

The frozen encoder's features (pooled vector and region grid) are extracted once into one
feature cache that every run reads; each decoder then trains with the real
``train_one_epoch`` for ``--epochs`` epochs (no validation, no early stopping: the last epoch
is scored) and captions the test split (the val split when there is no test split) with beam
search. Reported: BLEU-4 and CIDEr-D (``captioner.evaluate_captions``), exact match (share of
images whose caption equals a reference), teacher-forced test loss, trainable parameters and
training seconds per epoch on this machine.

By default every decoder is built at one width (256: embedding, hidden, attention, d_model) so
the comparison is of architectures, not of sizes; ``--family-defaults`` uses each family's own
defaults instead.

    python -m benchmarks.experiments.compare_decoders --data /work/data-cache/emoji/dataset.json \\
        --resize squash --crop-size 160 --epochs 4 --json runs/compare_decoders.json
    python -m benchmarks.experiments.compare_decoders --data tests/fixtures/tiny/captions.csv --val-fraction 0.2 \\
        --min-word-count 1 --epochs 2
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace

import numpy as np
import torch

from benchmarks.common import prepare, same_width_options, write_report
from captioner import Captioner, DecodeOptions, create_decoder
from captioner.data.batches import FeatureBatches
from captioner.data.loaders import BucketBatchSampler, CaptionPairs
from captioner.device import resolve_device
from captioner.evaluate import caption_and_score
from captioner.objectives import create_objective
from captioner.train.config import load_config
from captioner.train.loop import TrainContext, make_optimizer, make_scheduler, seed_everything, train_one_epoch
from captioner.train.state import Progress

# The article's order: no feedback, then image-as-first-word, merge, attention, transformer.
DECODERS = ("one-shot", "show-tell", "merge", "show-attend-tell", "transformer")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="captions file (Karpathy JSON with train/val/test, or any format)")
    p.add_argument("--images", help="image root (default: the captions file's folder)")
    p.add_argument("--format", help="captions format (default: detected)")
    p.add_argument("--val-fraction", type=float, default=0.0, help="held-out share for files without splits")
    p.add_argument("--decoders", nargs="+", default=list(DECODERS))
    p.add_argument("--encoder", default="efficientnet_lite0")
    p.add_argument("--resize", choices=("shorter", "squash"), help="override the encoder's preprocessing")
    p.add_argument("--crop-size", type=int, help="override the encoder's input size")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--width", type=int, default=256, help="the one width every decoder is built at")
    p.add_argument("--family-defaults", action="store_true", help="each family's default options instead")
    p.add_argument("--min-word-count", type=int, default=3)
    p.add_argument("--max-length", type=int, default=20, help="words per caption (training and generation)")
    p.add_argument("--max-train-images", type=int, default=0, help="a seeded random subset of train (0 = all)")
    p.add_argument("--max-test-images", type=int, default=0, help="a seeded random subset of test (0 = all)")
    p.add_argument("--beam-size", type=int, default=3)
    p.add_argument("--feature-cache", help="feature cache root (default: $CAPTIONER_CACHE/features)")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--json", help="write the settings and results here")
    return p.parse_args(argv)


def train_and_score(name, options, encoder, vocab, preprocess, cache, train, test, args, device) -> dict:
    seed_everything(args.seed)  # every decoder starts from the same RNG state
    decoder = create_decoder(name, len(vocab), encoder.pooled_dim, encoder.grid_dim, **options)
    model = Captioner(encoder, decoder, vocab, preprocess, args.max_length).to(device)
    config = load_config(overrides={
        "batch_size": args.batch_size, "epochs": args.epochs, "seed": args.seed, "optim.lr": args.lr,
        "progress": False, "log_every": 0, "data.max_length": args.max_length,
    })
    train_rows = list(range(len(train)))
    test_rows = list(range(len(train), len(train) + len(test)))
    pairs = CaptionPairs(train, train_rows, vocab, args.max_length)
    test_pairs = CaptionPairs(test, test_rows, vocab, args.max_length)
    sampler = BucketBatchSampler(pairs.lengths, args.batch_size, args.seed)
    batches = FeatureBatches(cache, pairs, sampler, device)
    optimizer = make_optimizer(model, config)
    scheduler = make_scheduler(optimizer, config, len(batches))
    objective = create_objective(config.objective, vocab=vocab, config=config)
    context = TrainContext(model, objective, batches, optimizer, scheduler, config, device)
    progress, seconds, losses = Progress(), [], []
    for epoch in range(args.epochs):
        sampler.set_epoch(epoch)
        progress = replace(progress, epoch=epoch, batch_in_epoch=0)
        started = time.perf_counter()
        loss = train_one_epoch(context, progress)[0]["loss"]
        seconds.append(time.perf_counter() - started)
        losses.append(loss)
        print(f"  {name} epoch {epoch + 1}: train loss {loss:.3f} ({seconds[-1]:.1f} s)", file=sys.stderr, flush=True)
    started = time.perf_counter()
    record, predictions = caption_and_score(model, test, test_rows, test_pairs, cache, args.batch_size,
                                            DecodeOptions(beam_size=args.beam_size), device)
    return {
        "decoder": name,
        "options": options,
        "parameters": sum(p.numel() for p in decoder.parameters() if p.requires_grad),
        "seconds_per_epoch": float(np.mean(seconds)),
        "train_loss": losses[-1],
        "test_loss": record["val_loss"],
        "Bleu_4": record.get("Bleu_4"),
        "CIDEr": record.get("CIDEr"),
        "exact_match": record["exact_match"],
        "caption_seconds": time.perf_counter() - started,
        "examples": {str(k): v for k, v in list(predictions.items())[:5]},
    }


def markdown_table(results: list[dict]) -> str:
    lines = [
        "| decoder | parameters | s / epoch | train loss | test loss | BLEU-4 | CIDEr-D | exact match |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r['decoder']} | {r['parameters'] / 1e6:.2f} M | {r['seconds_per_epoch']:.1f} | "
            f"{r['train_loss']:.3f} | {r['test_loss']:.3f} | {r['Bleu_4']:.3f} | {r['CIDEr']:.3f} | {100 * r['exact_match']:.1f}% |"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    data = prepare(args, device)
    train, test, vocab, encoder, preprocess, cache = (
        data.train, data.test, data.vocab, data.encoder, data.preprocess, data.cache)

    options = {name: {} for name in args.decoders} if args.family_defaults else same_width_options(args.width)
    results = []
    for name in args.decoders:
        results.append(train_and_score(name, options.get(name, {}), encoder, vocab, preprocess, cache, train, test,
                                       args, device))
    table = markdown_table(results)
    print(table)
    if args.json:
        write_report("-m benchmarks.experiments.compare_decoders", argv, args, data, results, table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
