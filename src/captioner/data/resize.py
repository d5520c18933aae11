"""PyTorch's antialiased uint8 resize, in numpy: the resampling kernel of the torch-free engine.

torchvision resizes uint8 images on the CPU with PyTorch's integer kernel (antialiased,
separable, int16 weights at a per-axis fixed-point precision, horizontal pass first, each
pass rounded to uint8). ``resize`` below is that kernel in numpy, so the pixels match
torchvision's bit for bit; PIL's own resize uses other fixed-point weights (on the example
images: up to 2 levels off, on up to 5% of the values). Everything else about preprocessing
(sizes, crop, normalisation, and ``pillow_resize``'s Pillow path) is written once in
:mod:`captioner.data.images`.
"""
from __future__ import annotations

import math

import numpy as np


# --- PyTorch's uint8 antialiased resize ---------------------------------------------------
def _triangle(x: float) -> float:
    x = abs(x)
    return 1.0 - x if x < 1.0 else 0.0


def _cubic(x: float, a: float = -0.5) -> float:
    """Keys' cubic convolution with a = -0.5 (PyTorch's antialiased bicubic, as Pillow)."""
    x = abs(x)
    if x < 1.0:
        return ((a + 2) * x - (a + 3)) * x * x + 1
    if x < 2.0:
        return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
    return 0.0


FILTERS = {"bilinear": (_triangle, 2), "bicubic": (_cubic, 4)}  # filter, taps at scale 1


def _axis_weights(in_size: int, out_size: int, interpolation: str) -> tuple[np.ndarray, np.ndarray, int]:
    """One axis's taps: first input index per output (out,), int16-valued weights
    (out, taps) and their fixed-point precision, as ``_compute_index_ranges_int16_weights``."""
    fn, interp_size = FILTERS[interpolation]
    scale = in_size / out_size
    support = interp_size * 0.5 * scale if scale >= 1.0 else interp_size * 0.5
    taps = int(math.ceil(support)) * 2 + 1
    invscale = 1.0 / scale if scale >= 1.0 else 1.0
    starts = np.zeros(out_size, dtype=np.int64)
    weights = np.zeros((out_size, taps), dtype=np.float64)
    largest = 0.0
    for i in range(out_size):
        center = scale * (i + 0.5)
        first = max(int(center - support + 0.5), 0)
        count = min(max(min(int(center + support + 0.5), in_size) - first, 0), taps)
        row = [fn((j + first - center + 0.5) * invscale) for j in range(count)]
        total = sum(row)
        if total != 0.0:
            row = [w / total for w in row]
            largest = max(largest, max(row))
        starts[i] = first
        weights[i, :count] = row
    precision = 0
    while precision < 22 and int(0.5 + largest * (1 << (precision + 1))) < (1 << 15):
        precision += 1
    scaled = weights * (1 << precision)
    fixed = np.where(scaled < 0, np.trunc(scaled - 0.5), np.trunc(scaled + 0.5)).astype(np.int64)
    return starts, fixed, precision


def _resample_axis(pixels: np.ndarray, out_size: int, axis: int, interpolation: str) -> np.ndarray:
    """Resample uint8 ``pixels`` (H, W, C) along ``axis`` (0 rows, 1 columns) to ``out_size``."""
    in_size = pixels.shape[axis]
    starts, weights, precision = _axis_weights(in_size, out_size, interpolation)
    # int32 holds the sums: the weights of one output add up to 2**precision <= 2**15.
    source = pixels.astype(np.int32)
    shape = [1, 1, 1]
    shape[axis] = out_size
    accumulator = np.full(source.shape[:axis] + (out_size,) + source.shape[axis + 1 :], 1 << (precision - 1),
                          dtype=np.int32)
    for tap in range(weights.shape[1]):
        index = np.minimum(starts + tap, in_size - 1)  # past the end the weight is 0
        accumulator += np.take(source, index, axis=axis) * weights[:, tap].astype(np.int32).reshape(shape)
    return np.clip(accumulator >> precision, 0, 255).astype(np.uint8)


def resize(pixels: np.ndarray, height: int, width: int, interpolation: str = "bilinear") -> np.ndarray:
    """uint8 (H, W, C) → (height, width, C), antialiased, as torchvision on a uint8 tensor."""
    if interpolation not in FILTERS:
        raise ValueError(f"interpolation {interpolation!r} is not reproduced here; use one of {sorted(FILTERS)}")
    if pixels.shape[1] != width:
        pixels = _resample_axis(pixels, width, 1, interpolation)
    if pixels.shape[0] != height:
        pixels = _resample_axis(pixels, height, 0, interpolation)
    return pixels
