"""Frozen-encoder features, extracted once into memory-mapped fp16 files.

A cache folder is keyed by everything that changes the features: encoder name, options
and a digest of its weights, the preprocessing, whether the spatial grid is kept, and the
image list. A rerun with the same key reuses it (and an interrupted extraction resumes);
anything else gets its own folder. Training then reads rows from the memmaps, never pixels,
so resident memory stays far below the cache size.

Images are files or WebDataset samples (``SHARD#KEY``); samples are extracted and marked
done one shard at a time, so an interrupted extraction resumes at the shard it was in.
``build`` runs the streaming pipeline of ``captioner.data.extraction``.

With ``augment``, row ``i`` holds the features of :func:`~captioner.data.augment.augment_image`
of ``paths[i]`` with seed ``i``: a cache of augmented views (list an image K times for K views).
"""
from __future__ import annotations

import hashlib
import json
from itertools import islice
from pathlib import Path

import numpy as np
import torch

from ..cache import weights_digest
from ..errors import InvalidInputError
from ..io import atomic_write_text
from .augment import AugmentConfig
from .device_images import DecodeChoice, plan_jpeg_decoding
from .examples import is_sample_ref, split_ref
from .extraction import extract, mode_encoder, pixel_batches
from .images import DEFAULT_IMAGE_LIMITS, ImageReadError, PreprocessConfig
from .loaders import AugmentedRows, ImageRows
from .webdataset import IMAGE_EXTENSIONS, ShardImages, iter_samples, shard_runs


def _done_chunks(folder: Path) -> list[tuple[int, int]]:
    """(start, stop) of every extracted chunk: one marker file each, so ranks extracting
    side by side never rewrite a shared file."""
    chunks = folder / "chunks"
    if not chunks.is_dir():
        return []
    return sorted(tuple(int(x) for x in p.stem.split("-")) for p in chunks.glob("*.done"))


def _is_complete(folder: Path, n: int) -> bool:
    return sum(stop - start for start, stop in _done_chunks(folder)) == n


