"""The arithmetic feature extraction runs in, chosen by measurement.

A mode is a number format (fp32, TF32, or fp16/bf16 autocast), a memory layout (channels-last or
not) and, for the reduced formats, whether depthwise convolutions stay in fp32.
:func:`choose_extraction_mode` runs an encoder on a probe batch of real images in every mode the
device offers, compares each image's features with the fp32 features computed on the CPU (what a
model that captions on a CPU sees), times the modes within the bound and returns the fastest of
them. fp32 (TF32 off) computes what the reference computes, to about 1e-6, so some mode is always
within the bound; a mode outside it is never chosen, however fast.

Why it has to be measured (``benchmarks/experiments/extraction_precision.py``, 41 real images, per image:
mean / worst): bf16 autocast moves EfficientNet-Lite0's features (ImageNet weights) by 7.7 % /
16.5 %, fp16 autocast by 0.8 % / 1.6 %, TF32 operands (emulated) by 0.8 % / 1.5 %. Most of bf16's
error comes from the first two depthwise convolutions (112×112, right after the stem): rounding
only their operands moves the features by 11 % and 10 % (worst image) — the first is followed by BatchNorm scales
of up to 56×, the second has 3×3 kernels whose taps nearly cancel (Σ|w| / |Σw| = 22 for the median
channel). With depthwise convolutions in fp32, bf16 is still 4.6 % / 9.7 % off and fp16 0.6 % /
1.5 % (its fp16 activations), while TF32 (fp32 activations) comes to 0.4 % / 0.7 %: within the
bound. A ResNet-50 (random weights) stays within 1 % in bf16. Which mode wins on a GPU, and by
how much, only the GPU can say.
"""
from __future__ import annotations

import copy
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

TOLERANCE = 1e-2  # largest relative error of any probe image's features against fp32 on the CPU
PROBE_IMAGES = 16
# Measuring runs the probe about ten times (the CPU reference, then each mode once for its error
# and three times for its speed): on a 2-core CPU it pays for itself, through channels-last's
# 25 % gain, from about 600 images on. Smaller extractions run in fp32 unmeasured.
MEASURE_MIN_IMAGES = 1024

AUTOCAST_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass(frozen=True)
class ExtractionMode:
    """How an encoder runs while features are extracted.

    ``precision``: ``fp32`` (TF32 off), ``tf32`` (TF32 convolutions and matmuls, CUDA), ``fp16``
    or ``bf16`` (autocast). ``channels_last``: the encoder and its inputs in NHWC layout.
    ``fp32_depthwise``: depthwise convolutions run in fp32 (no TF32, no autocast) in the
    reduced-precision modes.
    """

    precision: str = "fp32"
    channels_last: bool = False
    fp32_depthwise: bool = False

    @property
    def name(self) -> str:
        return "-".join([self.precision, *(["channels-last"] if self.channels_last else []),
                         *(["fp32-depthwise"] if self.fp32_depthwise else [])])

    def prepare(self, encoder: nn.Module) -> nn.Module:
        """The encoder as this mode runs it: ``encoder`` itself, or a changed copy (layout,
        fp32 depthwise convolutions); ``encoder`` is never modified."""
        if not (self.channels_last or self.fp32_depthwise):
            return encoder
        prepared = copy.deepcopy(encoder)
        if self.fp32_depthwise:
            for parent in list(prepared.modules()):
                for child_name, child in parent.named_children():
                    if is_depthwise(child):
                        setattr(parent, child_name, _Float32(child))
        if self.channels_last:
            prepared = prepared.to(memory_format=torch.channels_last)
        return prepared

    def inputs(self, pixels: torch.Tensor) -> torch.Tensor:
        """Pixels in the layout the prepared encoder runs fastest on."""
        return pixels.contiguous(memory_format=torch.channels_last if self.channels_last else torch.contiguous_format)

    @contextmanager
    def running(self, device_type: str):
        """The context the prepared encoder runs in: TF32 on or off, autocast or not."""
        dtype = AUTOCAST_DTYPES.get(self.precision)
        with _tf32(self.precision == "tf32"), \
                torch.autocast(device_type, dtype or torch.bfloat16, enabled=dtype is not None):
            yield


