"""JPEG decoding and preprocessing on the encoder's device: nvJPEG on CUDA, in batches.

The host only reads bytes: it sizes each image from its header with Pillow (``Image.open`` reads
no pixels), applies ``ImageLimits`` there, and sends the device only the JPEGs it decodes as the
CPU path would — baseline 8-bit YCbCr (Pillow's mode ``RGB``), whole (ending in the EOI marker),
no Adobe colour transform, and small enough that Pillow decodes them at full scale — unless the
preprocessing resizes with Pillow (``pillow_resize``), which only the host does. Everything else
(grayscale, CMYK, progressive JPEGs, every other format) and every JPEG the device fails to
decode go to the CPU path (``load_image`` + the transform), which raises its one-line
``ImageReadError``.

Why not larger JPEGs: the CPU path decodes a JPEG whose sides are twice what the resize needs or
more at 1/2 … 1/8 scale (Pillow's draft mode: libjpeg's scaled IDCT) and box-reduces it, and no
resize of the full image gives those pixels. Measured with EfficientNet-Lite0's ImageNet weights
on 1280×960 to 3000×2250 photos: 2–15 % relative difference in pooled features against a full
decode + antialiased resize, still 1–5 % when the device box-averages by the draft's factor
first. Draft decoding is also the cheap way to read them; a 640×480 photo at resize 256 (COCO)
is decoded at full scale and goes to the device.

On the device an image gets its EXIF orientation (read from the header on the host: torchvision
applies it only when decoding on the CPU) and then the torch engine's steps — ``resized_size``,
torchvision's resize, ``center_crop``, ``normalize``'s arithmetic — batched over images of one size.

So the two paths differ only by the JPEG decoder: on the CPU torchvision's libjpeg-turbo gives
exactly Pillow's pixels (tested); on CUDA nvJPEG's IDCT and chroma upsampling differ from
libjpeg's (torchvision's own test allows a mean of 2 grey levels), and EfficientNet-Lite0's
features move 2–18 % under ±2 levels of noise. So the device decodes a cache's JPEGs only when
measured harmless on them (``plan_jpeg_decoding``): the features of a probe of its JPEGs,
decoded on the device and on the host and both encoded in fp32 on the device, must agree within
the precision chooser's bound (``encoders.precision.TOLERANCE``).

Where the time goes (torchvision's ``decode_jpegs_cuda``): baseline JPEGs are decoded in one
batch by the GPU's hardware JPEG engine where it has one (A100, H100, H200), on torchvision's
own stream, which the current stream then waits for; on a GPU without one each image is
Huffman-decoded on the host, in the calling thread — there the loader workers decode faster
(``FeatureCache.build(jpeg_on_device=False)``).

Nothing here is CUDA-only: on the CPU torchvision decodes with libjpeg-turbo, so the tests run
this same code, fallbacks included.
"""
from __future__ import annotations

import io
import os
import warnings
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from PIL import ExifTags, Image, UnidentifiedImageError
from torch.utils.data import Dataset

from .images import _DECODE_ERRORS, DEFAULT_IMAGE_LIMITS, ImageLimits, PreprocessConfig, build_transform, center_crop

# A bound on one device decode (a 511 × 32,000 strip is still decoded at full scale): past it the
# device would hold a large float copy during the resize (4096²: 200 MB); the CPU path streams it.
DEVICE_DECODE_MAX_PIXELS = 4096 * 4096
# Decoded pixels per decode call: bounds the device memory one batch of large photos takes.
DECODE_BATCH_PIXELS = 64 * 1024 * 1024
_EOI = b"\xff\xd9"


@dataclass(frozen=True)
class EncodedJpeg:
    """A JPEG checked from its header, for the device to decode: its bytes, its stored (w, h),
    its EXIF orientation (1–8) and the name errors give it (a path or ``SHARD#KEY``)."""

    data: bytes
    size: tuple[int, int]
    orientation: int
    name: str


