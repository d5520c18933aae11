"""Caption many images with one model: files, folders, globs or WebDataset shards, in
batches from one loader, into records — returned, yielded, or appended to a resumable
JSON-lines output (:mod:`captioner.batch.ledger`); under torchrun each rank takes its share.
Works alike for a torch model and an exported one (:class:`captioner.captions.CaptionModel`)."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Collection, Iterator, Optional, Sequence, Union

import torch
from torch.utils.data import DataLoader

from .. import distributed
from ..captions import Caption, CaptionModel, check_language
from ..data.examples import sample_ref
from ..data.loaders import ImageRows, collate_with_errors
from ..data.webdataset import ShardSamples, expand_shards
from ..decoding import DecodeOptions
from ..device import resolve_device
from ..encoders.onnx_runtime import AUTO_ONNX_MIN_IMAGES
from ..errors import InvalidInputError
from ..loading import is_exported_model, load_model
from .inputs import are_shards, image_paths, skipped_note
from .ledger import Ledger

ModelInput = Union[str, Path, CaptionModel, None]


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
        shard sample ``{"key", "shard", ...}`` in place of ``"image"``, for a damaged shard
        ``{"shard", "error"}``: valid JSON values."""
        if self.key is not None:
            name = {"key": self.key, "shard": self.shard}
        else:
            name = {"image": self.image} if self.shard is None else {"shard": self.shard}
        if self.caption is None:
            return {**name, "error": self.error}
        return {**name, **self.caption.to_dict()}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False, allow_nan=False)


def caption_files(paths: Sequence[str], **kwargs) -> list[CaptionRecord]:
    """Caption image files, directories or globs — or WebDataset shards (``.tar`` brace
    patterns; records then carry ``key`` and ``shard``, and resume by key); one
    :class:`CaptionRecord` per image this process captioned, in input order (an unreadable
    file gets a record with its ``error``). Keyword arguments: those of :func:`iter_captions`.

    >>> [r.caption.text for r in caption_files(["photos/"], beam_size=5)]
    """
    return list(iter_captions(paths, **kwargs))


def iter_captions(
    paths: Sequence[str],
    *,
    model: ModelInput = None,
    options: Optional[DecodeOptions] = None,
    output: Union[str, Path, None] = None,
    batch_size: int = 32,
    num_workers: int = 0,
    device: str = "auto",
    runtime: Optional[str] = None,
    attention_out: Union[str, Path, None] = None,
    log: Optional[Callable[[str], None]] = None,
    **decode_options,
) -> Iterator[CaptionRecord]:
    """:func:`caption_files` as a generator: records are yielded (and appended to ``output``)
    after each batch, in input order. Consume it to the end: the torchrun part files are
    merged into ``output`` after the last batch.

    ``model``: a model folder (torch, or exported by ``captioner export``), a loaded model (used
    where it is; ``device`` only applies to loading), or ``None`` for the bundled model.
    ``options`` (or their names as keywords): how to decode (:class:`DecodeOptions`).
    ``runtime``: the engine of a torch model's frozen encoder, ``"auto"``, ``"torch"`` or
    ``"onnx"`` (see ``Captioner.use_runtime``); ``None`` keeps the model's setting (``auto``
    for a model loaded here, but torch for fewer than ``AUTO_ONNX_MIN_IMAGES`` images, where
    setting up ONNX Runtime costs more than it saves). ``output``: a JSON-lines file to append
    to and resume from (:mod:`captioner.batch.ledger`); images it already holds are not
    captioned again and not returned. ``attention_out``: a folder for one attention figure per
    image (attention decoders only). ``log`` receives progress notes (resume, skipped files).
    """
    options = DecodeOptions.of(options, **decode_options)
    log = log or (lambda message: None)
    shards = are_shards(paths)
    loaded = model if isinstance(model, CaptionModel) else None
    exported = loaded is None and model is not None and is_exported_model(model)
    if exported and (runtime not in (None, "onnx") or attention_out is not None):
        raise InvalidInputError(f"{model} is an exported (ONNX) model: it runs in ONNX Runtime and has no attention "
                                "weights; drop --runtime torch and --attention-out, or use the torch model")
    if shards and attention_out is not None:
        raise InvalidInputError("--attention-out draws over image files; caption the shards without it")
    torch_device = getattr(loaded, "device", None) or resolve_device(device)
    info = distributed.setup(torch_device, backend="gloo")  # under torchrun: only barriers, whatever the device
    ledger = None
    try:
        captioner = loaded or load_model(model, device=torch_device)
        check_language(captioner, options.language, options.retrieval)  # a language it does not know: before any image
        if runtime is not None and not exported:
            captioner.use_runtime(runtime)
        final_output = Path(output) if output is not None else None
        settings = dict(batch_size=batch_size, num_workers=num_workers)
        if shards:
            shard_list = expand_shards(paths)
            ledger = Ledger(final_output, {shard: i for i, shard in enumerate(shard_list)}, "shard", info)
            if ledger.done and info.is_main:
                log(f"{len(ledger.done)} samples already in {final_output}; captioning the others")
            records = caption_samples(captioner, shard_list[info.rank :: info.world_size], options,
                                      skip_keys=ledger.done, **settings)
        else:
            skipped: list[str] = []
            all_paths = image_paths(paths, skipped)
            if skipped and info.is_main:
                log(skipped_note(skipped))
            ledger = Ledger(final_output, {path: i for i, path in enumerate(all_paths)}, "image", info)
            remaining = [p for p in all_paths if p not in ledger.done]
            if len(remaining) < len(all_paths) and info.is_main:
                log(f"{len(all_paths) - len(remaining)} images already in {final_output}; "
                    f"captioning the other {len(remaining)}")
            share = remaining[info.rank :: info.world_size]
            if runtime is None and loaded is None and not exported and len(share) < AUTO_ONNX_MIN_IMAGES:
                # (a model passed in keeps its setting: its session, once opened, serves every call)
                captioner.use_runtime("torch")
            records = caption_images(captioner, share, options, attention_out=attention_out, **settings)
        yield from ledger.write(records)
        ledger.finish()
    finally:
        if ledger is not None:
            ledger.close()  # (a run stopped early: the output stays resumable, and unlocked)
        distributed.cleanup(info)


