"""Single-image captioning latency on the CPU: read → preprocess → encode → beam search.

Compares, in one run, the variants worth trying for the bundled model: input size,
channels-last, and (when installed) ONNX Runtime for the encoder, alone and end to end
through ``Captioner.use_runtime("onnx")`` (what the default ``auto`` runtime picks on the CPU).
Torch rows force ``use_runtime("torch")``. Prints a Markdown table of median / p90
milliseconds per stage.

    python -m benchmarks.timing.bench_latency [--model DIR] [--image examples/...] [--repeats 50]

``--compare BASELINE CANDIDATE ...`` instead times one image end to end through
``Captioner.caption`` (file → caption, the default runtime, what ``captioner caption`` runs)
for each model directory in the same run, in interleaved rounds so machine load hits each
alike, and prints each median as a multiple of the first (``bundled`` names the bundled model;
``DIR@LANG`` captions in that language of a multilingual model):

    python -m benchmarks.timing.bench_latency --compare bundled runs/new-model --repeats 100
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from captioner import Captioner
from captioner.data.images import PreprocessConfig, build_transform


def timed(fn, repeats: int):
    fn()  # warm-up
    fn()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        samples.append((time.perf_counter() - start) * 1000)
    samples.sort()
    return statistics.median(samples), samples[int(0.9 * (len(samples) - 1))], out


def onnx_encoder(model: Captioner, size: int):
    """The encoder under ONNX Runtime (captioner's OnnxEncoder), or None when not installed."""
    try:
        from captioner.encoders.onnx_runtime import OnnxEncoder

        return OnnxEncoder(model.encoder, size)
    except RuntimeError as e:  # onnxruntime missing
        print(f"skipping onnxruntime: {e}")
        return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="model directory (default: the bundled model)")
    parser.add_argument("--image", default=str(Path(__file__).parents[2] / "tests/fixtures/tiny/images/emoji_1f436.png"))
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--beam-size", type=int, default=3)
    parser.add_argument("--sizes", default="224,160")
    parser.add_argument("--compare", nargs="+", metavar="DIR", default=None,
                        help="time these models end to end in one run, the first is the baseline")
    args = parser.parse_args()
    if args.compare:
        return compare(args.compare, args.image, args.repeats, args.beam_size)

    model = Captioner.from_pretrained(args.model).use_runtime("torch")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, model {args.model or 'bundled'}")
    rows = []
    for size in [int(s) for s in args.sizes.split(",")]:
        preprocess = PreprocessConfig(**{**model.preprocess.to_dict(), "crop_size": size, "resize_size": size})
        transform = build_transform(preprocess)
        read_ms, _, pixels = timed(lambda: transform(args.image)[None], args.repeats)
        for variant in ("eager", "channels_last", "onnxruntime"):
            if variant == "onnxruntime":
                run = onnx_encoder(model, size)
                if run is None:
                    continue
                encode = lambda: run(pixels)  # noqa: E731
                # and measured end to end: a model whose preprocess gives this size, switched to ONNX
                onnx_model = Captioner.from_pretrained(args.model)
                onnx_model.preprocess = preprocess
                onnx_model.use_runtime("onnx")
            else:
                encoder = model.encoder
                x = pixels
                if variant == "channels_last":
                    encoder = encoder.to(memory_format=torch.channels_last)
                    x = pixels.contiguous(memory_format=torch.channels_last)

                def encode(encoder=encoder, x=x):
                    with torch.inference_mode():
                        return encoder(x)

            encode_ms, _, _ = timed(encode, args.repeats)
            with torch.inference_mode():
                features = model.encode(pixels)
            decode_ms, _, _ = timed(lambda: model.generate(features, beam_size=args.beam_size), args.repeats)
            model.encoder.to(memory_format=torch.contiguous_format)

            def end_to_end():
                with torch.inference_mode():
                    return model.caption_pixels(transform(args.image)[None], beam_size=args.beam_size)

            total_ms, total_p90, _ = timed(end_to_end, args.repeats) if variant == "eager" else (
                read_ms + encode_ms + decode_ms, float("nan"), None)
            rows.append((size, variant, read_ms, encode_ms, decode_ms, total_ms, total_p90))
            if variant == "onnxruntime":

                def end_to_end_onnx():
                    with torch.inference_mode():
                        return onnx_model.caption_pixels(transform(args.image)[None], beam_size=args.beam_size)

                total_ms, total_p90, captions = timed(end_to_end_onnx, args.repeats)
                expected = end_to_end()[0].text
                if captions[0].text != expected:
                    print(f"WARNING: {size}px onnx caption {captions[0].text!r} != torch {expected!r}")
                nan = float("nan")  # stages not timed separately on this row
                rows.append((size, "onnxruntime via use_runtime(\"onnx\")", nan, nan, nan, total_ms, total_p90))
    print("\n| input | encoder | read+preprocess ms | encode ms | beam-%d ms | end to end ms (median) | p90 |" % args.beam_size)
    print("|---|---|---|---|---|---|---|")

    def ms(value: float) -> str:
        return "" if value != value else f"{value:.1f}"  # nan: not measured

    for size, variant, *values in rows:
        print(f"| {size} | {variant} | " + " | ".join(ms(v) for v in values) + " |")


def compare(directories: list[str], image: str, repeats: int, beam_size: int) -> None:
    """One-image latency of each model, end to end, in interleaved rounds; ratios to the first.
    ``DIR@LANG`` captions in that language of a multilingual model (``bundled@de``)."""
    runs = [d.rpartition("@")[::2] if "@" in d else (d, None) for d in directories]
    loaded: dict[str, Captioner] = {}
    for directory, _ in runs:
        if directory not in loaded:
            loaded[directory] = Captioner.from_pretrained(None if directory == "bundled" else directory)
    models = [(loaded[directory], language) for directory, language in runs]
    samples: list[list[float]] = [[] for _ in models]
    for model, language in models:  # warm-up: the first call builds the ONNX Runtime session
        model.caption(image, beam_size=beam_size, language=language)
        model.caption(image, beam_size=beam_size, language=language)
    for _ in range(repeats):
        for (model, language), times in zip(models, samples):
            start = time.perf_counter()
            model.caption(image, beam_size=beam_size, language=language)
            times.append((time.perf_counter() - start) * 1000)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {repeats} rounds, beam {beam_size}, {image}")
    print("\n| model | encoder, input | caption | median ms | p90 ms | × first |")
    print("|---|---|---|---:|---:|---:|")
    baseline = statistics.median(samples[0])
    for directory, (model, language), times in zip(directories, models, samples):
        times.sort()
        median = statistics.median(times)
        print(f"| {directory} | {model.encoder.name}, {model.preprocess.crop_size} px | "
              f"{model.caption(image, beam_size=beam_size, language=language).text} | {median:.1f} | "
              f"{times[int(0.9 * (len(times) - 1))]:.1f} | {median / baseline:.2f} |")

if __name__ == "__main__":
    main()
