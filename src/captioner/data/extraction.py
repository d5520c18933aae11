"""Feature extraction as one streaming pipeline, the engine under ``FeatureCache.build``.

    loader workers ─batches─▶ device: decode JPEGs, encode ─blocks─▶ writer thread ─▶ memmaps, chunk marks

One DataLoader reads every row this process still has to extract: its workers start once and
prefetch for the whole build (a loader per chunk forked a new pool per chunk). Batches reach the
device pinned and non-blocking. Encoder outputs gather on the device as fp16 and come back in
blocks, one asynchronous copy each into pinned memory: the loop never waits for the device, so
the host reads and launches the next batch while the device computes. A writer thread puts each
block into the memmaps and marks a chunk done only once every row of it is written and flushed;
a kill at any moment loses only unmarked chunks, and a rerun extracts exactly those.
"""
from __future__ import annotations

import queue
import threading
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset

from .augment import AugmentConfig
from .device_images import DeviceJpegDecoder, EncodedJpeg, JpegReader, JpegRows
from .examples import is_sample_ref, split_ref
from .images import ImageReadError, PreprocessConfig, build_transform
from .loaders import AugmentedRows, ImageRows
from .webdataset import iter_samples

# A block of outputs copied back at once: large enough that copies are few, small enough that
# the pinned buffers (BLOCK_BUFFERS of them) stay modest next to the model.
BLOCK_BYTES = 64 * 1024 * 1024
BLOCK_BATCHES = 8  # at most this many batches a block: chunks get marked done as they finish
BLOCK_BUFFERS = 4  # host blocks: one filling, two queued for the writer, one being written


