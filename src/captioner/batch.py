"""Batch captioning of image files, as library functions with keyword arguments.

``caption_files(paths, model=..., output=...)`` returns one record per image;
``iter_captions`` yields them batch by batch (the ``captioner caption`` command prints them as
they come). With ``output`` the records are appended to a JSON-lines file that resumes: images
already in it are skipped, a line cut off by a kill is dropped, and under torchrun each rank
appends to its own part file, merged into ``output`` in input order at the end.

WebDataset shards (``'shards/{00000..00099}.tar'``) are captioned sample by sample: records
name the sample by ``key`` and ``shard``, a rerun skips the keys already in ``output``, and
torchrun ranks take whole shards. :class:`CaptionPredictor` runs the same model inside Ray
Data (``ds.map_batches``), and :func:`caption_with_ray` is ``captioner caption --engine ray``.
"""
from __future__ import annotations

import glob
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Collection, Iterator, Optional, Sequence, Union

import numpy as np
import torch
from torch.utils.data import DataLoader

from .data.images import ImageReadError, build_transform, load_image
from .captions import Alternative, Caption
from .data.examples import is_shard_pattern, sample_ref
from .data.loaders import ImageRows, collate_with_errors
from .data.webdataset import ShardSamples, decode_image, expand_shards
from .device import resolve_device
from .encoders.onnx_runtime import AUTO_ONNX_MIN_IMAGES
from .errors import InvalidInputError, MissingDependencyError
from .model import Captioner
from .runtime.manifest import is_exported_model
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
    """The result for one image: its ``caption``, or the ``error`` that kept it from one. A
    shard sample also has its ``key`` and ``shard`` (``image`` is then ``SHARD#KEY``)."""

    image: str
    caption: Optional[Caption] = None
    error: Optional[str] = None
    key: Optional[str] = None
    shard: Optional[str] = None

    def to_dict(self) -> dict:
        """``{"image", "caption", "score", "alternatives"}`` or ``{"image", "error"}`` — for a
        shard sample ``{"key", "shard", ...}`` in place of ``"image"``: valid JSON values."""
        name = {"image": self.image} if self.key is None else {"key": self.key, "shard": self.shard}
        if self.caption is None:
            return {**name, "error": self.error}
        return {**name, **self.caption.to_dict()}

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
    """Caption image files, directories or globs — or WebDataset shards (``.tar`` brace
    patterns; records then carry ``key`` and ``shard``, and resume by key); one
    :class:`CaptionRecord` per image this process captioned, in input order (an unreadable
    file gets a record with its ``error``).

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
    exported = captioner is None and model is not None and is_exported_model(model)
    if exported and (runtime not in (None, "onnx") or attention_out is not None or _are_shards(paths)):
        raise InvalidInputError(f"{model} is an exported (ONNX) model: it captions image files with ONNX Runtime "
                                "only; drop --runtime torch, --attention-out or the shards, or use the torch model")
    torch_device = captioner.device if captioner is not None else resolve_device(device)
    info = dist_utils.setup(torch_device, backend="gloo")  # under torchrun: only barriers, whatever the device
    try:
        if exported:
            from .runtime import OnnxCaptioner

            captioner = OnnxCaptioner(model)
        elif captioner is None:
            captioner = Captioner.from_pretrained(model, device=torch_device)
        if runtime is not None and not exported:
            captioner.use_runtime(runtime)
        final_output = Path(output) if output is not None else None
        options = dict(batch_size=batch_size, num_workers=num_workers, beam_size=beam_size, n_best=n_best,
                       max_length=max_length, length_penalty=length_penalty,
                       no_repeat_ngram_size=no_repeat_ngram_size)
        if _are_shards(paths):
            if attention_out is not None:
                raise InvalidInputError("--attention-out draws over image files; caption the shards without it")
            shards = expand_shards(paths)
            done, part = _resume(final_output, {shard: i for i, shard in enumerate(shards)}, "shard", info)
            if done and info.is_main:
                log(f"{len(done)} samples already in {final_output}; captioning the others")
            records = caption_samples(captioner, shards[info.rank :: info.world_size], skip_keys=done, **options)
            order = {shard: i for i, shard in enumerate(shards)}, "shard"
        else:
            skipped: list[str] = []
            all_paths = expand_image_paths(paths, skipped)
            if skipped and info.is_main:
                files = "1 file" if len(skipped) == 1 else f"{len(skipped)} files"
                log(f"left out {files} without an image suffix ({', '.join(sorted(IMAGE_SUFFIXES))}), "
                    f"e.g. {skipped[0]}")
            order = {path: i for i, path in enumerate(all_paths)}, "image"
            done, part = _resume(final_output, *order, info)
            remaining = [p for p in all_paths if p not in done]
            if len(remaining) < len(all_paths) and info.is_main:
                log(f"{len(all_paths) - len(remaining)} images already in {final_output}; "
                    f"captioning the other {len(remaining)}")
            shard = remaining[info.rank :: info.world_size]
            if exported:
                records = caption_exported(captioner, shard, **options)
            else:
                if runtime is None and not isinstance(model, Captioner) and len(shard) < AUTO_ONNX_MIN_IMAGES:
                    # (a model passed in keeps its setting: its session, once opened, serves every call)
                    captioner.use_runtime("torch")
                records = caption_images(captioner, shard, attention_out=attention_out, **options)
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
                _merge_parts(final_output, *order)
    finally:
        dist_utils.cleanup(info)


def _are_shards(patterns: Sequence[str]) -> bool:
    """Whether the inputs are WebDataset shards (all end in ``.tar``); a mix is an error."""
    shards = [is_shard_pattern(str(p)) for p in patterns]
    if any(shards) and not all(shards):
        raise InvalidInputError("caption either WebDataset shards (*.tar) or image files in one run, not both")
    return all(shards)


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
    beam_options = _beam_options(model, length_penalty, no_repeat_ngram_size, attention_out)
    loader = DataLoader(
        ImageRows(list(paths), model.preprocess, report_errors=True),
        batch_size=batch_size,
        num_workers=num_workers,
        collate_fn=collate_with_errors,
        pin_memory=model.device.type == "cuda",
    )
    figures = Path(attention_out) if attention_out is not None else None
    paths = loader.dataset.paths
    figure_names = _unique_stems(paths)

    def draw(i: int, caption: Caption) -> None:
        from .visualize import save_attention_figure

        save_attention_figure(paths[i], caption, figures, model.preprocess, figure_names[i])

    return _caption_batches(model, loader, lambda i, **result: CaptionRecord(paths[i], **result),
                            beam_size, n_best, max_length, beam_options, draw if figures is not None else None)


def caption_exported(
    model,
    paths: Sequence[str],
    *,
    batch_size: int = 32,
    num_workers: int = 0,
    beam_size: int = 3,
    n_best: int = 1,
    max_length: Optional[int] = None,
    length_penalty: float = 0.0,
    no_repeat_ngram_size: int = 0,
) -> Iterator[CaptionRecord]:
    """:func:`caption_images` for a model exported by ``captioner export`` (a
    :class:`captioner.runtime.OnnxCaptioner`): numpy preprocessing and ONNX Runtime, the same
    records (an unreadable file gets its ``error``). ``num_workers`` is not used: decoding
    happens in this process."""
    from .runtime.images import preprocess

    paths = list(paths)
    for start in range(0, len(paths), batch_size):
        chunk, pixels, readable = paths[start : start + batch_size], [], []
        errors = {}
        for path in chunk:
            try:
                pixels.append(preprocess(path, model.preprocess))
                readable.append(path)
            except ImageReadError as e:
                errors[path] = str(e)
        captions = model.caption_pixels(np.stack(pixels), beam_size, n_best, max_length, length_penalty,
                                        no_repeat_ngram_size) if pixels else []
        by_path = dict(zip(readable, captions))
        for path in chunk:
            yield CaptionRecord(path, caption=by_path.get(path), error=errors.get(path))


def caption_samples(
    model: Captioner,
    shards: Sequence[str],
    *,
    skip_keys: Collection[str] = (),
    batch_size: int = 32,
    num_workers: int = 0,
    beam_size: int = 3,
    n_best: int = 1,
    max_length: Optional[int] = None,
    length_penalty: float = 0.0,
    no_repeat_ngram_size: int = 0,
) -> Iterator[CaptionRecord]:
    """Records (with ``key`` and ``shard``) for the samples of these WebDataset shards, in
    shard and tar order, except ``skip_keys``; a sample whose image cannot be read gets its
    ``error``. ``num_workers`` decode whole shards each. :func:`caption_images` for shards."""
    beam_options = _beam_options(model, length_penalty, no_repeat_ngram_size, None)
    loader = DataLoader(
        ShardSamples(list(shards), model.preprocess, skip_keys=set(skip_keys)),
        batch_size=batch_size,
        num_workers=min(num_workers, len(shards)),
        collate_fn=collate_with_errors,
        pin_memory=model.device.type == "cuda",
    )

    def record(item: tuple[int, int, str], **result) -> CaptionRecord:
        shard = shards[item[0]]
        return CaptionRecord(sample_ref(shard, item[2]), key=item[2], shard=shard, **result)

    return _caption_batches(model, loader, record, beam_size, n_best, max_length, beam_options, None)


def _beam_options(model: Captioner, length_penalty: float, no_repeat_ngram_size: int, attention_out) -> dict:
    beam_options = {}
    if length_penalty:
        beam_options["length_penalty"] = length_penalty
    if no_repeat_ngram_size:
        beam_options["no_repeat_ngram_size"] = no_repeat_ngram_size
    if attention_out is not None and not model.decoder.has_attention:
        raise InvalidInputError(
            f"decoder {model.decoder.name!r} has no attention; --attention-out needs "
            "an attention decoder (show-attend-tell, transformer)"
        )
    return beam_options


def _caption_batches(model, loader, record, beam_size, n_best, max_length, beam_options, draw) -> Iterator[CaptionRecord]:
    """Caption a loader's ``(pixels, ids, errors)`` batches; ``record(id, caption=|error=)``
    makes each result, yielded in id order within the batch (its input order)."""
    for pixels, ids, errors in loader:
        records = {i: record(i, error=error) for i, error in errors}
        if pixels is not None:
            captions = model.caption_tensor(pixels.to(model.device), beam_size, n_best, max_length, **beam_options)
            for i, caption in zip(ids, captions):
                records[i] = record(i, caption=caption)
                if draw is not None:
                    draw(i, caption)
        for i in sorted(records):
            yield records[i]


# --- the resumable JSON-lines output ------------------------------------------------
def _records(path: Path):
    """(name, record, line) for each captioned record of a JSON-lines output — the name is
    the image, or a shard sample's key; lines that do not parse (a cut-off last line) and
    error records are skipped."""
    if not path.is_file():
        return
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict) and "caption" in record:
                yield record.get("key", record.get("image")), record, line.rstrip("\n")


def _part_files(output: Path) -> list[Path]:
    """The per-rank part files of ``output`` (``preds.rank0.jsonl`` …) that torchrun ranks write."""
    prefix, suffix = f"{output.stem}.rank", output.suffix
    return sorted(
        path
        for path in output.parent.glob(f"{prefix}*{suffix}")
        if path.name[len(prefix) : len(path.name) - len(suffix)].isdigit()
    )


def _merge_parts(output: Path, position: dict[str, int], field: str) -> None:
    """Drop a cut-off last line of ``output``, append the records of its part files (each
    image or key once, in input order: ordered by ``position`` of their ``field``, the image
    or the shard, and part-file order within a shard) and delete them.

    Appending, not rewriting: a merge that is cut short leaves the part files in place, and the
    next run drops the cut-off line and merges again without duplicating what already landed.
    """
    _drop_cut_off_line(output)
    parts = _part_files(output)
    if not parts:
        return
    landed = {name for name, _, _ in _records(output)}
    new: dict[str, tuple[int, str]] = {}
    for part in parts:
        for name, record, line in _records(part):
            if name not in landed and name not in new:
                new[name] = (position.get(record.get(field), len(position)), line)
    with open(output, "a", encoding="utf-8") as f:
        for _, line in sorted(new.values(), key=lambda item: item[0]):  # stable: a shard's records keep their order
            f.write(line + "\n")
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


def _resume(output: Optional[Path], position: dict[str, int], field: str, info) -> tuple[set[str], Optional[Path]]:
    """The names (images, or shard keys) already captioned in ``output``, and the file this
    process appends to: ``output`` itself, or under torchrun its rank's part file, merged into
    ``output`` at the end. ``position``/``field`` order the merge (see :func:`_merge_parts`)."""
    if output is None:
        return set(), None
    if info.is_main:  # what an interrupted run left: a cut-off line, part files of its ranks
        output.parent.mkdir(parents=True, exist_ok=True)
        _merge_parts(output, position, field)
    dist_utils.barrier(info)
    done = {name for name, _, _ in _records(output)}
    dist_utils.barrier(info)  # every rank has read the same files before any rank appends to them
    if info.enabled:
        output = output.with_name(f"{output.stem}.rank{info.rank}{output.suffix}")
    return done, output


def _unique_stems(paths: list[str]) -> list[str]:
    """File stems for per-image outputs; a stem seen twice (a/x.jpg, b/x.jpg) gets -2, -3 …"""
    seen: dict[str, int] = {}
    names = []
    for path in paths:
        stem = Path(path).stem
        seen[stem] = seen.get(stem, 0) + 1
        names.append(stem if seen[stem] == 1 else f"{stem}-{seen[stem]}")
    return names


# --- Ray Data ---------------------------------------------------------------------------
class CaptionPredictor:
    """A callable class for Ray Data's ``map_batches``: each actor loads the model once, then
    captions numpy batches.

    >>> ds = ray.data.read_images("photos/", include_paths=True)   # or read_binary_files
    >>> ds = ds.map_batches(CaptionPredictor, fn_constructor_kwargs={"model": "run/", "beam_size": 3},
    ...                     batch_size=32, concurrency=4)         # num_gpus=1: one GPU per actor

    A batch holds an ``image`` column of arrays (``read_images``: (H, W, C) or (H, W) uint8) or
    a ``bytes`` column of encoded files (``read_binary_files``); either goes through the same
    ``load_image`` and preprocessing as ``captioner caption``. The result keeps every other
    column (``path``…) and adds ``caption`` and ``score`` — and ``error``, which is ``None``
    except for an image that could not be read, whose row has ``caption`` and ``score`` ``None``
    (one bad file never fails the job). Keyword arguments are those of :func:`caption_files`.
    """

    def __init__(self, model: ModelInput = None, *, beam_size: int = 3, max_length: Optional[int] = None,
                 length_penalty: float = 0.0, no_repeat_ngram_size: int = 0, batch_size: int = 32,
                 device: str = "auto"):
        self.model = model if isinstance(model, Captioner) else Captioner.from_pretrained(
            model, device=resolve_device(device))
        self.options = dict(beam_size=beam_size, n_best=1, max_length=max_length,
                            **_beam_options(self.model, length_penalty, no_repeat_ngram_size, None))
        self.batch_size = batch_size
        self.transform = build_transform(self.model.preprocess)

    def __call__(self, batch: dict) -> dict:
        column = next((c for c in ("image", "bytes") if c in batch), None)
        if column is None:
            raise InvalidInputError(f"CaptionPredictor needs an 'image' (read_images) or 'bytes' (read_binary_files) "
                             f"column; the batch has {sorted(batch)}")
        names = [str(p) for p in batch["path"]] if "path" in batch else [f"row {i}" for i in range(len(batch[column]))]
        pixels, readable, errors = [], [], [None] * len(names)
        for i, item in enumerate(batch[column]):
            try:
                pixels.append(self.transform(self._image(item, names[i])))
                readable.append(i)
            except ImageReadError as e:
                errors[i] = str(e)
        captions: list[Optional[str]] = [None] * len(names)
        scores: list[Optional[float]] = [None] * len(names)
        for start in range(0, len(readable), self.batch_size):
            chunk = readable[start : start + self.batch_size]
            stacked = torch.stack(pixels[start : start + self.batch_size]).to(self.model.device)  # (chunk, 3, H, W)
            for i, caption in zip(chunk, self.model.caption_tensor(stacked, **self.options)):
                captions[i], scores[i] = caption.text, caption.to_dict()["score"]
        result = {name: values for name, values in batch.items() if name != column}
        result.update(caption=np.array(captions, dtype=object), score=np.array(scores, dtype=object),
                      error=np.array(errors, dtype=object))
        return result

    @staticmethod
    def _image(item, name: str):
        if isinstance(item, (bytes, bytearray)):
            return decode_image(bytes(item), name)
        array = np.asarray(item)
        if array.dtype != np.uint8 or array.ndim not in (2, 3):
            raise ImageReadError(f"{name}: expected a (H, W) or (H, W, C) uint8 image array, "
                                 f"got {array.dtype} {array.shape}")
        from PIL import Image

        try:
            return load_image(Image.fromarray(array))
        except (TypeError, ValueError) as e:  # a channel count PIL has no mode for
            raise ImageReadError(f"{name}: not an image array ({e})") from None


def caption_with_ray(
    paths: Sequence[str],
    *,
    model: Union[str, Path, None] = None,
    output: Union[str, Path, None] = None,
    ray_address: Optional[str] = None,
    actors: int = 1,
    num_gpus: float = 0,
    batch_size: int = 32,
    beam_size: int = 3,
    max_length: Optional[int] = None,
    length_penalty: float = 0.0,
    no_repeat_ngram_size: int = 0,
    log: Optional[Callable[[str], None]] = None,
) -> Iterator[CaptionRecord]:
    """``captioner caption --engine ray``: the image files of ``paths`` read by Ray Data
    (``read_binary_files``) and captioned by ``actors`` :class:`CaptionPredictor` actors
    (``num_gpus`` each), on the cluster at ``ray_address`` or a local one started here.
    Records come as actors finish, not in input order; with ``output`` they are appended to
    it, and images already in it are skipped. ``model`` must be a folder every node can read.
    Needs the ``ray`` extra (``pip install 'captioner[ray]'``)."""
    try:
        import ray
    except ImportError:
        raise MissingDependencyError("--engine ray needs Ray: pip install 'captioner[ray]'") from None
    log = log or (lambda message: None)
    if _are_shards(paths):
        raise InvalidInputError("--engine ray reads image files; caption WebDataset shards with the torch engine "
                         "(torchrun for several processes)")
    skipped: list[str] = []
    files = expand_image_paths(paths, skipped)
    if skipped:
        log(f"left out {len(skipped)} files without an image suffix, e.g. {skipped[0]}")
    final_output = Path(output) if output is not None else None
    done, sink_path = _resume(final_output, {p: i for i, p in enumerate(files)}, "image", dist_utils.DistInfo())
    remaining = [p for p in files if p not in done]
    if done:
        log(f"{len(files) - len(remaining)} images already in {final_output}; captioning the other {len(remaining)}")
    if not remaining:
        return
    missing = [p for p in remaining if not os.path.isfile(p)]
    for path in missing:  # Ray would fail the whole read on one missing file
        yield CaptionRecord(path, error=f"{path}: no such file")
    remaining = [p for p in remaining if os.path.isfile(p)]
    name_of = {os.path.abspath(p): p for p in remaining}
    started = not ray.is_initialized()
    if started:
        ray.init(address=ray_address, log_to_driver=False, include_dashboard=False)
    sink = open(sink_path, "a", encoding="utf-8") if sink_path is not None else None
    try:
        cpus = int(ray.cluster_resources().get("CPU", 0))
        if not num_gpus and actors >= cpus:
            # Each actor holds a CPU for good; reading needs one more, or the job waits forever.
            raise InvalidInputError(f"--ray-actors {actors} would hold all {cpus} CPUs of the Ray cluster and leave none "
                             f"to read the images: use at most {max(cpus - 1, 1)} CPU actors, or GPUs")
        dataset = ray.data.read_binary_files([os.path.abspath(p) for p in remaining], include_paths=True)
        dataset = dataset.map_batches(
            CaptionPredictor, batch_size=batch_size, concurrency=actors, num_gpus=num_gpus or None,
            fn_constructor_kwargs={"model": str(model) if model is not None else None, "beam_size": beam_size,
                                   "max_length": max_length, "length_penalty": length_penalty,
                                   "no_repeat_ngram_size": no_repeat_ngram_size, "batch_size": batch_size,
                                   "device": "cuda" if num_gpus else "cpu"},
        )
        for row in dataset.iter_rows():
            image = name_of.get(os.path.abspath(row["path"]), row["path"])
            if row["error"] is not None:
                record = CaptionRecord(image, error=row["error"])
            else:
                score = float("-inf") if row["score"] is None else float(row["score"])
                record = CaptionRecord(image, caption=Caption(row["caption"], score, [Alternative(row["caption"], score)]))
                if sink is not None:
                    print(record.to_json(), file=sink, flush=True)
            yield record
    finally:
        if sink is not None:
            sink.close()
        if started:
            ray.shutdown()
