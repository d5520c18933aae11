"""How far each extraction mode's features are from fp32 on the CPU, and how fast each mode runs
(issue #21: the numbers behind ``captioner.encoders.precision``).

For every encoder: each mode the device runs (``--all-modes``: also those ``candidate_modes``
leaves out, e.g. bf16 on a CPU that only emulates it), its relative error per image (L2, the larger
of pooled vector and region grid) against fp32 on the CPU — worst and mean image — and its time
per image. ``--emulate`` adds, on the CPU, TF32/fp16/bf16 as rounding of every convolution's
operands (what the GPU's formats do to them, computed in fp32), checked against real CPU autocast,
and which layers' rounding moves the features most. Real photos and drawings: the tiny test set
and examples/.

    python -m benchmarks.experiments.extraction_precision --encoders efficientnet_lite0 --all-modes --emulate
    python -m benchmarks.experiments.extraction_precision --encoders resnet50 --images 12 --all-modes
    python -m benchmarks.experiments.extraction_precision --device cuda --json gpu-precision.json
"""
from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import torch
from torch import nn

from captioner import create_encoder
from captioner.data.images import build_transform
from captioner.encoders.precision import (AUTOCAST_DTYPES, ExtractionMode, candidate_modes, device_description,
                                          is_depthwise, relative_errors)

ROOT = Path(__file__).resolve().parents[2]
IMAGES = [*sorted((ROOT / "tests/fixtures/tiny/images").glob("*.[jp][pn]g")),
          *sorted((ROOT / "examples").glob("*.[jp][pn]g"))]


def features(encoder, pixels, mode: ExtractionMode, device, batch_size: int):
    """The encoder's outputs over ``pixels`` in ``mode``, and the seconds per image (after a warm-up batch)."""
    prepared = mode.prepare(encoder.to(device))
    outputs, seconds = [], 0.0
    with torch.inference_mode(), mode.running(device.type):
        prepared(mode.inputs(pixels[:batch_size].to(device)))
        for start in range(0, len(pixels), batch_size):
            batch = mode.inputs(pixels[start : start + batch_size].to(device))
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            started = time.perf_counter()
            out = prepared(batch)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            seconds += time.perf_counter() - started
            outputs.append(out)
    joined = outputs[0]._replace(pooled=torch.cat([o.pooled.float().cpu() for o in outputs]),
                                 grid=torch.cat([o.grid.float().cpu() for o in outputs]))
    return joined, seconds / len(pixels)


def round_to(x: torch.Tensor, fmt: str) -> torch.Tensor:
    """``x`` rounded to ``fmt``'s mantissa and range, back in fp32."""
    if fmt == "tf32":  # 10 mantissa bits: round to nearest even at bit 13, as the GPU converts operands
        bits = x.float().contiguous().view(torch.int32)
        return ((bits + 0x0FFF + ((bits >> 13) & 1)) & ~0x1FFF).view(torch.float32)
    return x.to(AUTOCAST_DTYPES[fmt]).float()


def emulated(encoder: nn.Module, fmt: str, rounded=lambda name, module: True) -> nn.Module:
    """A copy of ``encoder`` whose convolutions (those ``rounded`` picks) see ``fmt``-rounded weights and inputs."""
    copied = copy.deepcopy(encoder)
    for name, module in copied.named_modules():
        if isinstance(module, nn.Conv2d) and rounded(name, module):
            with torch.no_grad():
                module.weight.copy_(round_to(module.weight, fmt))
            module.register_forward_pre_hook(lambda m, args: (round_to(args[0], fmt), *args[1:]))
    return copied


def study(name: str, pixels: torch.Tensor, device, batch_size: int, all_modes: bool, emulate: bool) -> dict:
    encoder = create_encoder(name, pretrained=name.startswith("efficientnet")).eval()
    cpu = torch.device("cpu")
    reference, reference_seconds = features(encoder, pixels, ExtractionMode(), cpu, batch_size)
    modes = candidate_modes(encoder, device)
    if all_modes:
        precisions = ["fp32", *AUTOCAST_DTYPES] + (["tf32"] if device.type == "cuda" else [])
        modes = [ExtractionMode(p, layout, depthwise) for p in precisions for layout in (False, True)
                 for depthwise in (False, True) if not (depthwise and p == "fp32")
                 and not (depthwise and not any(is_depthwise(m) for m in encoder.modules()))]
    rows = {}

    def record(label, out, seconds=None):
        errors = relative_errors(out, reference)
        rows[label] = {"worst_image": float(errors.max()), "mean_image": float(errors.mean()),
                       "ms_per_image": None if seconds is None else 1000 * seconds}
        ms = "" if seconds is None else f"{1000 * seconds:9.1f} ms/image"
        print(f"  {label:40s} worst {errors.max():.4f}  mean {errors.mean():.4f}  {ms}", flush=True)

    print(f"{name} ({'ImageNet weights' if name.startswith('efficientnet') else 'random weights'}), "
          f"{len(pixels)} images, {device_description(device)}; "
          f"CPU fp32 reference {1000 * reference_seconds:.1f} ms/image")
    for mode in modes:
        record(mode.name, *features(encoder, pixels, mode, device, batch_size))
    if emulate:
        print("  emulated on the CPU (convolution operands rounded, fp32 arithmetic):")
        for fmt in ("tf32", "fp16", "bf16"):
            record(f"{fmt} operands", features(emulated(encoder, fmt), pixels, ExtractionMode(), cpu, batch_size)[0])
            record(f"{fmt} operands, depthwise in fp32", features(
                emulated(encoder, fmt, lambda n, m: not is_depthwise(m)), pixels, ExtractionMode(), cpu, batch_size)[0])
        single = {}
        for layer, module in encoder.named_modules():
            if isinstance(module, nn.Conv2d):
                out = features(emulated(encoder, "bf16", lambda n, m, layer=layer: n == layer), pixels,
                               ExtractionMode(), cpu, batch_size)[0]
                single[layer] = float(relative_errors(out, reference).max())
        print("  bf16 operands in one layer only, the five that move the features most (worst image):")
        for layer, error in sorted(single.items(), key=lambda item: -item[1])[:5]:
            kind = "depthwise" if is_depthwise(dict(encoder.named_modules())[layer]) else "conv"
            print(f"    {layer:30s} {kind:9s} {error:.4f}")
        rows["bf16_one_layer"] = single
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--encoders", default="efficientnet_lite0,resnet50")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--images", type=int, default=len(IMAGES), help="how many of the real images (spread evenly)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--all-modes", action="store_true", help="also the modes candidate_modes leaves out")
    parser.add_argument("--emulate", action="store_true",
                        help="TF32/fp16/bf16 emulated on the CPU, per-layer attribution")
    parser.add_argument("--json", help="write the numbers here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    paths = IMAGES[:: max(1, len(IMAGES) // args.images)][: args.images]
    results = {}
    for name in args.encoders.split(","):
        transform = build_transform(create_encoder(name, pretrained=False).default_preprocess)
        pixels = torch.stack([transform(str(path)) for path in paths])
        results[name] = study(name, pixels, device, args.batch_size, args.all_modes, args.emulate)
    if args.json:
        Path(args.json).write_text(json.dumps({"device": device_description(device), "images": len(paths),
                                               "results": results}, indent=1))


if __name__ == "__main__":
    main()