@dataclass
class RowBatch:
    """A loader batch: pixels decoded by the workers and JPEGs left for the device, each with
    the cache rows they fill."""

    pixels: torch.Tensor | None  # (k, 3, crop, crop) float, preprocessed on the host
    pixel_rows: torch.Tensor  # (k,) int64
    jpegs: list[EncodedJpeg]
    jpeg_rows: torch.Tensor  # (len(jpegs),) int64

    def pin_memory(self) -> "RowBatch":
        """Called by the DataLoader's pinning thread (``pin_memory=True``)."""
        if self.pixels is not None:
            self.pixels = self.pixels.pin_memory()
        return self

    def to_device(self, device: torch.device, decoder: DeviceJpegDecoder | None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(pixels (k + len(jpegs), 3, crop, crop) float on device, their rows)``: the host's
        pixels, then the decoded JPEGs in the order the decoder gives them."""
        pixels, rows = [], [self.pixel_rows]
        if self.pixels is not None:
            pixels.append(self.pixels.to(device, non_blocking=True))
        if self.jpegs:
            decoded, order = decoder(self.jpegs)
            pixels.append(decoded)
            rows.append(self.jpeg_rows[order])
        return (pixels[0] if len(pixels) == 1 else torch.cat(pixels)), torch.cat(rows)


def collate_rows(items: list[tuple[torch.Tensor | EncodedJpeg, int]]) -> RowBatch:
    """``(pixels or EncodedJpeg, row)`` items → one ``RowBatch``."""
    decoded = [(payload, row) for payload, row in items if isinstance(payload, torch.Tensor)]
    jpegs = [(payload, row) for payload, row in items if isinstance(payload, EncodedJpeg)]
    return RowBatch(
        torch.stack([p for p, _ in decoded]) if decoded else None,
        torch.tensor([r for _, r in decoded], dtype=torch.int64),
        [j for j, _ in jpegs],
        torch.tensor([r for _, r in jpegs], dtype=torch.int64),
    )


class ShardRuns(IterableDataset):
    """Batches (lists of ``(pixels or EncodedJpeg, row)``, at most ``batch_size``) of the rows of
    runs of ``refs`` (``SHARD#KEY``) into one shard each: a run is read as one stream of its
    shard, in tar order, and each loader worker takes whole runs (every num_workers-th). A batch
    never spans two runs."""

    def __init__(self, refs: Sequence[str], runs: list[tuple[int, int]], preprocess: PreprocessConfig,
                 batch_size: int, jpegs: JpegReader | None = None):
        self.refs = refs
        self.runs = runs
        self.transform = build_transform(preprocess)
        self.batch_size = batch_size
        self.jpegs = jpegs

    def __iter__(self):
        worker = torch.utils.data.get_worker_info()
        first, step = (worker.id, worker.num_workers) if worker is not None else (0, 1)
        for start, stop in self.runs[first::step]:
            batch = []
            for item in self._run(start, stop):
                batch.append(item)
                if len(batch) == self.batch_size:
                    yield batch
                    batch = []
            if batch:
                yield batch

    def _run(self, start: int, stop: int):
        rows_of: dict[str, list[int]] = {}
        for row in range(start, stop):
            rows_of.setdefault(split_ref(self.refs[row])[1], []).append(row)
        for sample in iter_samples(split_ref(self.refs[start])[0]):
            for row in rows_of.pop(sample.key, ()):
                data = sample.image_bytes()
                jpeg = self.jpegs(data, sample.name) if self.jpegs is not None and data is not None else None
                yield jpeg or self.transform(sample.image()), row
            if not rows_of:
                return  # read no further: a shard cut off after its last wanted sample still serves them
        if rows_of:
            missing = next(iter(rows_of.values()))[0]
            raise ImageReadError(f"{self.refs[missing]}: not in its shard")


def pixel_batches(paths: Sequence[str], chunks: list[tuple[int, int]], preprocess: PreprocessConfig,
                  device: torch.device, batch_size: int, num_workers: int = 0, augment: AugmentConfig | None = None,
                  jpeg_on_device: bool = False) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """``(pixels on device (b, 3, crop, crop), their rows (b,))`` for every row of ``chunks`` of
    ``paths``, from one DataLoader whose workers start now, once for all chunks, and read ahead
    until the batches are taken. Files are read in row order; shard samples (``SHARD#KEY``; a
    chunk is a run into one shard) one shard stream per run. ``augment``: row ``i`` is
    ``augment_image(paths[i], seed=i)``. ``jpeg_on_device``: JPEGs are decoded on ``device``
    (``DeviceJpegDecoder``), other images by the workers.

    A batch never spans two chunks, so a chunk is encoded in the same batches whichever other
    chunks are missing: a resumed cache is bit-identical to one built without a stop.
    """
    decoder = DeviceJpegDecoder(preprocess, device) if jpeg_on_device else None
    pin = device.type == "cuda"
    if paths and is_sample_ref(paths[0]):
        runs = ShardRuns(paths, chunks, preprocess, batch_size, JpegReader(preprocess) if jpeg_on_device else None)
        # The dataset batches (whole runs per worker); collate_rows gets each of its batches.
        loader = DataLoader(runs, batch_size=None, num_workers=min(num_workers, len(chunks)),
                            collate_fn=collate_rows, pin_memory=pin)
    else:
        if augment is not None:
            images = AugmentedRows(list(paths), preprocess, augment)  # seed = row: any chunk gets the same views
        elif jpeg_on_device:
            images = JpegRows(list(paths), preprocess)
        else:
            images = ImageRows(list(paths), preprocess)
        batches = [list(range(first, min(first + batch_size, stop)))
                   for start, stop in chunks for first in range(start, stop, batch_size)]
        loader = DataLoader(images, batch_sampler=batches, num_workers=num_workers, collate_fn=collate_rows,
                            pin_memory=pin)
    started = iter(loader)  # forks the workers now, not at the first batch taken
    return (batch.to_device(device, decoder) for batch in started)


def mode_encoder(encoder, mode, device: torch.device) -> Callable[[torch.Tensor], object]:
    """The encoder as extraction runs it: ``mode`` (``encoders.precision.ExtractionMode``, chosen
    by ``plan_extraction``; ``encoder`` already prepared by it) sets the inputs' layout and the
    context (TF32, autocast) each batch runs in."""

    def encode(pixels: torch.Tensor):
        with mode.running(device.type):
            return encoder(mode.inputs(pixels))

    return encode


@dataclass
class Block:
    """Rows of encoder outputs on the host: ``arrays[name][:count]`` fill ``rows``, readable once
    ``ready`` (a CUDA event; None on the CPU) has passed; ``release`` hands the buffers back."""

    rows: np.ndarray
    arrays: dict[str, torch.Tensor]
    count: int
    ready: torch.cuda.Event | None
    release: Callable[[], None]


class OutputBlocks:
    """Encoder outputs gathered into blocks of ``block_rows`` rows as fp16, on the device, and
    copied to pinned host memory with one asynchronous copy per block.

    No host sync: the copy is queued on the device's stream behind the batches it holds (later
    batches that reuse the device block queue behind the copy), and an event tells the writer
    when it has landed. A new block waits only for a free host buffer (``buffers`` in all), so
    the device never runs more than those blocks ahead of the writer.
    """

    def __init__(self, shapes: dict[str, tuple[int, ...]], block_rows: int, device: torch.device,
                 buffers: int = BLOCK_BUFFERS):
        self.device = device
        self.block_rows = block_rows
        cuda = device.type == "cuda"
        self.free: queue.Queue[dict[str, torch.Tensor]] = queue.Queue()
        for _ in range(buffers):
            self.free.put({name: torch.empty(block_rows, *shape, dtype=torch.float16, pin_memory=cuda)
                           for name, shape in shapes.items()})
        # On the CPU the host buffer is the block itself; on a device, one block there suffices
        # (stream order keeps the next batches' writes behind the copy out of it).
        self.on_device = ({name: torch.empty(block_rows, *shape, dtype=torch.float16, device=device)
                           for name, shape in shapes.items()} if cuda else None)
        self.filling: dict[str, torch.Tensor] | None = None
        self.rows: list[torch.Tensor] = []
        self.count = 0

    def add(self, rows: torch.Tensor, outputs: dict[str, torch.Tensor]) -> list[Block]:
        """Put one batch's outputs (name → (b, ...)) for ``rows`` in; returns the blocks it completed."""
        done = self.flush() if self.count + len(rows) > self.block_rows else []
        if self.filling is None:
            self.filling = self.free.get()  # waits only while every buffer is queued or being written
        target = self.on_device or self.filling
        for name, values in outputs.items():
            target[name][self.count : self.count + len(rows)].copy_(values, non_blocking=True)
        self.rows.append(rows)
        self.count += len(rows)
        return done

    def flush(self) -> list[Block]:
        """The block being filled, if any, handed out as it is."""
        if self.count == 0:
            return []
        host, ready = self.filling, None
        if self.on_device is not None:
            for name, values in self.on_device.items():
                host[name][: self.count].copy_(values[: self.count], non_blocking=True)
            ready = torch.cuda.Event()
            ready.record()
        block = Block(torch.cat(self.rows).numpy(), host, self.count, ready, lambda: self.free.put(host))
        self.filling, self.rows, self.count = None, [], 0
        return [block]


class MemmapWriter:
    """Writes blocks into the cache's arrays in a thread, off the extraction loop, and marks each
    chunk done (``mark_done(start, stop)``) once all its rows are written and flushed to disk.

    ``put`` queues at most ``depth`` blocks (the loop waits beyond that). An error in the thread
    is raised by the next ``put`` or by ``close``; the thread then only drains the queue.
    """

    def __init__(self, arrays: dict[str, np.ndarray], chunks: list[tuple[int, int]],
                 mark_done: Callable[[int, int], None], depth: int = 2):
        self.arrays = arrays
        self.chunks = sorted(chunks)
        self.starts = np.array([start for start, _ in self.chunks], dtype=np.int64)
        self.left = np.array([stop - start for start, stop in self.chunks], dtype=np.int64)  # rows to write
        self.mark_done = mark_done
        self.queue: queue.Queue[Block | None] = queue.Queue(maxsize=depth)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="feature-cache-writer", daemon=True)
        self.thread.start()

    def put(self, block: Block) -> None:
        if self.error is not None:
            raise self.error
        self.queue.put(block)

    def close(self) -> None:
        """Write what is queued, stop the thread, raise its error if it had one."""
        self.queue.put(None)
        self.thread.join()
        if self.error is not None:
            raise self.error

    def _run(self) -> None:
        while (block := self.queue.get()) is not None:
            try:
                if self.error is None:
                    self.write(block)
            except BaseException as e:  # handed to the loop's thread, which raises it
                self.error = e
            finally:
                block.release()

    def write(self, block: Block) -> None:
        """Put one block's rows in place; flush and mark the chunks it completes."""
        if block.ready is not None:
            block.ready.synchronize()  # this thread waits for the copy, never the loop
        order = np.argsort(block.rows, kind="stable")
        rows = block.rows[order]
        # Contiguous runs of rows: slice assignments, sequential on disk.
        breaks = np.flatnonzero(np.diff(rows) != 1) + 1
        for name, array in self.arrays.items():
            values = block.arrays[name][: block.count].numpy()
            values = values if np.array_equal(order, np.arange(len(order))) else values[order]
            for a, b in zip(np.r_[0, breaks], np.r_[breaks, len(rows)]):
                array[rows[a] : rows[b - 1] + 1] = values[a:b]
        chunk_of = np.searchsorted(self.starts, rows, side="right") - 1
        self.left -= np.bincount(chunk_of, minlength=len(self.chunks))
        finished = [self.chunks[i] for i in np.flatnonzero(self.left == 0)]
        if finished:
            for array in self.arrays.values():
                array.flush()  # the rows are on disk before the mark that says so
            for start, stop in finished:
                self.mark_done(start, stop)
            self.left[self.left == 0] = -1  # marked