class JpegReader:
    """Image bytes → ``EncodedJpeg`` when the device can decode them as the CPU path would, else
    ``None`` (the caller decodes on the CPU): see the module's docstring for what qualifies.
    Raises ``ImageTooLargeError`` for a header over ``limits`` (the CPU path's check and message)
    before anything is decoded."""

    def __init__(self, preprocess: PreprocessConfig, limits: ImageLimits = DEFAULT_IMAGE_LIMITS,
                 max_decode_pixels: int = DEVICE_DECODE_MAX_PIXELS):
        self.preprocess = preprocess
        self.limits = limits
        self.max_decode_pixels = max_decode_pixels

    def __call__(self, data: bytes, name: str) -> EncodedJpeg | None:
        try:
            header = Image.open(io.BytesIO(data))  # reads the header only
        except (UnidentifiedImageError, Image.DecompressionBombError, *_DECODE_ERRORS):
            return None  # the CPU path says what is wrong, in its words
        self.limits.check(name, header.size, self.preprocess)
        if self.preprocess.pillow_resize:
            return None
        side = self.preprocess.needed_side()
        draft_decoded = min(header.width // side, header.height // side) >= 2  # load_image's draft scale > 1
        if (header.format != "JPEG" or header.mode != "RGB" or "progressive" in header.info
                or "adobe" in header.info or draft_decoded or header.width * header.height > self.max_decode_pixels
                or not data.rstrip(b"\0").endswith(_EOI)):  # cut off: Pillow refuses it, nvJPEG might not
            return None
        try:
            orientation = header.getexif().get(ExifTags.Base.Orientation, 1)
        except _DECODE_ERRORS:  # a malformed EXIF block: the CPU path names it
            return None
        known = isinstance(orientation, int) and orientation in _ORIENT  # exif_transpose ignores others too
        return EncodedJpeg(data, header.size, orientation if known else 1, name)


class JpegRows(Dataset):
    """Image files for a device that decodes JPEGs: ``(EncodedJpeg or pixels, index)`` per item —
    a JPEG the device can decode as its bytes, any other image decoded and preprocessed here
    (as ``ImageRows``). Batch with ``extraction.collate_rows``."""

    def __init__(self, paths: list[str], preprocess: PreprocessConfig, limits: ImageLimits = DEFAULT_IMAGE_LIMITS):
        self.paths = paths
        self.reader = JpegReader(preprocess, limits)
        self.transform = build_transform(preprocess, limits=limits)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        path = self.paths[i]
        try:
            with open(path, "rb") as file:
                # Held whole only within max_file_bytes; load_image streams a larger file.
                too_large = os.fstat(file.fileno()).st_size > self.reader.limits.max_file_bytes
                data = None if too_large else file.read()
        except OSError:  # missing, a directory, …: load_image gives its error
            data = None
        if data is None:
            return self.transform(path), i
        return self.reader(data, path) or self.transform(data, name=path), i


def orient(image: torch.Tensor, orientation: int) -> torch.Tensor:
    """(..., h, w) → the image as EXIF ``orientation`` says to show it (``ImageOps.exif_transpose``)."""
    return _ORIENT[orientation](image)


_ORIENT = {
    1: lambda x: x,
    2: lambda x: x.flip(-1),  # mirrored
    3: lambda x: x.flip(-2, -1),  # upside down
    4: lambda x: x.flip(-2),
    5: lambda x: x.transpose(-2, -1),
    6: lambda x: torch.rot90(x, -1, (-2, -1)),  # shot with the camera turned left: turn right
    7: lambda x: x.transpose(-2, -1).flip(-2, -1),
    8: lambda x: torch.rot90(x, 1, (-2, -1)),
}


class DeviceJpegDecoder:
    """``EncodedJpeg`` list → preprocessed pixels on ``device``, with no host sync.

    Returns ``(pixels (n, 3, crop, crop), order)``: ``pixels[k]`` is ``jpegs[order[k]]`` —
    images come grouped by size (one resize per size), and the caller reorders its host-side
    rows rather than the device reordering pixels (an index tensor sent to the device would
    wait for it). Decodes in calls of at most ``DECODE_BATCH_PIXELS``; when a call fails, each of
    its images is decoded alone, and one that still fails is decoded on the CPU by ``load_image``
    (which raises ``ImageReadError`` naming it if Pillow cannot read it either).

    The steps after decoding are the torch engine's (``ImageTransform``): ``resized_size``,
    torchvision's antialiased resize, ``center_crop``, then ``normalize``'s float32 arithmetic
    with its mean and std made on the device once (``normalize`` makes them on every call, a
    blocking copy to a GPU).
    """

    def __init__(self, preprocess: PreprocessConfig, device: torch.device | str,
                 limits: ImageLimits = DEFAULT_IMAGE_LIMITS):
        from torchvision.transforms import v2

        self.device = torch.device(device)
        self.preprocess = preprocess
        self.interpolation = v2.InterpolationMode(preprocess.interpolation)
        self.transform = build_transform(preprocess, limits=limits)  # the CPU path: the fallback
        self.mean = torch.tensor(preprocess.mean, dtype=torch.float32, device=self.device).view(3, 1, 1)
        self.std = torch.tensor(preprocess.std, dtype=torch.float32, device=self.device).view(3, 1, 1)

    def __call__(self, jpegs: list[EncodedJpeg]) -> tuple[torch.Tensor, list[int]]:
        images = [image for group in _by_pixels(jpegs) for image in self._decode(group)]
        by_shape: dict[tuple[int, ...], list[int]] = {}
        failed = []
        for i, image in enumerate(images):
            if image is None:
                failed.append(i)
            else:
                images[i] = orient(image, jpegs[i].orientation)
                by_shape.setdefault(tuple(images[i].shape), []).append(i)
        parts = [self._preprocess(torch.stack([images[i] for i in indices])) for indices in by_shape.values()]
        parts += [self.transform(jpegs[i].data, name=jpegs[i].name)[None].to(self.device) for i in failed]
        return torch.cat(parts), [i for indices in by_shape.values() for i in indices] + failed

    def _preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """(k, 3, h, w) uint8 images of one size → (k, 3, crop, crop) normalised float32."""
        from torchvision.transforms.v2 import functional as F

        width, height = self.preprocess.resized_size((images.shape[-1], images.shape[-2]))
        resized = F.resize(images, [height, width], self.interpolation, antialias=True)  # (k, 3, H, W) uint8
        cropped = torch.stack([center_crop(image, self.preprocess.crop_size) for image in resized])
        return (cropped.to(torch.float32) * np.float32(1.0 / 255) - self.mean) / self.std

    def _decode(self, jpegs: list[EncodedJpeg]) -> list[torch.Tensor | None]:
        """(3, h, w) uint8 images on the device; None for those it cannot decode."""
        try:
            return _decode_jpegs([_bytes_tensor(j.data) for j in jpegs], self.device)
        except RuntimeError:  # torchvision's one error type for bad data; which image is unknown
            if len(jpegs) == 1:
                return [None]
        return [image for jpeg in jpegs for image in self._decode([jpeg])]


def _decode_jpegs(data: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    from torchvision.io import ImageReadMode, decode_jpeg

    with warnings.catch_warnings():
        # torchvision 0.29 deprecates its decoders for TorchCodec, which has no batched nvJPEG decode yet.
        warnings.filterwarnings("ignore", category=DeprecationWarning, module="torchvision")
        return decode_jpeg(data, mode=ImageReadMode.RGB, device=device)


def _bytes_tensor(data: bytes) -> torch.Tensor:
    return torch.frombuffer(bytearray(data), dtype=torch.uint8)  # a copy: frombuffer wants writable memory


def _by_pixels(jpegs: list[EncodedJpeg]) -> list[list[EncodedJpeg]]:
    """Consecutive runs of ``jpegs`` of at most ``DECODE_BATCH_PIXELS`` decoded pixels (at least one image each)."""
    groups: list[list[EncodedJpeg]] = []
    total = 0
    for jpeg in jpegs:
        width, height = jpeg.size
        if not groups or total + width * height > DECODE_BATCH_PIXELS:
            groups.append([])
            total = 0
        groups[-1].append(jpeg)
        total += width * height
    return groups


@dataclass(frozen=True)
class DecodeChoice:
    """Whether extraction decodes JPEGs on its device, and why (what a feature cache records):
    ``relative_error`` is the worst probe image's feature difference between the two decoders."""

    on_device: bool
    reason: str
    relative_error: float | None = None

    def to_dict(self) -> dict:
        return {"jpegs_on_device": self.on_device, "reason": self.reason,
                **({"relative_error": self.relative_error} if self.relative_error is not None else {})}


def plan_jpeg_decoding(encoder, device: torch.device | str, images: int,
                       samples: Callable[[int], list[tuple[bytes, str]]], preprocess: PreprocessConfig) -> DecodeChoice:
    """Whether a cache of ``images`` images decodes its JPEGs on ``device``: on CUDA only, when
    torchvision can, for at least ``encoders.precision.MEASURE_MIN_IMAGES`` images (fewer leave
    the loader workers ahead of the encoder), and when ``decoder_difference`` on
    ``samples(PROBE_IMAGES)`` (the cache's first images: bytes and names) is within
    ``encoders.precision.TOLERANCE``."""
    from ..encoders.precision import MEASURE_MIN_IMAGES, PROBE_IMAGES, TOLERANCE

    device = torch.device(device)
    if device.type != "cuda":
        return DecodeChoice(False, f"the loader workers decode on the CPU for {device}")
    if images < MEASURE_MIN_IMAGES:
        return DecodeChoice(False, f"{images} images to extract, fewer than the {MEASURE_MIN_IMAGES} that pay for "
                                   "measuring")
    if not device_decode_available(device):
        return DecodeChoice(False, f"torchvision cannot decode JPEGs on {device}")
    error = decoder_difference(encoder, device, samples(PROBE_IMAGES), preprocess)
    if error is None:
        return DecodeChoice(False, "none of the first images is a JPEG the device decodes")
    agrees = error <= TOLERANCE
    return DecodeChoice(agrees, f"features within {TOLERANCE} of the host decoder's" if agrees else
                        f"features {error:.3g} from the host decoder's, over {TOLERANCE}", error)


def decoder_difference(encoder, device: torch.device | str, samples: list[tuple[bytes, str]],
                       preprocess: PreprocessConfig) -> float | None:
    """The worst relative feature difference (``encoders.precision.relative_errors``) between the
    JPEGs of ``samples`` decoded on ``device`` and on the host, both encoded by ``encoder`` in
    fp32 on ``device`` (so only the decoders differ); None when none is a JPEG the device decodes."""
    from ..encoders.precision import FP32, PROBE_IMAGES, relative_errors

    reader = JpegReader(preprocess)
    jpegs = [jpeg for jpeg in (reader(data, name) for data, name in samples) if jpeg is not None][:PROBE_IMAGES]
    if not jpegs:
        return None
    device = torch.device(device)
    on_device, order = DeviceJpegDecoder(preprocess, device)(jpegs)
    transform = build_transform(preprocess)
    on_host = torch.stack([transform(jpegs[i].data, name=jpegs[i].name) for i in order]).to(device)
    with torch.inference_mode(), FP32.running(device.type):
        return float(relative_errors(encoder(on_device), encoder(on_host)).max())


def device_decode_available(device: torch.device | str) -> bool:
    """Whether torchvision decodes JPEGs on ``device`` here (its CUDA decoder needs a build with nvJPEG)."""
    probe = io.BytesIO()
    Image.new("RGB", (8, 8)).save(probe, "JPEG")
    try:
        _decode_jpegs([_bytes_tensor(probe.getvalue())], torch.device(device))
    except RuntimeError:
        return False
    return True


__all__ = ["DecodeChoice", "DeviceJpegDecoder", "EncodedJpeg", "JpegReader", "JpegRows", "decoder_difference",
           "device_decode_available", "orient", "plan_jpeg_decoding"]