def caption_images(model: CaptionModel, paths: Sequence[str], options: Optional[DecodeOptions] = None, *,
                   batch_size: int = 32, num_workers: int = 0,
                   attention_out: Union[str, Path, None] = None) -> Iterator[CaptionRecord]:
    """Records for exactly these image files, batch by batch, in order, with a loaded model:
    the core of :func:`iter_captions` without path expansion, output file or torchrun shares
    (what a worker of a distributed engine calls on its share). Bad arguments raise here,
    before the first image is read."""
    options = options or DecodeOptions()
    if attention_out is not None and not model.decoder.has_attention:
        raise InvalidInputError(f"decoder {model.decoder.name!r} has no attention; --attention-out needs "
                                "an attention decoder (show-attend-tell, transformer)")
    paths = list(paths)
    loader = _loader(model, ImageRows(paths, model.preprocess, report_errors=True), batch_size, num_workers)
    draw = None
    if attention_out is not None:
        from ..visualize import save_attention_figure

        figures, figure_names = Path(attention_out), _unique_stems(paths)

        def draw(i: int, caption: Caption) -> None:
            save_attention_figure(paths[i], caption, figures, model.preprocess, figure_names[i])

    return _caption_batches(model, loader, lambda i, **result: CaptionRecord(paths[i], **result), options, draw)


def caption_samples(model: CaptionModel, shards: Sequence[str], options: Optional[DecodeOptions] = None, *,
                    skip_keys: Collection[str] = (), batch_size: int = 32,
                    num_workers: int = 0) -> Iterator[CaptionRecord]:
    """Records (with ``key`` and ``shard``) for the samples of these WebDataset shards, in
    shard and tar order, except ``skip_keys``; a sample whose image cannot be read gets its
    ``error``, and so does a damaged shard (a record without ``key``, after the samples read
    before the damage; the next shards go on). ``num_workers`` decode whole shards each.
    :func:`caption_images` for shards."""
    shards = list(shards)
    samples = ShardSamples(shards, model.preprocess, skip_keys=set(skip_keys))
    loader = _loader(model, samples, batch_size, min(num_workers, len(shards)))

    def record(item: tuple[int, int, Optional[str]], **result) -> CaptionRecord:
        shard = shards[item[0]]
        if item[2] is None:  # the shard itself: cut off or unreadable after the samples before
            return CaptionRecord(shard, shard=shard, **result)
        return CaptionRecord(sample_ref(shard, item[2]), key=item[2], shard=shard, **result)

    return _caption_batches(model, loader, record, options or DecodeOptions(), None)


def _loader(model: CaptionModel, dataset, batch_size: int, num_workers: int) -> DataLoader:
    """One loader for the whole run: its workers start once and prefetch while the model works."""
    cuda = getattr(model, "device", torch.device("cpu")).type == "cuda"
    return DataLoader(dataset, batch_size=batch_size, num_workers=num_workers, collate_fn=collate_with_errors,
                      pin_memory=cuda, persistent_workers=num_workers > 0,
                      prefetch_factor=4 if num_workers > 0 else None)


def _caption_batches(model: CaptionModel, loader, record, options: DecodeOptions, draw) -> Iterator[CaptionRecord]:
    """Caption a loader's ``(pixels, ids, errors)`` batches; ``record(id, caption=|error=)``
    makes each result, yielded in id order within the batch (its input order)."""
    for pixels, ids, errors in loader:
        records = {i: record(i, error=error) for i, error in errors}
        if pixels is not None:
            for i, caption in zip(ids, model.caption_pixels(pixels, options)):
                records[i] = record(i, caption=caption)
                if draw is not None:
                    draw(i, caption)
        for i in sorted(records):
            yield records[i]


def _unique_stems(paths: list[str]) -> list[str]:
    """File stems for per-image outputs; a stem seen twice (a/x.jpg, b/x.jpg) gets -2, -3 …"""
    seen: dict[str, int] = {}
    names = []
    for path in paths:
        stem = Path(path).stem
        seen[stem] = seen.get(stem, 0) + 1
        names.append(stem if seen[stem] == 1 else f"{stem}-{seen[stem]}")
    return names
