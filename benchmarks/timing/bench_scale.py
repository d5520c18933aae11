"""Scale-out paths on one machine: captioning from a folder, from WebDataset shards and with
Ray Data, and training from shards vs from a folder.

Every run is the real command line in a fresh process (``python -m captioner ...``), timed
wall-clock end to end, start-up included — what a user waits for. Images are the first
``--images`` emoji PNGs of a ``captioner data emoji`` folder (Karpathy ``dataset.json`` +
``images/``), captioned by the bundled model (EfficientNet-Lite0 → show-attend-tell, 160²,
beam 3); the same files are written as shards of ``--per-shard`` samples (``.png`` +
``.txt``). Training is 1 epoch of show-tell on their names.

    OMP_NUM_THREADS=1 python -m benchmarks.timing.bench_scale --emoji /work/data/emoji --images 2000

Each captioning path is also run on one image: its start-up (interpreter, model, Ray's local
cluster) is subtracted for the rate after start-up. Prints one JSON object per row and a
Markdown table at the end.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from captioner.data.webdataset import write_shards


def _run(command: list[str], env: dict) -> float:
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "captioner", *command], env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode not in (0, 1):  # 1: some images unreadable, still a full run
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    return seconds


def _lines(path: Path) -> int:
    return len(path.read_text().splitlines())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--emoji", type=Path, required=True, help="a folder made by `captioner data emoji`")
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--per-shard", type=int, default=100)
    parser.add_argument("--train-images", type=int, default=500, help="images for the training rows")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temp folder)")
    args = parser.parse_args()

    work = Path(args.work or tempfile.mkdtemp(prefix="bench-scale-"))
    dataset = json.loads((args.emoji / "dataset.json").read_text())["images"][: args.images]
    folder = work / "images"
    folder.mkdir(parents=True, exist_ok=True)
    samples = []
    for i, image in enumerate(dataset):
        source = args.emoji / image["filepath"] / image["filename"]
        key = f"{i:06d}"
        shutil.copyfile(source, folder / f"{key}.png")
        samples.append((key, {"png": source.read_bytes(), "txt": image["sentences"][0]["raw"].encode()}))
    shards = write_shards(samples, str(work / "shards" / "{:05d}.tar"), args.per_shard)
    pattern = str(work / "shards" / f"{{00000..{len(shards) - 1:05d}}}.tar")
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
           "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "src"), "CAPTIONER_CACHE": str(work / "cache")}
    caption = ["--beam-size", "3", "--batch-size", str(args.batch_size), "--device", "cpu"]
    rows = []

    def row(name: str, seconds: float, count: int, unit: str = "images") -> None:
        rows.append({"path": name, "seconds": round(seconds, 1), f"{unit}_per_second": round(count / seconds, 1)})
        print(json.dumps(rows[-1]), flush=True)

    # One image through each path: start-up (interpreter, model, Ray cluster), subtracted for the steady rate.
    (work / "one").mkdir(exist_ok=True)
    shutil.copyfile(folder / f"{samples[0][0]}.png", work / "one" / "first.png")
    one_shard = write_shards(samples[:1], str(work / "one-shard" / "{:05d}.tar"), 1)[0]
    for name, inputs, one, extra in (("caption: folder (CLI, 1 process)", [str(folder)], [str(work / "one")], []),
                                     ("caption: shards (CLI, 1 process)", [pattern], [one_shard], []),
                                     ("caption: Ray Data, 1 CPU actor", [str(folder)], [str(work / "one")],
                                      ["--engine", "ray"])):
        output = work / f"{len(rows)}.jsonl"
        seconds = _run(["caption", *inputs, "--output", str(output), *caption, *extra], env)
        count = _lines(output)
        startup = _run(["caption", *one, "--output", str(work / f"one-{len(rows)}.jsonl"), *caption, *extra], env)
        row(name, seconds, count)
        rows[-1]["startup_seconds"] = round(startup, 1)
        rows[-1]["steady_images_per_second"] = round((count - 1) / (seconds - startup), 1)
    for r in rows[1:]:
        r["seconds_over_folder_cli"] = round(r["seconds"] / rows[0]["seconds"], 2)
        r["steady_rate_over_folder_cli"] = round(r["steady_images_per_second"] / rows[0]["steady_images_per_second"], 2)

    # Training: captions file for the folder, the same samples as shards.
    n = args.train_images
    with open(work / "train.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image", "caption"])
        writer.writerows([str(folder / f"{key}.png"), files["txt"].decode()] for key, files in samples[:n])
    train_shards = write_shards(samples[:n], str(work / "train-shards" / "{:05d}.tar"), args.per_shard)
    train_pattern = str(work / "train-shards" / f"{{00000..{len(train_shards) - 1:05d}}}.tar")
    for label, extra in (("frozen encoder (feature cache built + 1 epoch)", []),
                         ("fine-tuning (trainable_blocks=1, pixels, 1 epoch)",
                          ["--trainable-blocks", "1", "--set", "model.preprocess={crop_size: 64, resize_size: 64}",
                           "--set", "data.cache_activations=false"])):
        for source, data in (("folder", str(work / "train.csv")), ("shards", train_pattern)):
            out = work / f"run-{len(rows)}"
            seconds = _run(["train", "--data", data, "--out", str(out), "--encoder", "efficientnet_lite0",
                            "--epochs", "1", "--batch-size", str(args.batch_size), "--min-word-count", "1",
                            "--device", "cpu", "--no-progress", "--set", "log_every=0", *extra], env)
            row(f"train from {source}: {label}", seconds, n)
    print("\n| path | seconds | images/s | start-up s | images/s after start-up | time ÷ folder CLI's |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['path']} | {r['seconds']} | {r['images_per_second']} | {r.get('startup_seconds', '')} | "
              f"{r.get('steady_images_per_second', '')} | {r.get('seconds_over_folder_cli', '')} |")


if __name__ == "__main__":
    main()
