"""Batch captioning of image files, as library functions with keyword arguments.

``caption_files(paths, model=..., output=...)`` returns one record per image;
``iter_captions`` yields them batch by batch (the ``captioner caption`` command prints them as
they come). With ``output`` the records are appended to a JSON-lines file that resumes: images
already in it are skipped, a line cut off by a kill is dropped, and under torchrun each rank
appends to its own part file, merged into ``output`` in input order at the end.
"""
from __future__ import annotations

import glob
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence, Union

from torch.utils.data import DataLoader

from .data.loaders import ImageRows, collate_with_errors
from .device import resolve_device
from .encoders.onnx_runtime import AUTO_ONNX_MIN_IMAGES
from .model import Caption, Captioner
from .train import distributed as dist_utils

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff"}

ModelInput = Union[str, Path, Captioner, None]


def expand_image_paths(patterns: Sequence[str], skipped: Optional[list[str]] = None) -> list[str]:
    """Images named directly, in a directory (sorted, recursive) or by a glob, in that order.

    A directory yields its files with an image suffix (``IMAGE_SUFFIXES``); its other files are
    appended to ``skipped`` when a list is given, so a caller can say how many were left out.
    Folders are never images, whatever their name (a folder ``x.jpg``). A pattern that names
    nothing is kept, so that it gets its own "no such file" error.
    """
    paths: list[str] = []
    for pattern in patterns:
        path = Path(pattern)
        if path.is_dir():
            for file in sorted(p for p in path.rglob("*") if p.is_file()):
                if file.suffix.lower() in IMAGE_SUFFIXES:
                    paths.append(str(file))
                elif skipped is not None:
                    skipped.append(str(file))
        elif path.exists():
            paths.append(str(path))
        else:
            matches = [m for m in sorted(glob.glob(pattern, recursive=True)) if not os.path.isdir(m)]
            paths.extend(matches if matches else [pattern])
    return paths


@dataclass
class CaptionRecord:
    """The result for one image: its ``caption``, or the ``error`` that kept it from one."""

    image: str
    caption: Optional[Caption] = None
    error: Optional[str] = None

    def to_dict(self) -> dict:
        """``{"image", "caption", "score", "alternatives"}`` or ``{"image", "error"}``: valid JSON values."""
        if self.caption is None:
            return {"image": self.image, "error": self.error}
        return {"image": self.image, **self.caption.to_dict()}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False, allow_nan=False)


def caption_files(
    paths: Sequence[str],
    *,
    model: ModelInput = None,
    output: Union[str, Path, None] = None,
    batch_size: int = 32,
    num_workers: int = 0,
    beam_size: int = 3,
    n_best: int = 1,
    max_length: Optional[int] = None,
    length_penalty: float = 0.0,
    no_repeat_ngram_size: int = 0,
    device: str = "auto",
    runtime: Optional[str] = None,
    attention_out: Union[str, Path, None] = None,
    log: Optional[Callable[[str], None]] = None,
) -> list[CaptionRecord]:
    """Caption image files, directories or globs; one :class:`CaptionRecord` per image this
    process captioned, in input order (an unreadable file gets a record with its ``error``).

    ``model``: a model directory, a loaded :class:`Captioner` (used where it is; ``device``
    only applies to loading), or ``None`` for the bundled model. ``runtime``: ``"auto"``,
    ``"torch"`` or ``"onnx"`` (see :meth:`Captioner.use_runtime`); ``None`` keeps the model's
    setting (``auto`` for a model loaded here: ONNX Runtime on the CPU when installed, torch for
    fewer than ``AUTO_ONNX_MIN_IMAGES`` images, where setting up ONNX Runtime costs more than it
    saves). ``output``: a JSON-lines file
    to append to and resume from (see the module docstring); images it already holds are not
    captioned again and not returned. ``attention_out``: a folder for one attention figure per
    image (attention decoders only). ``log`` receives progress notes (resume, skipped files).

    >>> [r.caption.text for r in caption_files(["photos/"], beam_size=5)]
    """
    return list(
        iter_captions(
            paths, model=model, output=output, batch_size=batch_size, num_workers=num_workers,
            beam_size=beam_size, n_best=n_best, max_length=max_length, length_penalty=length_penalty,
            no_repeat_ngram_size=no_repeat_ngram_size, device=device, runtime=runtime,
            attention_out=attention_out, log=log,
        )
    )


