"""On a CUDA machine only (skipped elsewhere; ``benchmarks/timing/gpu_check.sh`` runs them on a lent
GPU): features extracted in the mode the precision policy measures on the GPU are those fp32
computes on the CPU (within 1e-2), and training (bf16 autocast) and captioning run on the GPU with
the results they have on the CPU."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from captioner import Captioner, create_encoder
from captioner.cli import main
from captioner.data.feature_cache import FeatureCache
from captioner.data.images import build_transform
from captioner.encoders import EncoderOutput
from captioner.encoders.precision import TOLERANCE, choose_extraction_mode, relative_errors

from conftest import TINY

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

EXAMPLES = Path(__file__).parent.parent / "examples"


def test_extraction_in_the_measured_mode_matches_fp32_on_the_cpu(tmp_path):
    """The mode ``choose_extraction_mode`` picks on the GPU (probe: the tiny set's photos), used
    to build the cache there, against the fp32 cache built on the CPU, image by image."""
    encoder = create_encoder("efficientnet_lite0").eval()
    paths = sorted(str(p) for p in (TINY / "images").glob("*.jpg"))
    transform = build_transform(encoder.default_preprocess)
    probe = torch.stack([transform(path) for path in paths[:16]])
    choice = choose_extraction_mode(encoder, "cuda", probe, batch_size=64)
    print(json.dumps(choice.to_dict(), indent=1))  # the per-mode errors and timings, in the log
    assert choice.measurements[choice.mode.name]["relative_error"] <= TOLERANCE
    on_cpu = FeatureCache(tmp_path / "cpu", encoder, encoder.default_preprocess, paths, with_grid=True).build(
        "cpu", progress=False, runtime="torch")
    on_gpu = FeatureCache(tmp_path / "gpu", encoder, encoder.default_preprocess, paths, with_grid=True).build(
        "cuda", progress=False, runtime="torch", precision=choice)
    assert on_gpu.folder.name == on_cpu.folder.name  # one cache, whichever device filled it
    assert json.loads(on_gpu.meta_path.read_text())["precision"]["mode"] == choice.mode.name
    rows = np.arange(len(paths))
    got, want = on_gpu.rows(rows), on_cpu.rows(rows)
    assert all(torch.isfinite(t).all() for t in got)
    errors = relative_errors(EncoderOutput(*got), EncoderOutput(*want))
    assert float(errors.max()) <= TOLERANCE + 1e-3  # + the fp16 storage of both caches


def test_bf16_training_on_cuda_learns_like_fp32_on_the_cpu(tiny_one_caption, tmp_path):
    """bf16 autocast training follows fp32 CPU training epoch by epoch (show-tell has no dropout,
    so only the arithmetic differs); both halve the loss in 7 epochs (in 6, neither: 4.50 → 2.36)."""
    losses = {}
    for device in ("cpu", "cuda"):
        out = tmp_path / device
        assert main(["train", "--data", str(tiny_one_caption), "--out", str(out), "--encoder", "efficientnet_lite0",
                     "--epochs", "7", "--batch-size", "8", "--min-word-count", "1", "--no-progress", "--device",
                     device, "--set", "log_every=0"]) == 0
        records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        losses[device] = [r["train_loss"] for r in records if "train_loss" in r]
    assert losses["cuda"][-1] < 0.5 * losses["cuda"][0]  # it learns
    np.testing.assert_allclose(losses["cuda"], losses["cpu"], rtol=0.05)


def test_bundled_model_captions_the_same_on_cuda():
    images = sorted(p for p in EXAMPLES.iterdir() if p.suffix in (".png", ".jpg"))
    on_cpu = Captioner.from_pretrained(device="cpu").caption(images, beam_size=3)
    on_gpu = Captioner.from_pretrained(device="cuda").caption(images, beam_size=3)
    assert [c.text for c in on_gpu] == [c.text for c in on_cpu]
    np.testing.assert_allclose([c.score for c in on_gpu], [c.score for c in on_cpu], atol=1e-2)


def test_jpegs_decoded_by_nvjpeg_give_the_cpu_paths_features():
    """nvJPEG + resize on the GPU against Pillow + resize on the CPU, on real photos at COCO's
    sizes (one EXIF-rotated), both encoded in fp32 by EfficientNet-Lite0 with its ImageNet
    weights: the decoders' difference in features (0 with libjpeg-turbo on the CPU)."""
    import io

    from PIL import Image

    from captioner.data.device_images import DeviceJpegDecoder, JpegReader
    from captioner.data.images import build_transform

    encoder = create_encoder("efficientnet_lite0").cuda().eval()
    preprocess = encoder.default_preprocess
    photos = sorted((Path(__file__).parent.parent / "benchmarks" / "timing" / "photos").glob("*.jpg"))
    data = []
    for i, path in enumerate(photos):
        image = Image.open(path).convert("RGB")
        for size in ((640, 480), (480, 640), (640, 427), (500, 375)):
            buffer = io.BytesIO()
            exif = Image.Exif()
            exif[0x0112] = 6 if size == (480, 640) else 1
            image.resize(size).save(buffer, "JPEG", quality=85, exif=exif.tobytes())
            data.append((buffer.getvalue(), f"{path.name}@{size}"))
    reader, transform = JpegReader(preprocess), build_transform(preprocess)
    jpegs = [reader(bytes_, name) for bytes_, name in data]
    assert all(jpegs)
    on_gpu, order = DeviceJpegDecoder(preprocess, "cuda")(jpegs)
    on_cpu = torch.stack([transform(data[i][0], name=data[i][1]) for i in order]).cuda()
    with torch.inference_mode():
        got, want = encoder(on_gpu).pooled, encoder(on_cpu).pooled
    errors = ((got - want).norm(dim=1) / want.norm(dim=1)).cpu()
    print(f"nvJPEG vs CPU path, {len(data)} photos: pixels mean |diff| {(on_gpu - on_cpu).abs().mean():.4f} "
          f"(normalised units), pooled relative error median {errors.median():.4f} max {errors.max():.4f}")
    # Measured with libjpeg on the CPU: re-saving such a JPEG at quality 95 moves these features
    # 2–5 %, ±2 grey levels of noise 2–18 %; a wrong orientation or channel order 43–109 %.
    assert errors.median() < 0.1 and errors.max() < 0.25


def test_the_gpu_extraction_loop_never_waits_for_the_gpu(monkeypatch):
    """The hot loop's body — pinned pixels to the device, JPEGs preprocessed there, the encoder,
    outputs into the device block, the block's copy back — runs under
    ``set_sync_debug_mode("error")``: no host sync. (nvJPEG's own call is torchvision's: its
    images are decoded beforehand here.)"""
    from PIL import Image

    from captioner.data import device_images
    from captioner.data.device_images import DeviceJpegDecoder, JpegReader
    from captioner.data.extraction import OutputBlocks, collate_rows, mode_encoder
    from captioner.encoders.precision import ExtractionMode
    from captioner.data.images import build_transform

    cuda = torch.device("cuda")
    encoder = create_encoder("efficientnet_lite0", pretrained=False).cuda().eval()
    preprocess = encoder.default_preprocess
    transform, reader = build_transform(preprocess), JpegReader(preprocess)
    paths = sorted(str(p) for p in (TINY / "images").glob("*.jpg"))[:12]
    items = [(reader(Path(p).read_bytes(), p) if Image.open(p).mode == "RGB" else transform(p), row)
             for row, p in enumerate(paths)]  # grayscale JPEGs decoded on the host, RGB ones on the GPU
    batches = [collate_rows(items[i : i + 4]).pin_memory() for i in range(0, len(items), 4)]
    assert all(batch.pixels is not None and batch.jpegs for batch in batches)
    decoded = {jpeg.data: device_images._decode_jpegs([device_images._bytes_tensor(jpeg.data)], cuda)[0]
               for batch in batches for jpeg in batch.jpegs}
    monkeypatch.setattr(device_images, "_decode_jpegs",
                        lambda data, device: [decoded[bytes(tensor.numpy())] for tensor in data])
    decoder = DeviceJpegDecoder(preprocess, cuda)
    mode = ExtractionMode("bf16", channels_last=True)  # autocast and NHWC inputs: what the chooser may pick
    encode = mode_encoder(mode.prepare(encoder), mode, cuda)
    out = encode(batches[0].to_device(cuda, decoder)[0])  # warm-up: cuDNN, allocator
    blocks = OutputBlocks({"pooled": tuple(out.pooled.shape[1:])}, 8, cuda)
    handed = []
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        with torch.inference_mode():
            for batch in batches:
                pixels, rows = batch.to_device(cuda, decoder)
                handed += blocks.add(rows, {"pooled": encode(pixels).pooled})
            handed += blocks.flush()
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert [block.count for block in handed] == [8, 4]
    for block in handed:
        block.ready.synchronize()
    rows = np.concatenate([block.rows for block in handed])
    assert sorted(rows) == list(range(len(paths)))
    got = torch.cat([block.arrays["pooled"][: block.count] for block in handed]).float()
    with torch.inference_mode():
        want = encode(torch.stack([transform(paths[i]) for i in rows]).cuda()).pooled.float().cpu()
    torch.testing.assert_close(got, want, atol=2e-2, rtol=2e-2)  # fp16 blocks of bf16 outputs
