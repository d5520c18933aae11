"""What a training step costs with a frozen encoder, with the encoder's top stages fine-tuned from
cached activations, and with them fine-tuned from pixels — and what the caches cost per image.

One step = forward, backward and Adam update of what trains, on a batch of ``--batch-size``
(image, caption) pairs of ``--tokens`` tokens, with the bundled recipe's decoder
(show-attend-tell 512 wide, ``configs/emoji-sat.yaml``) over EfficientNet-Lite0 (real ImageNet
weights) at each ``--sizes`` input:

- ``frozen``: cached features (pooled + region grid) → decoder;
- ``cached top N``: cached activations of the frozen stages → the last N stages + decoder;
- ``pixels top N``: pixels → the whole encoder (last N stages trainable) + decoder;

each of the last two in the encoder's default layout (NCHW) and in NHWC (``channels-last``: its
weights converted, as training does, ``TrainConfig.channels_last``).

Inputs are random tensors of the right shapes (a step's time does not depend on their values);
the input pipelines are timed apart, on real images (``--images``): reading a cache row, and
reading + ``augment_image`` + preprocessing an image (what the pixel path adds per pair), and
extracting a cache (the frozen bottom in torch, the whole encoder in ONNX Runtime as the feature
cache does), per image. Median of ``--steps`` steps after one warm-up. ``--device cuda`` times
the steps there, under bf16 autocast as training runs them (``amp``), to decide whether NHWC pays
on a GPU too (``channels_last`` is off there until measured; ``gpu_check.sh`` runs it).

    OMP_NUM_THREADS=1 python -m benchmarks.timing.bench_finetune_step --images 'data/emoji/images/*/*.png' \\
        --json-out finetune_step.json
"""
from __future__ import annotations

import argparse
import glob
import json
import statistics
import time

import numpy as np
import torch

from captioner import Captioner
from captioner.data.augment import AugmentConfig, augment_image
from captioner.data.images import PreprocessConfig, build_transform, load_image
from captioner.data.vocab import Vocabulary
from captioner.decoding import Features
from captioner.encoders import EncoderActivations
from captioner.objectives import CaptionCrossEntropy

DECODER = {"embed_dim": 512, "hidden_dim": 512, "attention_dim": 512}  # configs/emoji-sat.yaml


def _model(vocab: Vocabulary, size: int, trainable: int, channels_last: bool = False) -> Captioner:
    preprocess = PreprocessConfig(crop_size=size, resize_size=size, resize="squash", mean=(0.5,) * 3, std=(0.5,) * 3)
    model = Captioner.build("efficientnet_lite0", "show-attend-tell", vocab, {"trainable_blocks": trainable}, DECODER,
                            preprocess=preprocess, max_length=16)
    if channels_last:
        model.encoder.to(memory_format=torch.channels_last)
    return model.train()


def _on(device: torch.device, inputs):
    """A batch's inputs (pixels, cached activations or features) on ``device``."""
    if isinstance(inputs, EncoderActivations):
        return EncoderActivations(inputs.values.to(device), inputs.stage)
    if isinstance(inputs, Features):
        return Features(*(t.to(device) if torch.is_tensor(t) else t for t in inputs))
    return inputs.to(device)


def _median_step(model: Captioner, inputs, tokens: torch.Tensor, steps: int, device=torch.device("cpu")) -> float:
    """Seconds per optimizer step on ``device`` (median of ``steps`` after a warm-up; CUDA: bf16
    autocast, synchronised before each reading)."""
    model, inputs, tokens = model.to(device), _on(device, inputs), tokens.to(device)
    objective = CaptionCrossEntropy(model.vocab.pad_id)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    cuda = device.type == "cuda"
    times = []
    for step in range(steps + 1):
        if cuda:
            torch.cuda.synchronize(device)
        started = time.perf_counter()
        with torch.autocast(device.type, torch.bfloat16, enabled=cuda):
            loss = objective(model, inputs, tokens).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if cuda:
            torch.cuda.synchronize(device)
        if step:
            times.append(time.perf_counter() - started)
    return statistics.median(times)


def _per_image(function, items) -> float:
    started = time.perf_counter()
    for item in items:
        function(item)
    return (time.perf_counter() - started) / len(items)


