"""The ``captioner`` command line: caption, train, evaluate, models, data, serve."""
from __future__ import annotations

import argparse
import glob
import os
import sys
from pathlib import Path

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff"}


def _add_device(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda or cuda:N")


def expand_image_paths(patterns: list[str]) -> list[str]:
    """Images named directly, in a directory (sorted, recursive) or by a glob, in that order."""
    paths: list[str] = []
    for pattern in patterns:
        path = Path(pattern)
        if path.is_dir():
            paths.extend(str(p) for p in sorted(path.rglob("*")) if p.suffix.lower() in IMAGE_SUFFIXES)
        elif path.exists():
            paths.append(str(path))
        else:
            matches = sorted(glob.glob(pattern, recursive=True))
            paths.extend(matches if matches else [pattern])  # a missing file gets its error line
    return paths


# --- caption -----------------------------------------------------------------------
def add_caption(sub) -> None:
    p = sub.add_parser("caption", help="caption images (files, directories or globs)")
    p.add_argument("paths", nargs="+", metavar="PATH")
    p.add_argument("--model", help="model directory (default: the bundled model)")
    p.add_argument("--beam-size", type=int, default=3)
    p.add_argument("--max-length", type=int, default=None)
    p.add_argument("--n-best", type=int, default=1)
    p.add_argument("--length-penalty", type=float, default=0.0)
    p.add_argument("--no-repeat-ngram-size", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--num-workers", type=int, default=0, help="image-decoding worker processes")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.add_argument("--output", help="write JSON lines here (resumes: images already in it are skipped)")
    p.add_argument("--attention-out", help="write one attention PNG per image into this folder")
    p.add_argument("--onnx", action="store_true", help="run the encoder in ONNX Runtime (CPU; the 'onnx' extra)")
    _add_device(p)
    p.set_defaults(run=run_caption)


def run_caption(args) -> int:
    from .inference import caption_paths

    return caption_paths(args)


# --- train -------------------------------------------------------------------------
TRAIN_FLAGS = {
    "data": ("data.path", str),
    "images": ("data.images", str),
    "format": ("data.format", str),
    "val_fraction": ("data.val_fraction", float),
    "min_word_count": ("data.min_word_count", int),
    "max_length": ("data.max_length", int),
    "feature_cache": ("data.feature_cache", str),
    "num_workers": ("data.num_workers", int),
    "out": ("out", str),
    "encoder": ("model.encoder", str),
    "decoder": ("model.decoder", str),
    "trainable_blocks": ("model.trainable_blocks", int),
    "word_vectors": ("model.word_vectors", str),
    "epochs": ("epochs", int),
    "batch_size": ("batch_size", int),
    "lr": ("optim.lr", float),
    "encoder_lr": ("optim.encoder_lr", float),
    "seed": ("seed", int),
    "device": ("device", str),
    "patience": ("patience", int),
    "val_beam_size": ("val_beam_size", int),
    "objective": ("objective", str),
    "init_from": ("init_from", str),
    "scst_samples": ("scst.samples", int),
    "scst_baseline": ("scst.baseline", str),
    "scst_temperature": ("scst.temperature", float),
    "label_smoothing": ("optim.label_smoothing", float),
    "warmup_steps": ("optim.warmup_steps", int),
}


def add_train(sub) -> None:
    p = sub.add_parser("train", help="train a captioning model; --out ends as a model directory")
    for flag, (key, kind) in TRAIN_FLAGS.items():
        p.add_argument("--" + flag.replace("_", "-"), type=kind, default=None, help=f"config key {key}")
    p.add_argument("--config", help="YAML config (code defaults < YAML < these flags)")
    p.add_argument("--skip-invalid", action="store_true", default=None, help="drop invalid examples")
    p.add_argument("--no-pretrained", action="store_true", help="random encoder weights (tests)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--onnx", action="store_true", default=None,
                   help="extract the feature cache with ONNX Runtime (CPU; the 'onnx' extra): 1.5-4x faster there")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="any config key, e.g. optim.schedule=cosine")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument("--nproc", type=int, default=1, metavar="N",
                   help="train with N processes on this machine (DDP through torchrun: one per GPU, or CPU processes); "
                        "--batch-size is per process")
    p.set_defaults(run=run_train)


def parse_overrides(args) -> dict:
    import yaml

    overrides = {}
    for flag, (key, _) in TRAIN_FLAGS.items():
        value = getattr(args, flag)
        if value is not None:
            overrides[key] = value
    if args.skip_invalid:
        overrides["data.skip_invalid"] = True
    if args.no_pretrained:
        overrides["model.pretrained"] = False
    if args.no_progress:
        overrides["progress"] = False
    if args.onnx:
        overrides["data.onnx"] = True
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--set expects KEY=VALUE, got {item!r}")
        overrides[key.strip()] = yaml.safe_load(value)
    return overrides


def run_train(args) -> int:
    if args.nproc > 1 and "LOCAL_RANK" not in os.environ:
        return launch_torchrun(args.nproc, args.argv)
    from .train.config import load_config
    from .train.loop import main

    config = load_config(args.config, parse_overrides(args))
    if not config.data.path or not config.out:
        raise ValueError("captioner train needs --data FILE and --out DIR (or data.path / out in --config)")
    main(config, resume=args.resume)
    return 0


def launch_torchrun(nproc: int, argv: list[str]) -> int:
    """Run this same command as ``nproc`` torchrun processes on this machine."""
    import subprocess

    rest, skip = [], False
    for item in argv:  # without --nproc: torchrun would take it for its own (ambiguous) option
        if skip:
            skip = False
        elif item == "--nproc":
            skip = True
        elif not item.startswith("--nproc="):
            rest.append(item)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
               "-m", "captioner", *rest]
    return subprocess.call(command)