def extract(encode: Callable[[torch.Tensor], dict[str, torch.Tensor]],
            batches: Iterator[tuple[torch.Tensor, torch.Tensor]], arrays: dict[str, np.ndarray],
            chunks: list[tuple[int, int]], mark_done: Callable[[int, int], None], device: torch.device,
            batch_size: int, on_batch: Callable[[int], None] = lambda rows: None) -> None:
    """Encode ``batches`` (``pixel_batches``) into ``arrays`` (fp16 memmaps by name: a feature
    cache's ``pooled`` (N, d) and optionally ``grid`` (N, regions, d), an activation cache's
    ``activations``); ``encode`` maps a batch of pixels to one tensor for each array. Each of
    ``chunks`` is marked done when its rows are on disk. An exception stops the loop; blocks
    already handed to the writer are still written."""
    shapes = {name: tuple(array.shape[1:]) for name, array in arrays.items()}
    row_bytes = 2 * sum(int(np.prod(shape)) for shape in shapes.values())
    block_rows = batch_size * max(1, min(BLOCK_BATCHES, BLOCK_BYTES // (batch_size * row_bytes)))
    writer = MemmapWriter(arrays, chunks, mark_done)
    blocks = OutputBlocks(shapes, block_rows, device)
    try:
        with torch.inference_mode():
            for pixels, rows in batches:
                for block in blocks.add(rows, encode(pixels)):
                    writer.put(block)
                on_batch(len(rows))
            for block in blocks.flush():
                writer.put(block)
    except BaseException:
        writer.queue.put(None)  # let it finish the blocks it has, then stop; the loop's error wins
        writer.thread.join()
        raise
    writer.close()


__all__ = ["MemmapWriter", "OutputBlocks", "RowBatch", "ShardRuns", "collate_rows", "extract", "mode_encoder",
           "pixel_batches"]
