"""Cross-entropy alone vs cross-entropy then self-critical (both baselines), and label smoothing
0 vs 0.1, for show-attend-tell and the transformer under one budget (same data, features, widths,
epochs, batch size, seed); scored on the held-out split with beam search.

Data and features as in ``compare_decoders.py`` (whose loading and widths this reuses): a seeded
subsample of train and test, the frozen encoder's pooled vector and region grid cached once.
Per decoder: a cross-entropy model (``--epochs``, label smoothing 0), then ``--scst-epochs`` of
self-critical training from a copy of it with each baseline, and a second cross-entropy model with
label smoothing 0.1. Every model is scored after its last epoch (no validation, no early stop):
BLEU-4, CIDEr-D, exact match, the share of captions ending in a function word, its training
seconds on this machine (self-critical rows: the self-critical stage alone), and CIDEr-D on
``--score-train-images`` training images (what self-critical training optimises).

    OMP_NUM_THREADS=1 python -m benchmarks.experiments.scst_emoji --data /work/data/emoji/dataset.json \\
        --max-train-images 3000 --max-test-images 600 --resize squash --crop-size 160 --json runs/scst_emoji.json
"""
from __future__ import annotations

import argparse
import copy
import sys
import time

from benchmarks.common import prepare, same_width_options, write_report
from captioner import Captioner, create_decoder
from captioner.data.loaders import BucketBatchSampler, CaptionPairs
from captioner.objectives import SelfCritical, create_objective, reward_document_frequencies
from captioner.train.config import load_config
from captioner.device import resolve_device
from captioner.data.batches import FeatureBatches, ImageTargets
from captioner.decoding import DecodeOptions
from captioner.evaluate import caption_and_score
from captioner.train.loop import TrainContext, make_optimizer, make_scheduler, seed_everything, train_one_epoch
from captioner.train.state import Progress


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="captions file with train and test (or val) splits")
    p.add_argument("--images", help="image root (default: the captions file's folder)")
    p.add_argument("--format", help="captions format (default: detected)")
    p.add_argument("--val-fraction", type=float, default=0.0)
    p.add_argument("--decoders", nargs="+", default=["show-attend-tell", "transformer"])
    p.add_argument("--encoder", default="efficientnet_lite0")
    p.add_argument("--resize", choices=("shorter", "squash"))
    p.add_argument("--crop-size", type=int)
    p.add_argument("--width", type=int, default=256)
    p.add_argument("--epochs", type=int, default=10, help="cross-entropy epochs")
    p.add_argument("--batch-size", type=int, default=64, help="captions a cross-entropy step")
    p.add_argument("--lr", type=float, default=1e-3, help="cross-entropy learning rate (Adam, constant)")
    p.add_argument("--label-smoothing", type=float, default=0.1, help="of the second cross-entropy model (0: none)")
    p.add_argument("--scst-epochs", type=int, default=3)
    p.add_argument("--scst-batch-size", type=int, default=32, help="images a self-critical step")
    p.add_argument("--scst-lr", type=float, default=1e-4)
    p.add_argument("--samples", type=int, default=5, help="captions sampled per image")
    p.add_argument("--baselines", nargs="+", default=["mean-of-others", "greedy"])
    p.add_argument("--score-train-images", type=int, default=500,
                   help="also score this many training images (what self-critical optimises; 0: none)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--min-word-count", type=int, default=3)
    p.add_argument("--max-length", type=int, default=16)
    p.add_argument("--max-train-images", type=int, default=3000)
    p.add_argument("--max-test-images", type=int, default=600)
    p.add_argument("--beam-size", type=int, default=3)
    p.add_argument("--feature-cache")
    p.add_argument("--device", default="auto")
    p.add_argument("--json", help="write the settings and results here")
    return p.parse_args(argv)


def run_epochs(model, objective, pairs, cache, epochs, batch_size, lr, args, device, name) -> tuple[float, float]:
    """Train ``model`` in place with the real ``train_one_epoch``; returns the training seconds
    (wall clock, and this process's CPU time: on a shared machine the wall clock also counts waits)."""
    config = load_config(overrides={"batch_size": batch_size, "epochs": epochs, "seed": args.seed, "optim.lr": lr,
                                    "progress": False, "log_every": 0, "data.max_length": args.max_length})
    sampler = BucketBatchSampler(pairs.lengths, batch_size, args.seed)
    batches = FeatureBatches(cache, pairs, sampler, device)
    optimizer = make_optimizer(model, config)
    context = TrainContext(model, objective, batches, optimizer, make_scheduler(optimizer, config, len(batches)),
                           config, device)
    seconds, cpu_started = 0.0, time.process_time()
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        started = time.perf_counter()
        means, _ = train_one_epoch(context, Progress(epoch=epoch))
        seconds += time.perf_counter() - started
        shown = ", ".join(f"{k} {v:.3f}" for k, v in objective.summarize(means).items())
        print(f"  {name} epoch {epoch + 1}: {shown} ({time.perf_counter() - started:.0f} s)",
              file=sys.stderr, flush=True)
    return seconds, time.process_time() - cpu_started