# --- evaluate ----------------------------------------------------------------------
def add_evaluate(sub) -> None:
    p = sub.add_parser("evaluate", help="score a model on a dataset split, or a predictions file")
    p.add_argument("--model", help="model directory (default: the bundled model)")
    p.add_argument("--data", help="captions file of any supported format")
    p.add_argument("--images", help="image root (default: the captions file's folder)")
    p.add_argument("--format", help="captions format (default: detected)")
    p.add_argument("--split", default="test")
    p.add_argument("--beam-size", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--output", help="write the generated captions as a COCO results file")
    p.add_argument("--predictions", help="COCO results file [{image_id, caption}] to score")
    p.add_argument("--references", help="COCO captions file with the references")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    _add_device(p)
    p.set_defaults(run=run_evaluate)


def run_evaluate(args) -> int:
    from .inference import evaluate_command

    return evaluate_command(args)


# --- models, data, serve -----------------------------------------------------------
def add_models(sub) -> None:
    p = sub.add_parser("models", help="list registered encoders and decoders")
    p.set_defaults(run=run_models)


def run_models(args) -> int:
    from . import list_decoders, list_encoders

    print("encoders: " + ", ".join(list_encoders()))
    print("decoders: " + ", ".join(list_decoders()))
    return 0


def add_data(sub) -> None:
    p = sub.add_parser("data", help="build datasets")
    data_sub = p.add_subparsers(dest="dataset", required=True)
    emoji = data_sub.add_parser("emoji", help="emoji art with Unicode CLDR names (offline, from package registries)")
    from .data import emoji as emoji_data

    emoji_data.add_arguments(emoji)
    emoji.set_defaults(run=emoji_data.run)


def add_serve(sub) -> None:
    p = sub.add_parser("serve", help="HTTP API and web page (needs the 'serve' extra)")
    p.add_argument("--model", help="model directory (default: the bundled model)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--max-batch", type=int, default=16, help="images per model call (1 = no micro-batching)")
    p.add_argument("--max-wait-ms", type=float, default=5.0, help="how long a batch waits to fill")
    p.add_argument("--max-upload-bytes", type=int, default=20 * 1024 * 1024)
    p.add_argument("--max-pixels", type=int, default=40_000_000, help="refuse larger images (decompression bombs)")
    p.add_argument("--max-files", type=int, default=16, help="images per request")
    _add_device(p)
    p.set_defaults(run=run_serve)


def run_serve(args) -> int:
    from .serve import serve

    return serve(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="captioner", description="Image captioning: train, evaluate, caption, serve.")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (add_caption, add_train, add_evaluate, add_models, add_data, add_serve):
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # for commands that relaunch themselves
    try:
        return args.run(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # `captioner caption DIR | head`: the reader left; stop quietly like other Unix tools.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except (ValueError, FileNotFoundError, FileExistsError, RuntimeError, KeyError) as e:
        # Expected failures (bad input, missing files, offline weights) get one clear message.
        message = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"captioner {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