def iter_captions(
    paths: Sequence[str],
    *,
    model: ModelInput = None,
    output: Union[str, Path, None] = None,
    batch_size: int = 32,
    num_workers: int = 0,
    beam_size: int = 3,
    n_best: int = 1,
    max_length: Optional[int] = None,
    length_penalty: float = 0.0,
    no_repeat_ngram_size: int = 0,
    device: str = "auto",
    runtime: Optional[str] = None,
    attention_out: Union[str, Path, None] = None,
    log: Optional[Callable[[str], None]] = None,
) -> Iterator[CaptionRecord]:
    """:func:`caption_files` as a generator: records are yielded (and appended to ``output``)
    after each batch, in input order. Consume it to the end: the torchrun part files are
    merged into ``output`` after the last batch."""
    log = log or (lambda message: None)
    captioner = model if isinstance(model, Captioner) else None
    torch_device = captioner.device if captioner is not None else resolve_device(device)
    info = dist_utils.setup(torch_device, backend="gloo")  # under torchrun: only barriers, whatever the device
    try:
        if captioner is None:
            captioner = Captioner.from_pretrained(model, device=torch_device)
        if runtime is not None:
            captioner.use_runtime(runtime)
        skipped: list[str] = []
        all_paths = expand_image_paths(paths, skipped)
        if skipped and info.is_main:
            files = "1 file" if len(skipped) == 1 else f"{len(skipped)} files"
            log(f"left out {files} without an image suffix ({', '.join(sorted(IMAGE_SUFFIXES))}), e.g. {skipped[0]}")
        final_output = Path(output) if output is not None else None
        shard, part = _shard(all_paths, final_output, info, log)
        if runtime is None and not isinstance(model, Captioner) and len(shard) < AUTO_ONNX_MIN_IMAGES:
            # (a model passed in keeps its setting: its session, once opened, serves every call)
            captioner.use_runtime("torch")
        records = caption_images(
            captioner, shard, batch_size=batch_size, num_workers=num_workers, beam_size=beam_size, n_best=n_best,
            max_length=max_length, length_penalty=length_penalty, no_repeat_ngram_size=no_repeat_ngram_size,
            attention_out=attention_out,
        )
        if part is None:
            yield from records
        else:
            with open(part, "a", encoding="utf-8") as sink:
                for record in records:
                    if record.error is None:  # errors are not written, so a rerun retries those images
                        print(record.to_json(), file=sink, flush=True)
                    yield record
        if final_output is not None:
            dist_utils.barrier(info)  # every rank has written its part
            if info.is_main:
                _merge_parts(final_output, all_paths)
    finally:
        dist_utils.cleanup(info)


def caption_images(
    model: Captioner,
    paths: Sequence[str],
    *,
    batch_size: int = 32,
    num_workers: int = 0,
    beam_size: int = 3,
    n_best: int = 1,
    max_length: Optional[int] = None,
    length_penalty: float = 0.0,
    no_repeat_ngram_size: int = 0,
    attention_out: Union[str, Path, None] = None,
) -> Iterator[CaptionRecord]:
    """Records for exactly these image files, batch by batch, in order, with a loaded model:
    the core of :func:`iter_captions` without path expansion, output file or torchrun shards
    (what a worker of a distributed engine calls on its share). Bad arguments raise here,
    before the first image is read."""
    beam_options = {}
    if length_penalty:
        beam_options["length_penalty"] = length_penalty
    if no_repeat_ngram_size:
        beam_options["no_repeat_ngram_size"] = no_repeat_ngram_size
    if attention_out is not None and not model.decoder.has_attention:
        raise ValueError(
            f"decoder {model.decoder.name!r} has no attention; --attention-out needs "
            "an attention decoder (show-attend-tell, transformer)"
        )
    loader = DataLoader(
        ImageRows(list(paths), model.preprocess, report_errors=True),
        batch_size=batch_size,
        num_workers=num_workers,
        collate_fn=collate_with_errors,
        pin_memory=model.device.type == "cuda",
    )
    figures = Path(attention_out) if attention_out is not None else None
    return _caption_batches(model, loader, beam_size, n_best, max_length, beam_options, figures)


def _caption_batches(model, loader, beam_size, n_best, max_length, beam_options, figures) -> Iterator[CaptionRecord]:
    paths = loader.dataset.paths
    figure_names = _unique_stems(paths)
    for pixels, indices, errors in loader:
        records = {i: CaptionRecord(paths[i], error=error) for i, error in errors}
        if pixels is not None:
            captions = model.caption_tensor(pixels.to(model.device), beam_size, n_best, max_length, **beam_options)
            for i, caption in zip(indices, captions):
                records[i] = CaptionRecord(paths[i], caption=caption)
                if figures is not None:
                    from .visualize import save_attention_figure

                    save_attention_figure(paths[i], caption, figures, model.preprocess, figure_names[i])
        for i in sorted(records):
            yield records[i]


# --- the resumable JSON-lines output ------------------------------------------------
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


def _shard(paths: list[str], output: Optional[Path], info, log) -> tuple[list[str], Optional[Path]]:
    """Skip images already in the output (resume); under torchrun each rank then takes every
    world-th remaining image and appends to its own part file, merged into ``output`` at the end."""
    if output is None:
        return paths[info.rank :: info.world_size], None
    if info.is_main:  # what an interrupted run left: a cut-off line, part files of its ranks
        output.parent.mkdir(parents=True, exist_ok=True)
        _merge_parts(output, paths)
    dist_utils.barrier(info)
    done = {image for image, _ in _records(output)}
    dist_utils.barrier(info)  # every rank has read the same files before any rank appends to them
    remaining = [p for p in paths if p not in done]
    if len(remaining) < len(paths) and info.is_main:
        log(f"{len(paths) - len(remaining)} images already in {output}; captioning the other {len(remaining)}")
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