def score(model, name, decoder, seconds, evaluations, args, device) -> dict:
    """Metrics of ``model`` on the held-out images, and CIDEr-D on the scored training images."""
    (test, test_rows, test_pairs, cache), seen = evaluations
    record, predictions = caption_and_score(model, test, test_rows, test_pairs, cache, 64, DecodeOptions(beam_size=args.beam_size), device)
    result = {"decoder": decoder, "training": name, "train_seconds": seconds[0], "train_cpu_seconds": seconds[1],
              "Bleu_4": record["Bleu_4"], "CIDEr": record["CIDEr"], "exact_match": record["exact_match"],
              "bad_ending": record["bad_ending"], "examples": {str(k): v for k, v in list(predictions.items())[:5]}}
    if seen is not None:
        result["train_CIDEr"] = caption_and_score(model, *seen[:3], cache, 64, DecodeOptions(beam_size=args.beam_size), device,
                                                  metrics=("CIDEr",))[0]["CIDEr"]
    print(f"  {decoder} / {name}: CIDEr-D {result['CIDEr']:.3f}, BLEU-4 {result['Bleu_4']:.3f}, exact "
          f"{result['exact_match']:.3f}, bad endings {result['bad_ending']:.3f}, "
          f"train CIDEr-D {result.get('train_CIDEr', float('nan')):.3f}", file=sys.stderr, flush=True)
    return result


def markdown_table(results: list[dict]) -> str:
    lines = ["| decoder | training | BLEU-4 | CIDEr-D | vs its CE | exact match | bad endings | train s (CPU s) "
             "| CIDEr-D on seen train images |", "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    base = {}
    for r in results:
        if r["training"] == "cross-entropy":
            base[r["decoder"]] = r["CIDEr"]
        gain = f"{100 * (r['CIDEr'] / base[r['decoder']] - 1):+.1f}%" if r["training"].startswith("+ self") else ""
        lines.append(f"| {r['decoder']} | {r['training']} | {r['Bleu_4']:.3f} | {r['CIDEr']:.3f} | {gain} | "
                     f"{100 * r['exact_match']:.1f}% | {100 * r['bad_ending']:.1f}% | "
                     f"{r['train_seconds']:.0f} ({r['train_cpu_seconds']:.0f}) | "
                     f"{r.get('train_CIDEr', float('nan')):.3f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    device = resolve_device(args.device)
    data = prepare(args, device)
    train, test, vocab, encoder, preprocess, cache = (
        data.train, data.test, data.vocab, data.encoder, data.preprocess, data.cache)
    train_rows, test_rows = list(range(len(train))), list(range(len(train), len(train) + len(test)))
    pairs = CaptionPairs(train, train_rows, vocab, args.max_length)
    test_pairs = CaptionPairs(test, test_rows, vocab, args.max_length)
    images = ImageTargets(len(train))
    seen = train[: args.score_train_images]
    evaluations = ((test, test_rows, test_pairs, cache),
                   (seen, list(range(len(seen))), CaptionPairs(seen, list(range(len(seen))), vocab, args.max_length))
                   if seen else None)
    scorer, references = reward_document_frequencies([e.captions for e in train])
    prepared = scorer.prepare_references(references)
    widths = same_width_options(args.width)
    results = []
    for decoder_name in args.decoders:
        trained = {}
        for smoothing in sorted({0.0, args.label_smoothing}):
            seed_everything(args.seed)  # every model starts from the same weights
            decoder = create_decoder(decoder_name, len(vocab), encoder.pooled_dim, encoder.grid_dim,
                                     **widths[decoder_name])
            model = Captioner(encoder, decoder, vocab, preprocess, args.max_length).to(device)
            config = load_config(overrides={"optim.label_smoothing": smoothing})
            objective = create_objective("cross-entropy", vocab=vocab, config=config)
            name = "cross-entropy" if smoothing == 0 else f"cross-entropy, label smoothing {smoothing}"
            seconds = run_epochs(model, objective, pairs, cache, args.epochs, args.batch_size, args.lr, args, device,
                                 f"{decoder_name} {name}")
            trained[smoothing] = model
            results.append(score(model, name, decoder_name, seconds, evaluations, args, device))
            if smoothing == 0:
                for baseline in args.baselines:
                    seed_everything(args.seed)
                    tuned = copy.deepcopy(trained[0.0])
                    objective = SelfCritical(scorer, prepared, vocab, args.samples, baseline)
                    name = f"+ self-critical ({baseline})"
                    seconds = run_epochs(tuned, objective, images, cache, args.scst_epochs, args.scst_batch_size,
                                         args.scst_lr, args, device, f"{decoder_name} {name}")
                    results.append(score(tuned, name, decoder_name, seconds, evaluations, args, device))
    table = markdown_table(results)
    print(table)
    if args.json:
        write_report("-m benchmarks.experiments.scst_emoji", argv, args, data, results, table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
