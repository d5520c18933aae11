"""The ``captioner`` command line: caption, train, evaluate, models, data, serve, export, import."""
from __future__ import annotations

import argparse
import json
import os
import sys

from .errors import CaptionerError, InvalidInputError


def _add_device(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda or cuda:N")


RUNTIME_HELP = ("engine for the frozen encoder: auto (default: ONNX Runtime on the CPU when installed, "
                "else torch), torch or onnx")


def _add_runtime(parser: argparse.ArgumentParser, onnx_help: str) -> None:
    parser.add_argument("--runtime", choices=["auto", "torch", "onnx"], default=None, help=RUNTIME_HELP)
    parser.add_argument("--onnx", action="store_true", help=onnx_help)


def _runtime(args) -> str | None:
    """--runtime, with --onnx as the old spelling of --runtime onnx (None: neither given)."""
    if args.onnx:
        if args.runtime not in (None, "onnx"):
            raise InvalidInputError(f"--onnx means --runtime onnx; it contradicts --runtime {args.runtime}")
        return "onnx"
    return args.runtime


def _add_decoding(parser: argparse.ArgumentParser) -> None:
    """The decoding options (captioner.decoding.DecodeOptions), with its defaults."""
    from .decoding import DecodeOptions

    defaults = DecodeOptions()
    group = parser.add_argument_group("decoding")
    group.add_argument("--beam-size", type=int, default=defaults.beam_size, help="1 = greedy (default %(default)s)")
    group.add_argument("--n-best", type=int, default=defaults.n_best, help="captions per image, best first")
    group.add_argument("--length-penalty", type=float, default=defaults.length_penalty,
                       help="GNMT alpha: > 0 favours longer captions (default %(default)s)")
    group.add_argument("--no-repeat-ngram-size", type=int, default=defaults.no_repeat_ngram_size,
                       help="never repeat an n-gram of this size (0 = off)")
    group.add_argument("--max-length", type=int, default=defaults.max_length, help="most words (default: the model's)")
    group.add_argument("--sample", action="store_true", help="draw captions from the model instead of searching")
    group.add_argument("--temperature", type=float, default=defaults.temperature, help="--sample: sharpness")
    group.add_argument("--top-k", type=int, default=defaults.top_k, help="--sample: from the k likeliest words (0 = all)")
    group.add_argument("--no-retrieval", dest="retrieval", action="store_false",
                       help="do not rerank with the model's datastore (when it has one)")
    group.add_argument("--language", default=defaults.language,
                       help="caption language, e.g. de or ja: one the model writes, or one its datastore "
                            "translates into (default: its first)")


def _decode_options(args):
    from .decoding import DecodeOptions

    return DecodeOptions(beam_size=args.beam_size, n_best=args.n_best, length_penalty=args.length_penalty,
                         no_repeat_ngram_size=args.no_repeat_ngram_size, max_length=args.max_length,
                         sample=args.sample, temperature=args.temperature, top_k=args.top_k, language=args.language,
                         retrieval=args.retrieval)


# --- caption -----------------------------------------------------------------------
def add_caption(sub) -> None:
    p = sub.add_parser("caption", help="caption images (files, directories, globs or WebDataset shards)")
    p.add_argument("paths", nargs="+", metavar="PATH",
                   help="image files, folders, globs, or WebDataset shards ('shards/{00000..00099}.tar')")
    p.add_argument("--model", help="model directory, or a folder from captioner export (default: the bundled model)")
    _add_decoding(p)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--num-workers", type=int, default=0, help="image-decoding worker processes")
    p.add_argument("--json", action="store_true",
                   help="one JSON object per line (default: PATH<TAB>CAPTION lines, with backslash, tab and "
                        "newline in PATH written as \\\\, \\t and \\n)")
    p.add_argument("--output", help="write JSON lines here (resumes: images already in it are skipped)")
    p.add_argument("--attention-out", help="write one attention PNG per image into this folder")
    _add_runtime(p, "same as --runtime onnx")
    p.add_argument("--engine", choices=("torch", "ray"), default="torch",
                   help="ray: caption image files with Ray Data actors (the 'ray' extra); torch: this process "
                        "(or torchrun ranks)")
    p.add_argument("--ray-address", help="--engine ray: the cluster to join (default: start a local one)")
    p.add_argument("--ray-actors", type=int, default=1, help="--engine ray: model copies captioning side by side")
    _add_device(p)
    p.set_defaults(run=run_caption)


def run_caption(args) -> int:
    from .batch import caption_with_ray, iter_captions
    from .batch.inputs import NothingToCaptionError

    def log(message: str) -> None:
        print(f"captioner caption: {message}", file=sys.stderr)

    options = _decode_options(args)
    if args.engine == "ray":
        if args.n_best != 1 or _runtime(args) or args.attention_out or args.num_workers:
            raise InvalidInputError("--engine ray takes the decoding options but --n-best, and --batch-size; drop "
                                    "--n-best, --runtime/--onnx, --attention-out and --num-workers")
        records = caption_with_ray(
            args.paths, model=args.model, options=options, output=args.output, ray_address=args.ray_address,
            actors=args.ray_actors, num_gpus=1 if args.device.startswith("cuda") else 0, batch_size=args.batch_size,
            log=log,
        )
    else:
        records = iter_captions(
            args.paths, model=args.model, options=options, output=args.output, batch_size=args.batch_size,
            num_workers=args.num_workers, device=args.device, runtime=_runtime(args),
            attention_out=args.attention_out, log=log,
        )
    count = failures = 0
    try:
        for record in records:
            count += 1
            if record.error is not None:
                failures += 1
                print(f"captioner caption: error: {record.error}", file=sys.stderr)
            if args.output is not None:
                continue  # the records went to the output file
            if args.json:
                print(record.to_json(), flush=True)
            elif record.error is None:
                print(f"{_tsv_field(str(record.image))}\t{record.caption.text}", flush=True)
    except NothingToCaptionError as e:  # a failure to caption, as unreadable images are: exit 1
        print(f"captioner caption: {e}", file=sys.stderr)
        return 1
    if failures:
        print(f"captioner caption: {failures} of {count} images could not be read", file=sys.stderr)
    return 1 if failures else 0


def _tsv_field(text: str) -> str:
    """``text`` as one field of a tab-separated line: backslash, tab, newline and carriage
    return escaped (``\\``, ``\t``, ``\n``, ``\r``), so a file name cannot split a record."""
    return text.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")


# --- train -------------------------------------------------------------------------
def _train_flags() -> dict[str, tuple[str, type]]:
    """The config shortcuts that take a value (switches and --runtime have flags of their own)."""
    from .train.config import SHORTCUTS

    return {flag: spec for flag, spec in SHORTCUTS.items() if spec[1] is not bool and flag != "runtime"}


def add_train(sub) -> None:
    p = sub.add_parser("train", help="train a captioning model; --out ends as a model directory")
    for flag, (key, kind) in _train_flags().items():
        p.add_argument("--" + flag.replace("_", "-"), type=kind, default=None, help=f"config key {key}")
    p.add_argument("--config", help="YAML config (code defaults < YAML < these flags)")
    p.add_argument("--skip-invalid", action="store_true", default=None, help="drop invalid examples")
    p.add_argument("--no-pretrained", action="store_true", help="random encoder weights (tests)")
    p.add_argument("--no-progress", action="store_true")
    _add_runtime(p, "same as --runtime onnx (data.runtime=onnx)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="any config key, e.g. optim.schedule=cosine")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument("--nproc", type=int, default=1, metavar="N",
                   help="train with N processes on this machine (DDP through torchrun: one per GPU, or CPU processes); "
                        "--batch-size is per process")
    p.set_defaults(run=run_train)


def parse_overrides(args) -> dict:
    import yaml

    overrides = {}
    for flag, (key, _) in _train_flags().items():
        value = getattr(args, flag)
        if value is not None:
            overrides[key] = value
    if args.skip_invalid:
        overrides["data.skip_invalid"] = True
    if args.no_pretrained:
        overrides["model.pretrained"] = False
    if args.no_progress:
        overrides["progress"] = False
    runtime = _runtime(args)
    if runtime is not None:
        overrides["data.runtime"] = runtime
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            raise InvalidInputError(f"--set expects KEY=VALUE, got {item!r}")
        overrides[key.strip()] = yaml.safe_load(value)
    return overrides


def run_train(args) -> int:
    if args.nproc > 1 and "LOCAL_RANK" not in os.environ:
        return launch_torchrun(args.nproc, args.argv)
    from .train.config import load_config
    from .train.loop import main

    config = load_config(args.config, parse_overrides(args))
    if not config.data.path or not config.out:
        raise InvalidInputError("captioner train needs --data FILE and --out DIR (or data.path / out in --config)")
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
    _add_decoding(p)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--output", help="also write the generated captions here, as a COCO results file (default: none)")
    p.add_argument("--predictions", help="COCO results file [{image_id, caption}] to score")
    p.add_argument("--references", help="COCO captions file with the references")
    p.add_argument("--by", metavar="FIELD", help="also score each value of a per-image dataset field, e.g. artist")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    _add_device(p)
    p.set_defaults(run=run_evaluate)


def run_evaluate(args) -> int:
    from .evaluate import evaluate_files, evaluate_model
    from .io import atomic_write_text

    if args.predictions or args.references:
        if not (args.predictions and args.references):
            raise InvalidInputError("--predictions and --references go together")
        scores = evaluate_files(args.predictions, args.references)
    else:
        if not args.data:
            raise InvalidInputError("captioner evaluate needs --data FILE (with --model DIR) or --predictions/--references")
        evaluation = evaluate_model(
            args.model, args.data, images=args.images, format=args.format, split=args.split,
            options=_decode_options(args), batch_size=args.batch_size, device=args.device, by=args.by,
        )
        scores = evaluation.scores
        if evaluation.by_group is not None:
            scores = {**scores, f"by_{args.by}": evaluation.by_group}
        if args.output:  # only where asked: a default file in the working directory was overwritten by the next run
            results = evaluation.coco_results()
            atomic_write_text(args.output, json.dumps(results, ensure_ascii=False))
            print(f"wrote {len(results)} captions to {args.output}", file=sys.stderr)
    summary = {k: v for k, v in scores.items() if k not in ("per_image", "skipped")}
    for metric, reason in scores.get("skipped", {}).items():
        print(f"{metric} skipped: {reason}", file=sys.stderr)
    if args.json:
        print(json.dumps(summary))
        return 0
    groups = summary.pop(f"by_{args.by}", None) if getattr(args, "by", None) else None
    for key, value in summary.items():
        print(f"{key:12s} {value:.4f}" if isinstance(value, float) else f"{key:12s} {value}")
    if groups is not None:
        print(f"\n{args.by:24s} {'images':>7s} {'exact':>7s} {'Bleu_4':>7s} {'CIDEr':>7s}")
        for group, row in groups.items():
            print(f"{group:24s} {row['images']:7d} {row['exact_match']:7.3f} {row['Bleu_4']:7.3f} {row['CIDEr']:7.3f}")
    return 0


# --- models, data, serve -----------------------------------------------------------
def add_models(sub) -> None:
    p = sub.add_parser("models", help="list registered encoders and decoders")
    p.set_defaults(run=run_models)


def run_models(args) -> int:
    from . import list_decoders, list_encoders
    from .encoders import encoder_routes

    print("encoders: " + ", ".join(list_encoders() + encoder_routes()))
    print("decoders: " + ", ".join(list_decoders()))
    return 0


def add_data(sub) -> None:
    p = sub.add_parser("data", help="build datasets")
    data_sub = p.add_subparsers(dest="dataset", required=True)
    from .data.emoji import DEFAULT_IMAGE_SIZE, SOURCES

    emoji = data_sub.add_parser("emoji", help="emoji art with Unicode CLDR names (offline, from package registries)")
    emoji.add_argument("--out", required=True, help="output folder (dataset.json, images/, SOURCES.md)")
    emoji.add_argument("--sources", default=",".join(SOURCES),
                       help=f"comma-separated emoji sets (artists) to use (default: {','.join(SOURCES)})")
    emoji.add_argument("--google-dir", default=None,
                       help="untarred npm emoji-datasource-google@16.0.0 (holds emoji.json and img/google/64); "
                            "default: the cache folder")
    emoji.add_argument("--openmoji-dir", default=None,
                       help="untarred npm openmoji@17.0.0 (holds data/openmoji.json and color/svg); "
                            "default: the cache folder")
    emoji.add_argument("--source-dir", action="append", default=[], metavar="NAME=PATH",
                       help="untarred npm package of an Iconify set, e.g. fluent-flat=DIR (holds icons.json); "
                            "repeatable; default: the cache folder")
    emoji.add_argument("--noto-font", default=None,
                       help="NotoColorEmoji.ttf (default: the Debian fonts-noto-color-emoji path)")
    emoji.add_argument("--emoji-test", default=None,
                       help="Unicode emoji-test.txt (default: the Debian unicode-data path)")
    emoji.add_argument("--cache-dir", default=None,
                       help="where the npm sources live / are fetched to "
                            "(default: $CAPTIONER_CACHE/emoji-sources or ~/.cache/captioner/emoji-sources)")
    emoji.add_argument("--fetch", action="store_true",
                       help="download missing npm sources into the cache folder with `npm pack`")
    emoji.add_argument("--image-size", type=int, default=DEFAULT_IMAGE_SIZE,
                       help=f"side of the square PNGs in pixels (default {DEFAULT_IMAGE_SIZE})")
    emoji.add_argument("--test-fraction", type=float, default=0.1, help="share of distinct emoji held out for test")
    emoji.add_argument("--val-fraction", type=float, default=0.05, help="share of distinct emoji held out for val")
    emoji.add_argument("--holdout-artist", action="append", default=[], metavar="NAME",
                       help="put every image of this artist (a source name) in the test-artist split; repeatable "
                            "(google and noto are the same art: hold both out together)")
    emoji.add_argument("--split-by", choices=("emoji", "image"), default="emoji",
                       help="emoji: test/val hold out whole emoji (new combinations of seen words); image: they "
                            "hold out single drawings of emoji drawn by other artists too, so every emoji trains "
                            "(the shipped model's split)")
    emoji.add_argument("--languages", default=None, metavar="LIST",
                       help="captions in these languages too, e.g. en,de,ja,zh,es,ar,hi: English as without it, "
                            "the others Unicode CLDR's emoji names (npm cldr-annotations-full and "
                            "cldr-annotations-derived-full, fetched with --fetch); default: English only")
    emoji.add_argument("--cldr-dir", default=None,
                       help="a folder holding both CLDR packages untarred (annotations/ and annotationsDerived/); "
                            "default: the cache folder")
    emoji.add_argument("--jobs", type=int, default=None, help="rendering processes (default: CPU count, max 8)")
    emoji.add_argument("--quiet", action="store_true", help="no progress output")
    emoji.set_defaults(run=run_data_emoji)


def run_data_emoji(args) -> int:
    from .data.emoji import build_emoji_dataset, format_summary

    source_dirs = {}
    for pair in args.source_dir:
        name, sep, path = pair.partition("=")
        if not sep or not name or not path:
            raise InvalidInputError(f"--source-dir {pair!r}: expected NAME=PATH, e.g. fluent-flat=~/fluent-emoji-flat")
        source_dirs[name.strip().lower()] = path
    summary = build_emoji_dataset(
        args.out, sources=args.sources, source_dirs=source_dirs, google_dir=args.google_dir,
        openmoji_dir=args.openmoji_dir, noto_font=args.noto_font, emoji_test=args.emoji_test,
        image_size=args.image_size, test_fraction=args.test_fraction, val_fraction=args.val_fraction,
        holdout_artists=args.holdout_artist, split_by=args.split_by, fetch=args.fetch, cache_dir=args.cache_dir,
        jobs=args.jobs, progress=not args.quiet, languages=args.languages, cldr_dir=args.cldr_dir,
    )
    print(format_summary(summary))
    return 0


def add_serve(sub) -> None:
    from .serve import BODY_TIMEOUT, HEADER_TIMEOUT  # light: uvicorn is imported only to serve

    p = sub.add_parser("serve", help="HTTP API and web page (needs the 'serve' extra)",
                       description="Serve the HTTP API and web page. Limits: request bytes (--max-upload-bytes, 413), "
                                   "pixels per image (--max-pixels, 413), images per request (--max-files), decode "
                                   "memory over all requests (--decode-memory-mb), header and body read deadlines "
                                   "(--header-timeout, --body-timeout: slow clients are closed).")
    p.add_argument("--model", help="model directory (default: the bundled model)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--max-batch", type=int, default=16, help="images per model call (1 = no micro-batching)")
    p.add_argument("--max-wait-ms", type=float, default=5.0, help="how long a batch waits to fill")
    p.add_argument("--max-upload-bytes", type=int, default=20 * 1024 * 1024,
                   help="bytes per request, 413 beyond (default %(default)s)")
    p.add_argument("--max-pixels", type=int, default=40_000_000, help="refuse larger images (decompression bombs)")
    p.add_argument("--max-files", type=int, default=16, help="images per request")
    p.add_argument("--decode-memory-mb", type=int, default=1024,
                   help="memory for the images being decoded at once, over all requests (estimated from their "
                        "headers at 7 bytes a pixel); decodes beyond it wait (default %(default)s)")
    p.add_argument("--header-timeout", type=float, default=HEADER_TIMEOUT,
                   help="seconds a request's headers may take to arrive; slower clients are closed, 408 "
                        "(default %(default)s)")
    p.add_argument("--body-timeout", type=float, default=BODY_TIMEOUT,
                   help="seconds a request's body may take to arrive after its headers (default %(default)s)")
    _add_device(p)
    p.set_defaults(run=run_serve)


def run_serve(args) -> int:
    from .serve import serve

    return serve(
        args.model, host=args.host, port=args.port, device=args.device, max_upload_bytes=args.max_upload_bytes,
        max_pixels=args.max_pixels, max_batch=args.max_batch, max_wait_ms=args.max_wait_ms, max_files=args.max_files,
        decode_memory_bytes=args.decode_memory_mb * 1024 * 1024, header_timeout=args.header_timeout,
        body_timeout=args.body_timeout,
    )


def add_export(sub) -> None:
    p = sub.add_parser("export", help="export a model to caption without torch (ONNX graphs + manifest)")
    p.add_argument("--format", choices=["onnx"], default="onnx")
    p.add_argument("--out", required=True, help="new folder for the exported model")
    p.add_argument("--model", help="model directory (default: the bundled model)")
    p.add_argument("--quantize", choices=["int8"], help="dynamic int8 weights for the decoder graphs")

    def run(args) -> int:
        from .export import export_model
        from .exported import read_manifest

        out = export_model(args.model, args.out, quantize=args.quantize)
        manifest = read_manifest(out)
        print(f"exported {manifest['encoder']['name']} + {manifest['decoder']['name']} to {out} "
              f"(caption with `captioner caption --model {out}` or captioner.load_model({str(out)!r}))")
        return 0

    p.set_defaults(run=run)


def add_import(sub) -> None:
    p = sub.add_parser("import", help="bring in a model trained with other code (no code from its files runs)",
                       description="Import a model trained with the seed's code (yunjey's pytorch-tutorial "
                                   "image_captioning) or sgrvinod's Show, Attend and Tell tutorial as a captioner "
                                   "model folder that captions as the original did. Pickles are read with stand-ins "
                                   "for the classes their format needs; anything else in them is refused.")
    formats = p.add_subparsers(dest="format", required=True)
    seed = formats.add_parser("seed", help="EncoderCNN / DecoderRNN state dicts + build_vocab.py's vocab.pkl")
    seed.add_argument("--encoder", required=True, help="the encoder's state dict (encoder-5-3000.pkl)")
    seed.add_argument("--decoder", required=True, help="the decoder's state dict (decoder-5-3000.pkl)")
    seed.add_argument("--vocab", required=True, help="the pickled vocabulary (vocab.pkl)")
    seed.add_argument("--out", required=True, help="new folder for the model")
    sat = formats.add_parser("show-attend-tell", help="a BEST_checkpoint_*.pth.tar + its WORDMAP_*.json")
    sat.add_argument("--checkpoint", required=True, help="train.py's checkpoint (BEST_checkpoint_*.pth.tar)")
    sat.add_argument("--word-map", required=True, help="the word map it was trained with (WORDMAP_*.json)")
    sat.add_argument("--out", required=True, help="new folder for the model")

    def run(args) -> int:
        from .importers import import_seed, import_show_attend_tell

        if args.format == "seed":
            out, beam = import_seed(encoder=args.encoder, decoder=args.decoder, vocab=args.vocab, out=args.out), 1
        else:
            out, beam = import_show_attend_tell(checkpoint=args.checkpoint, word_map=args.word_map, out=args.out), 5
        print(f"imported to {out}; caption as the original did with: "
              f"captioner caption --model {out} --beam-size {beam} IMAGE")
        return 0

    p.set_defaults(run=run)


def add_datastore(sub) -> None:
    from .retrieval import DEFAULT_DIMS, DEFAULT_NEIGHBOURS

    p = sub.add_parser("datastore", help="a model's datastore of captioned images (retrieval, reranking, confidence)")
    actions = p.add_subparsers(dest="action", required=True)
    build = actions.add_parser("build", help="make the model's datastore from a captions file's split")
    add = actions.add_parser("add", help="add your own captioned images to the model's datastore (no retraining)")
    for action in (build, add):
        action.add_argument("--model", required=True, help="the model folder the datastore goes into")
        action.add_argument("--data", required=True, help="captions file of any supported format")
        action.add_argument("--images", help="image root (default: the captions file's folder)")
        action.add_argument("--format", help="captions format (default: detected)")
        action.add_argument("--batch-size", type=int, default=32)
    build.add_argument("--split", default="train", help="the split to store (default %(default)s)")
    build.add_argument("--tune-split", default="val", help="the split that tunes the reranking (default %(default)s)")
    build.add_argument("--dims", type=int, default=DEFAULT_DIMS, help="key dimensions (default %(default)s)")
    build.add_argument("--neighbours", type=int, default=DEFAULT_NEIGHBOURS,
                       help="nearest images that vote when reranking (default %(default)s)")

    def run(args) -> int:
        from .datastore import datastore_command

        extra = {} if args.action == "add" else dict(split=args.split, tune_split=args.tune_split, dims=args.dims,
                                                     neighbours=args.neighbours)
        path = datastore_command(args.action, args.model, args.data, args.images, args.format,
                                 batch_size=args.batch_size, log=lambda m: print(m, file=sys.stderr), **extra)
        print(path)
        return 0

    p.set_defaults(run=run)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="captioner", description="Image captioning: train, evaluate, caption, serve.")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (add_caption, add_train, add_evaluate, add_models, add_data, add_serve, add_export, add_import,
                add_datastore):
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
    except CaptionerError as e:
        # An error the user can fix (bad input, a missing file, offline weights): one message.
        print(f"captioner {args.command}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        if e.filename is None:
            raise  # not about a path the user gave: a bug, keep the traceback
        print(f"captioner {args.command}: error: {e}", file=sys.stderr)
        return 2

if __name__ == "__main__":
    sys.exit(main())