class FeatureCache:
    """``pooled`` (N, pooled_dim) and optionally ``grid`` (N, regions, grid_dim) as fp16 memmaps;
    ``grid_shape`` is the grid's (h, w) (from meta.json; None for caches written before it was kept).

    What is stored is what the frozen part of the encoder outputs: ``_extractor`` says what runs
    over the pixels, ``_outputs`` which arrays its output fills. ``ActivationCache``
    (``captioner.data.activation_cache``) stores the frozen bottom of a split encoder instead."""

    def __init__(self, root: str | Path, encoder, preprocess: PreprocessConfig, paths: list[str], with_grid: bool,
                 augment: AugmentConfig | None = None):
        self.encoder = encoder
        self.preprocess = preprocess
        self.paths = [str(p) for p in paths]
        self.with_grid = with_grid
        self.augment = augment
        if augment is not None and self.paths and is_sample_ref(self.paths[0]):
            raise InvalidInputError("augmented views (data.augment_views) are extracted from image files; "
                                    "WebDataset shards are read as one stream: set data.augment_views to 0")
        digest = weights_digest(encoder)
        self.folder = self._folder(root, digest, with_grid)
        if not with_grid:
            # A complete cache that also kept the grid serves pooled-only requests too.
            with_grid_folder = self._folder(root, digest, True)
            if _is_complete(with_grid_folder, len(self.paths)):
                self.folder = with_grid_folder
        self.key = self.folder.name
        self.pooled: np.ndarray | None = None
        self.grid: np.ndarray | None = None
        self.grid_shape: tuple[int, int] | None = None

    def _folder(self, root, digest: str, with_grid: bool) -> Path:
        key_source = json.dumps(
            {
                "encoder": self.encoder.name,
                "options": self.encoder.config.cache_key(),
                "weights": digest,
                "preprocess": self.preprocess.key(),
                "grid": with_grid,
                "images": self.paths,
                **({"augment": self.augment.to_dict()} if self.augment is not None else {}),
            },
            sort_keys=True,
        )
        return Path(root) / f"{self.encoder.name}-{hashlib.sha256(key_source.encode()).hexdigest()[:20]}"

    @property
    def meta_path(self) -> Path:
        return self.folder / "meta.json"

    def is_complete(self) -> bool:
        return _is_complete(self.folder, len(self.paths))

    def build(
        self,
        device: torch.device | str = "cpu",
        batch_size: int | None = None,
        num_workers: int = 0,
        progress: bool = True,
        runtime: str = "auto",
        shard: tuple[int, int] = (0, 1),
        barrier=None,
        precision=None,
        jpeg_on_device: bool | None = None,
    ) -> "FeatureCache":
        """Extract what is missing (all of it, the rest after an interruption, or nothing).

        One streaming pipeline (``captioner.data.extraction``): a single loader over every
        missing row (``num_workers`` processes, started once), outputs copied back from the
        device in blocks, written to the memmaps by a thread, each chunk marked done once its
        rows are on disk.

        ``batch_size``: default 64 on CUDA, 16 on the CPU (ResNet-152 and EfficientNet-Lite0
        encoded 25–50 % more images per second at 16 than at 64 on a 2-core CPU).
        ``runtime``: the engine that runs the encoder (``encoders.onnx_runtime.runtime_encoder``): ``auto``
        (ONNX Runtime on the CPU when installed and at least ``AUTO_ONNX_MIN_IMAGES`` images are
        left to extract, torch elsewhere), ``torch`` or ``onnx`` (CPU only). Same features within float rounding either way, and the same cache key. On a
        2-core CPU, batch 16, ONNX Runtime extracted EfficientNet-Lite0 features 3.8× and
        ResNet-152 1.5× faster than PyTorch eager.
        ``jpeg_on_device``: decode JPEG files and samples on ``device`` (``data.device_images``;
        nvJPEG on CUDA), other images on the host. Default: measured (``plan_jpeg_decoding``): on
        CUDA, for at least ``MEASURE_MIN_IMAGES`` images, when the device's decoder gives this
        cache's first JPEGs features within the precision bound of the host's; never on the CPU,
        where it would move the loader workers' libjpeg work into the main process. Augmented
        views are drawn on the host. meta.json records the choice.

        ``precision``: the torch runtime's ``ExtractionChoice`` (``encoders.precision``); default:
        the fastest mode within 1e-2 of fp32 on the CPU, measured on this cache's first images when
        at least ``MEASURE_MIN_IMAGES`` are left to extract, else fp32. meta.json records it.

        ``shard=(rank, world)``: this process extracts only every world-th batch chunk; the
        others extract theirs into the same files. ``barrier`` (a callable) lets rank 0 create
        the files before the others open them; call ``open`` after a final barrier.
        """
        self.folder.mkdir(parents=True, exist_ok=True)
        n = len(self.paths)
        if self.is_complete():
            return self.open()
        done_chunks = {start for start, _ in _done_chunks(self.folder)}
        rank, world = shard
        device = torch.device(device)
        batch_size = batch_size or (64 if device.type == "cuda" else 16)
        missing = n - sum(stop - start for start, stop in _done_chunks(self.folder))
        if jpeg_on_device is not None:
            decoding = DecodeChoice(jpeg_on_device, "asked for (jpeg_on_device)")
        elif self.augment is not None:
            decoding = DecodeChoice(False, "augmented views are drawn on the host")
        else:
            decoding = plan_jpeg_decoding(self.encoder.to(device).eval(), device, missing, self._probe_samples,
                                          self.preprocess)
        chunks = [(start, stop) for i, (start, stop) in enumerate(self._chunks(batch_size * 8))
                  if i % world == rank and start not in done_chunks]
        # The loader's workers start here and read ahead while the encoder is set up (an ONNX
        # Runtime session takes seconds to open, measuring the precision modes on a GPU more).
        batches = pixel_batches(self.paths, chunks, self.preprocess, device, batch_size, num_workers, self.augment,
                                decoding.on_device) if chunks else None
        encoder, precision = self._extractor(device, runtime, missing, batch_size, precision)
        mode = precision.mode
        with torch.inference_mode(), mode.running(device.type):
            probe = encoder(torch.zeros(1, 3, self.preprocess.crop_size, self.preprocess.crop_size, device=device))
        shapes = {f"{name}.npy": (n, *value.shape[1:]) for name, value in self._outputs(probe).items()}
        grid_shape = getattr(probe, "grid_shape", None)
        if rank == 0:  # one process creates the files; the others open them after the barrier
            arrays = {name: self._memmap(name, shape) for name, shape in shapes.items()}
            atomic_write_text(self.meta_path, json.dumps(
                {"images": n, "grid": self.with_grid, "encoder": self.encoder.name, "shapes": shapes,
                 "grid_shape": list(grid_shape) if grid_shape else None, "precision": precision.to_dict(),
                 "jpeg_decoding": decoding.to_dict()}))
        if barrier is not None:
            barrier()
        if rank != 0:
            arrays = {name: np.load(self.folder / name, mmap_mode="r+") for name in shapes}
        from tqdm import tqdm

        bar = tqdm(total=n, initial=n - sum(stop - start for start, stop in chunks), disable=not progress,
                   desc=f"features {self.encoder.name}", unit="img")
        if batches is not None:
            run = mode_encoder(encoder, mode, device)
            extract(lambda pixels: self._outputs(run(pixels)), batches,
                    {name.removesuffix(".npy"): array for name, array in arrays.items()}, chunks, self._mark_done,
                    device, batch_size, on_batch=bar.update)
        bar.close()
        return self.open() if world == 1 else self

    def _extractor(self, device: torch.device, runtime: str, missing: int, batch_size: int, precision):
        """What extraction runs over the pixels, and the ``ExtractionChoice`` it runs in: the
        encoder (prepared for the chosen mode) or its ONNX Runtime twin."""
        from ..encoders.onnx_runtime import runtime_encoder
        from ..encoders.precision import plan_extraction

        encoder = self.encoder.to(device).eval()
        onnx_encoder = runtime_encoder(runtime, encoder, self.preprocess.crop_size, device, images=missing)
        if precision is None or onnx_encoder is not None:
            precision = plan_extraction(encoder, device, missing, self._probe, batch_size,
                                        runtime="onnx" if onnx_encoder is not None else "torch")
        return onnx_encoder or precision.mode.prepare(encoder), precision

    def _outputs(self, out) -> dict[str, torch.Tensor]:
        """The arrays a batch of the extractor's output fills, by file name (without ``.npy``)."""
        return {"pooled": out.pooled, **({"grid": out.grid} if self.with_grid else {})}

    def _probe_samples(self, count: int) -> list[tuple[bytes, str]]:
        """The bytes and names of the cache's first ``count`` images: files within ``max_file_bytes``,
        or the first samples of the first shard; what cannot be read is left out."""
        paths = self.paths[:count]
        if not is_sample_ref(paths[0]):
            limit = DEFAULT_IMAGE_LIMITS.max_file_bytes
            return [(Path(path).read_bytes(), path) for path in paths
                    if Path(path).is_file() and Path(path).stat().st_size <= limit]
        samples = []
        for sample in islice(iter_samples(split_ref(paths[0])[0]), count):
            data = next((sample.files[suffix] for suffix in IMAGE_EXTENSIONS if suffix in sample.files), None)
            if data is not None:  # (a member over max_file_bytes is not in files)
                samples.append((data, sample.name))
        return samples

    def _probe(self, count: int) -> torch.Tensor:
        """The first ``count`` images of the cache, preprocessed as extraction reads them: (count, 3, H, W)."""
        paths = self.paths[:count]
        if is_sample_ref(paths[0]):
            rows = ShardImages(paths, self.preprocess)
        elif self.augment is not None:
            rows = AugmentedRows(paths, self.preprocess, self.augment)
        else:
            rows = ImageRows(paths, self.preprocess)
        return torch.stack([pixels for pixels, _ in islice(iter(rows), len(paths))])

    def _memmap(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        path = self.folder / name
        if path.is_file():
            array = np.load(path, mmap_mode="r+")
            if array.shape == shape:
                return array
        return np.lib.format.open_memmap(path, mode="w+", dtype=np.float16, shape=shape)

    def _chunks(self, size: int) -> list[tuple[int, int]]:
        """The (start, stop) row ranges extracted and marked done one at a time: for shard
        samples, each run of rows in one shard; for files, ``size`` rows."""
        if self.paths and is_sample_ref(self.paths[0]):
            return shard_runs(self.paths)
        n = len(self.paths)
        return [(start, min(start + size, n)) for start in range(0, n, size)]

    def _mark_done(self, start: int, stop: int) -> None:
        (self.folder / "chunks").mkdir(exist_ok=True)
        (self.folder / "chunks" / f"{start}-{stop}.done").touch()

    def open(self) -> "FeatureCache":
        if not self.is_complete():
            raise RuntimeError(f"feature cache {self.folder} is incomplete; build it first")
        self.pooled = np.load(self.folder / "pooled.npy", mmap_mode="r")
        if self.with_grid:  # (a pooled-only request served by a grid cache leaves the grid unread)
            self.grid = np.load(self.folder / "grid.npy", mmap_mode="r")
            self.grid_shape = self._meta_grid_shape()
        return self

    def _meta_grid_shape(self) -> tuple[int, int] | None:
        if not self.meta_path.is_file():
            return None
        shape = json.loads(self.meta_path.read_text(encoding="utf-8")).get("grid_shape")
        if shape is None:
            return None
        h, w = (int(x) for x in shape)
        if self.grid is not None and self.grid.shape[1] != h * w:
            raise ValueError(f"{self.meta_path}: grid_shape {h}x{w} does not match {self.grid.shape[1]} regions; "
                             f"delete {self.folder} to extract the features again")
        return h, w

    def rows(self, indices: np.ndarray) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Features for these rows as float32 tensors (reads only those rows from disk)."""
        pooled = read_rows(self.pooled, indices)
        return pooled, read_rows(self.grid, indices) if self.grid is not None else None


def read_rows(array: np.ndarray, indices: np.ndarray) -> torch.Tensor:
    """Rows ``indices`` of a memmap as a float32 tensor, in that order, read in sorted order
    (sequential on disk)."""
    order = np.argsort(indices)
    inverse = np.empty_like(order)
    inverse[order] = np.arange(len(order))
    return torch.from_numpy(np.asarray(array[np.asarray(indices)[order]])[inverse]).float()


__all__ = ["FeatureCache", "ImageReadError", "read_rows"]