FP32 = ExtractionMode()


def is_depthwise(module: nn.Module) -> bool:
    return isinstance(module, nn.Conv2d) and module.groups > 1 and module.groups == module.in_channels


class _Float32(nn.Module):
    """Runs ``module`` in fp32 inside a reduced-precision mode: no autocast, no TF32."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with _tf32(False), torch.autocast(x.device.type, enabled=False):
            return self.module(x.float())


@contextmanager
def _tf32(enabled: bool):
    # Set both ways explicitly: PyTorch lets cuDNN convolutions use TF32 by default
    # (cudnn.allow_tf32 is True), so "fp32" would otherwise be TF32 on Ampere and later.
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def candidate_modes(encoder: nn.Module, device: torch.device | str) -> list[ExtractionMode]:
    """Every mode worth measuring for ``encoder`` on ``device``, fp32 first.

    CUDA: fp32, TF32, fp16 and (where supported) bf16, each in both layouts. The CPU: fp32 in both
    layouts, and bf16/fp16 only where the CPU computes them natively (AVX-512 BF16 or AMX; on
    other CPUs they are emulated: EfficientNet-Lite0 ran 10× slower in bf16 than in fp32 on an
    AVX2 CPU, so they could never win). Reduced formats also come with fp32 depthwise
    convolutions, for encoders that have them.
    """
    device = torch.device(device)
    if device.type == "cuda":
        precisions = ["fp32", "tf32", "fp16", *(["bf16"] if torch.cuda.is_bf16_supported() else [])]
    elif device.type == "cpu":
        native_bf16 = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
        precisions = ["fp32", *(["bf16"] if native_bf16 else []),
                      *(["fp16"] if torch.cpu._is_amx_fp16_supported() else [])]
    else:
        return [FP32]
    modes = [ExtractionMode(p, layout) for p in precisions for layout in (False, True)]
    if any(is_depthwise(m) for m in encoder.modules()):
        modes += [ExtractionMode(p, layout, fp32_depthwise=True)
                  for p in precisions if p != "fp32" for layout in (False, True)]
    return modes


@dataclass
class ExtractionChoice:
    """A chosen mode and the measurements it was chosen by (what a feature cache records).

    ``measurements``: mode name → ``{"relative_error": worst probe image, "ms_per_image": time
    or None}``, None for modes outside the bound (not timed); empty when nothing was measured,
    and ``reason`` says why.
    """

    mode: ExtractionMode
    device: str
    tolerance: float = TOLERANCE
    probe_images: int = 0
    measurements: dict[str, dict] = field(default_factory=dict)
    reason: str = ""

    def to_dict(self) -> dict:
        return {"mode": self.mode.name, "device": self.device, "tolerance": self.tolerance,
                "probe_images": self.probe_images, "measurements": self.measurements,
                **({"reason": self.reason} if self.reason else {})}


def device_description(device: torch.device | str) -> str:
    """``cuda:0 (NVIDIA H200)`` or ``cpu (AVX2)``: where features were extracted."""
    device = torch.device(device)
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    if device.type == "cpu":
        return f"cpu ({torch.backends.cpu.get_cpu_capability()})"
    return str(device)


def relative_errors(got, want) -> torch.Tensor:
    """Per image, the larger relative error (L2 norm) of the pooled vector and the region grid:
    ``got`` and ``want`` are ``EncoderOutput``s of the same images; (batch,) float64."""
    errors = []
    for g, w in ((got.pooled, want.pooled), (got.grid, want.grid)):
        g, w = g.detach().double().cpu().flatten(1), w.detach().double().cpu().flatten(1)
        errors.append((g - w).norm(dim=1) / w.norm(dim=1).clamp_min(1e-30))
    error = torch.stack(errors).amax(dim=0)
    return torch.where(error.isfinite(), error, torch.full_like(error, float("inf")))  # NaN: out of bound


def choose_extraction_mode(
    encoder: nn.Module,
    device: torch.device | str,
    probe: torch.Tensor,
    batch_size: int | None = None,
    tolerance: float = TOLERANCE,
    candidates: list[ExtractionMode] | None = None,
    repeats: int = 3,
) -> ExtractionChoice:
    """The fastest mode whose features of every ``probe`` image are within ``tolerance`` relative
    error of fp32 features on the CPU.

    ``encoder``: an eval-mode encoder (moved to ``device``, otherwise not modified);
    ``probe``: preprocessed real images (n, 3, H, W), on the CPU; ``batch_size``: the batch the
    modes are timed at (the probe repeated; default: the probe's size), the batch extraction runs
    at; ``candidates``: the modes to measure (default :func:`candidate_modes`). Each mode runs
    once for its error (and warm-up); those within the bound are timed, best of ``repeats``.
    """
    device = torch.device(device)
    candidates = candidates or candidate_modes(encoder, device)
    reference_encoder = encoder if _device_of(encoder).type == "cpu" else copy.deepcopy(encoder).cpu()
    with torch.inference_mode():
        want = reference_encoder(probe.float())
    del reference_encoder
    batch = probe.repeat((-(-(batch_size or len(probe)) // len(probe)), 1, 1, 1))[: batch_size or len(probe)]
    batch = batch.to(device)
    encoder = encoder.to(device)
    measurements, timed = {}, {}
    for mode in candidates:
        prepared = mode.prepare(encoder)
        pixels = mode.inputs(batch)
        with torch.inference_mode(), mode.running(device.type):
            got = prepared(pixels)  # also the warm-up of the timing below
            error = float(relative_errors(got._replace(pooled=got.pooled[: len(probe)], grid=got.grid[: len(probe)]),
                                          want).max())
            seconds = None
            if error <= tolerance:
                seconds = min(_timed(prepared, pixels, device) for _ in range(repeats))
                timed[mode] = seconds
        measurements[mode.name] = {"relative_error": error,
                                   "ms_per_image": None if seconds is None else 1000 * seconds / len(batch)}
    chosen = min(timed, key=timed.get) if timed else FP32
    return ExtractionChoice(chosen, device_description(device), tolerance, len(probe), measurements,
                            "" if timed else "no mode within the bound on this device; fp32")


def plan_extraction(encoder: nn.Module, device: torch.device | str, images: int,
                    probe: Callable[[int], torch.Tensor], batch_size: int, runtime: str = "torch") -> ExtractionChoice:
    """The mode a feature cache extracts ``images`` images in: :func:`choose_extraction_mode` on
    ``probe(PROBE_IMAGES)`` (real images of the cache) when there are at least
    ``MEASURE_MIN_IMAGES`` and more than one candidate; else fp32, unmeasured, with the reason.
    ``runtime="onnx"``: ONNX Runtime runs the encoder, in fp32."""
    device = torch.device(device)
    where = device_description(device)
    if runtime == "onnx":
        return ExtractionChoice(FP32, where, reason="ONNX Runtime runs the encoder (fp32)")
    if images < MEASURE_MIN_IMAGES:
        return ExtractionChoice(FP32, where, reason=f"{images} images to extract, fewer than the "
                                                    f"{MEASURE_MIN_IMAGES} that pay for measuring")
    candidates = candidate_modes(encoder, device)
    if len(candidates) == 1:
        return ExtractionChoice(FP32, where, reason="the only mode on this device")
    return choose_extraction_mode(encoder, device, probe(PROBE_IMAGES), batch_size, candidates=candidates)


def _timed(encoder: nn.Module, pixels: torch.Tensor, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    started = time.perf_counter()
    encoder(pixels)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - started


def _device_of(module: nn.Module) -> torch.device:
    parameter = next(module.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


__all__ = ["FP32", "MEASURE_MIN_IMAGES", "TOLERANCE", "ExtractionChoice", "ExtractionMode", "candidate_modes",
           "choose_extraction_mode", "device_description", "is_depthwise", "plan_extraction", "relative_errors"]
