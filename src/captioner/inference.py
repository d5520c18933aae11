"""What the ``caption`` and ``evaluate`` commands do, beyond parsing their arguments."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

from .data.images import ImageReadError, build_transform, load_image
from .device import resolve_device
from .train import distributed as dist_utils


class _Images(Dataset):
    """(pixels or None, index, error) per path, so one bad file never stops a batch."""

    def __init__(self, paths: list[str], preprocess):
        self.paths = paths
        self.transform = build_transform(preprocess)

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        try:
            return self.transform(load_image(self.paths[i])), i, None
        except ImageReadError as e:
            return None, i, str(e)
        except Exception as e:  # a decoder crash inside PIL for one file
            return None, i, f"{self.paths[i]}: {type(e).__name__}: {e}"


def _collate(items):
    good = [(pixels, i) for pixels, i, error in items if pixels is not None]
    pixels = torch.stack([p for p, _ in good]) if good else None
    return pixels, [i for _, i in good], [(i, error) for _, i, error in items if error is not None]


def _records(path: Path):
    """(image, line) for each captioned record of a JSON-lines output; lines that do not
    parse (a cut-off last line) and error records are skipped."""
    if not path.is_file():
        return
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict) and "caption" in record:
                yield record["image"], line.rstrip("\n")


def _part_files(output: Path) -> list[Path]:
    """The per-rank part files of ``output`` (``preds.rank0.jsonl`` …) that torchrun ranks write."""
    prefix, suffix = f"{output.stem}.rank", output.suffix
    return sorted(
        path
        for path in output.parent.glob(f"{prefix}*{suffix}")
        if path.name[len(prefix) : len(path.name) - len(suffix)].isdigit()
    )


def _done_images(output: Path) -> set[str]:
    """Images already captioned in a JSON-lines output."""
    return {image for image, _ in _records(output)}


def _merge_parts(output: Path, order: list[str]) -> None:
    """Drop a cut-off last line of ``output``, append the records of its part files (input
    order, each image once) and delete them.

    Appending, not rewriting: a merge that is cut short leaves the part files in place, and the
    next run drops the cut-off line and merges again without duplicating what already landed.
    """
    _drop_cut_off_line(output)
    parts = _part_files(output)
    if not parts:
        return
    landed = {image for image, _ in _records(output)}
    new: dict[str, str] = {}
    for part in parts:
        for image, line in _records(part):
            if image not in landed:
                new.setdefault(image, line)
    position = {path: i for i, path in enumerate(order)}
    with open(output, "a", encoding="utf-8") as f:
        for image in sorted(new, key=lambda image: position.get(image, len(position))):
            f.write(new[image] + "\n")
        f.flush()
        os.fsync(f.fileno())
    for part in parts:
        part.unlink()


def _drop_cut_off_line(output: Path) -> None:
    """Truncate a JSON-lines file back to its last complete line.

    An interrupted run can leave a last line without its newline; appending after it would
    glue the next record onto it, losing both. Its image is captioned again instead.
    """
    if not output.is_file():
        return
    with open(output, "rb+") as f:
        end = f.seek(0, os.SEEK_END)
        position = end
        while position > 0:
            start = max(0, position - (1 << 16))
            f.seek(start)
            newline = f.read(position - start).rfind(b"\n")
            if newline >= 0:
                if start + newline + 1 < end:
                    f.truncate(start + newline + 1)
                return
            position = start
        f.truncate(0)


def _shard(paths: list[str], output: Path | None, info) -> tuple[list[str], Path | None]:
    """Skip images already in the output (resume); under torchrun each rank then takes every
    world-th remaining image and appends to its own part file, merged into ``output`` at the end."""
    if output is None:
        return paths[info.rank :: info.world_size], None
    if info.is_main:  # what an interrupted run left: a cut-off line, part files of its ranks
        output.parent.mkdir(parents=True, exist_ok=True)
        _merge_parts(output, paths)
    dist_utils.barrier(info)
    done = _done_images(output)
    dist_utils.barrier(info)  # every rank has read the same files before any rank appends to them
    remaining = [p for p in paths if p not in done]
    if len(remaining) < len(paths) and info.is_main:
        print(f"{len(paths) - len(remaining)} images already in {output}; captioning the other {len(remaining)}",
              file=sys.stderr)
    if info.enabled:
        output = output.with_name(f"{output.stem}.rank{info.rank}{output.suffix}")
    return remaining[info.rank :: info.world_size], output


def _unique_stems(paths: list[str]) -> list[str]:
    """File stems for per-image outputs; a stem seen twice (a/x.jpg, b/x.jpg) gets -2, -3 …"""
    seen: dict[str, int] = {}
    names = []
    for path in paths:
        stem = Path(path).stem
        seen[stem] = seen.get(stem, 0) + 1
        names.append(stem if seen[stem] == 1 else f"{stem}-{seen[stem]}")
    return names


def caption_paths(args) -> int:
    device = resolve_device(args.device)
    info = dist_utils.setup(device, backend="gloo")  # under torchrun: only barriers, whatever the device
    try:
        return _caption_paths(args, device, info)
    finally:
        dist_utils.cleanup(info)


def _caption_paths(args, device, info) -> int:
    from .cli import expand_image_paths
    from .model import Captioner

    model = Captioner.from_pretrained(args.model, device=device)
    if args.onnx:
        model.use_onnxruntime()
    all_paths = expand_image_paths(args.paths)
    final_output = Path(args.output) if args.output else None
    paths, output = _shard(all_paths, final_output, info)
    attention_out = Path(args.attention_out) if args.attention_out else None
    if attention_out is not None and not model.decoder.has_attention:
        print(
            f"captioner caption: error: decoder {model.decoder.name!r} has no attention; --attention-out needs "
            "an attention decoder (show-attend-tell, transformer)",
            file=sys.stderr,
        )
        return 2
    figure_names = _unique_stems(paths)
    loader = DataLoader(
        _Images(paths, model.preprocess),
        batch_size=args.batch_size,
        num_workers=args.num_workers,
        collate_fn=_collate,
        pin_memory=device.type == "cuda",
    )
    beam_options = {}
    if args.length_penalty:
        beam_options["length_penalty"] = args.length_penalty
    if args.no_repeat_ngram_size:
        beam_options["no_repeat_ngram_size"] = args.no_repeat_ngram_size
    sink = open(output, "a", encoding="utf-8") if output is not None else sys.stdout
    failures = 0
    try:
        for pixels, indices, errors in loader:
            lines = {}
            for i, error in errors:
                failures += 1
                print(f"captioner caption: error: {error}", file=sys.stderr)
                if args.json or output is not None:
                    lines[i] = json.dumps({"image": paths[i], "error": error})
            if pixels is not None:
                captions = model.caption_tensor(
                    pixels.to(device), args.beam_size, args.n_best, args.max_length, **beam_options
                )
                for i, caption in zip(indices, captions):
                    if args.json or output is not None:
                        lines[i] = json.dumps({"image": paths[i], **caption.to_dict()}, ensure_ascii=False)
                    else:
                        lines[i] = f"{paths[i]}\t{caption.text}"
                    if attention_out is not None:
                        from .visualize import save_attention_figure

                        save_attention_figure(paths[i], caption, attention_out, model.preprocess, figure_names[i])
            for i in sorted(lines):
                if output is not None and "error" in lines[i]:
                    continue  # errors go to stderr only, so a rerun retries those images
                print(lines[i], file=sink, flush=True)
    finally:
        if output is not None:
            sink.close()
    if final_output is not None:
        dist_utils.barrier(info)  # every rank has written its part
        if info.is_main:
            _merge_parts(final_output, all_paths)
    if failures:
        print(f"captioner caption: {failures} of {len(paths)} images could not be read", file=sys.stderr)
    return 1 if failures else 0


def evaluate_command(args) -> int:
    from .metrics import evaluate_captions, load_coco_references, load_coco_results

    if args.predictions or args.references:
        if not (args.predictions and args.references):
            raise ValueError("--predictions and --references go together")
        scores = evaluate_captions(load_coco_results(args.predictions), load_coco_references(args.references))
    else:
        if not args.data:
            raise ValueError("captioner evaluate needs --data FILE (with --model DIR) or --predictions/--references")
        record, predictions = _evaluate_model(args)
        renamed = {"val_loss": "loss", "val_ppl": "perplexity"}  # teacher-forced, on this split
        scores = {renamed.get(k, k): v for k, v in record.items()}
        output = Path(args.output or f"predictions-{args.split}.json")
        from .io import atomic_write_text

        results = [{"image_id": _coco_id(k), "caption": v} for k, v in predictions.items()]
        atomic_write_text(output, json.dumps(results, ensure_ascii=False))
        print(f"wrote {len(results)} captions to {output}", file=sys.stderr)
    summary = {k: v for k, v in scores.items() if k not in ("per_image", "skipped")}
    for metric, reason in scores.get("skipped", {}).items():
        print(f"{metric} skipped: {reason}", file=sys.stderr)
    if args.json:
        print(json.dumps(summary))
    else:
        for key, value in summary.items():
            print(f"{key:12s} {value:.4f}" if isinstance(value, float) else f"{key:12s} {value}")
    return 0


def _coco_id(key: str):
    return int(key) if str(key).isdigit() else key


def _evaluate_model(args):
    from .data.loaders import CaptionPairs
    from .data.sources import read_dataset, split_examples, validate_examples
    from .model import Captioner
    from .objectives import CaptionCrossEntropy
    from .train.validation import caption_and_score

    device = resolve_device(args.device)
    model = Captioner.from_pretrained(args.model, device=device)
    examples = split_examples(read_dataset(args.data, args.images, args.format), args.split)
    if not examples:
        raise ValueError(f"{args.data} has no {args.split!r} examples")
    problems = validate_examples(examples)
    if problems:
        raise ValueError(f"{args.data} has problems:\n{problems.report()}")
    rows = list(range(len(examples)))
    pairs = CaptionPairs(examples, rows, model.vocab, model.max_length)
    objective = CaptionCrossEntropy(model.vocab.pad_id)
    all_metrics = ("BLEU", "METEOR", "ROUGE_L", "CIDEr", "SPICE")
    return caption_and_score(
        model, objective, examples, rows, pairs, None, args.batch_size, args.beam_size, device, metrics=all_metrics
    )