def _pipeline(model: Captioner, frozen: Captioner, split, images: list[str], size: int) -> dict:
    """Milliseconds per image: what the pixel path reads per pair, and what extracting a cache
    costs (batches of 16, the cache's CPU batch)."""
    from captioner.data.activation_cache import OnnxBottom
    from captioner.encoders.onnx_runtime import OnnxEncoder

    transform, augment = build_transform(model.preprocess), AugmentConfig()
    pixels = torch.stack([transform(p) for p in images[:16]])
    engines = {"extract_bottom_torch": split.bottom_module.eval(), "extract_bottom_onnx": OnnxBottom(split.bottom_module, size),
               "extract_features_onnx": OnnxEncoder(frozen.encoder.eval(), size)}
    timings = {}
    with torch.inference_mode():
        for name, engine in engines.items():
            engine(pixels)  # warm-up
            timings[name] = 1000 * _per_image(engine, [pixels]) / len(pixels)
    return {"read_and_preprocess": 1000 * _per_image(transform, images),
            "read_augment_and_preprocess": 1000 * _per_image(
                lambda p: transform(augment_image(load_image(p), augment, seed=0)), images), **timings}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="160,224", help="input sides (pixels)")
    parser.add_argument("--top", default="1,2", help="trainable stages to time")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--tokens", type=int, default=8, help="tokens a caption (<start> .. <end>; emoji: ~7)")
    parser.add_argument("--vocab-size", type=int, default=1745, help="the bundled model's vocabulary")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--layouts", default="nchw,channels-last", help="the fine-tuned encoder's layouts to time")
    parser.add_argument("--images", default=None, help="a glob of real images for the input-pipeline rows")
    parser.add_argument("--pipeline-images", type=int, default=48)
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N]: where the steps run")
    parser.add_argument("--json-out", default=None)
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    torch.manual_seed(0)
    vocab = Vocabulary([f"w{i}" for i in range(args.vocab_size - 4)])  # + the 4 markers
    tokens = torch.randint(4, len(vocab), (args.batch_size, args.tokens))
    tokens[:, 0], tokens[:, -1] = vocab.start_id, vocab.end_id
    tops = [int(n) for n in args.top.split(",")]
    images = sorted(glob.glob(args.images))[:: max(1, len(glob.glob(args.images)) // args.pipeline_images)][
        : args.pipeline_images] if args.images else []
    rows = []
    for size in (int(s) for s in args.sizes.split(",")):
        frozen = _model(vocab, size, 0)
        with torch.no_grad():
            out = frozen.encoder.eval()(torch.zeros(1, 3, size, size))
        b = args.batch_size
        features = Features(torch.randn(b, out.pooled.shape[1]), torch.randn(b, *out.grid.shape[1:]), out.grid_shape)
        grid_bytes = 2 * (out.pooled.numel() + out.grid.numel())
        rows.append({"size": size, "path": "frozen", "seconds_per_step": _median_step(frozen, features, tokens, args.steps, device),
                     "cache_bytes_per_image": grid_bytes, "grid": list(out.grid_shape)})
        for n in tops:
            for layout in args.layouts.split(","):
                model = _model(vocab, size, n, channels_last=layout == "channels-last")
                split = model.encoder_split(len(model.encoder.stage_members()) - n)
                with torch.no_grad():
                    shape = split.bottom(torch.zeros(1, 3, size, size)).shape[1:]
                activations = EncoderActivations(torch.randn(b, *shape), split.stage)
                rows.append({"size": size, "path": f"cached top {n}", "layout": layout, "activations": list(shape),
                             "seconds_per_step": _median_step(model, activations, tokens, args.steps, device),
                             "cache_bytes_per_image": 2 * int(np.prod(shape))})
                rows.append({"size": size, "path": f"pixels top {n}", "layout": layout,
                             "seconds_per_step": _median_step(model, torch.randn(b, 3, size, size), tokens, args.steps,
                                                                 device)})
            if images and device.type == "cpu":
                rows.append({"size": size, "path": f"input pipeline top {n} (ms per image)",
                             **_pipeline(model, frozen, split, images, size)})
        for row in rows:
            if row["size"] == size:
                print(json.dumps(row), flush=True)
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump({"batch_size": args.batch_size, "tokens": args.tokens, "threads": torch.get_num_threads(),
                       "device": str(device),
                       "rows": rows}, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
