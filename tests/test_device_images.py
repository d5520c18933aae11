"""JPEG decoding on the encoder's device (``captioner.data.device_images``), run here on the CPU:
torchvision decodes with libjpeg-turbo there, so the same code and its fallbacks are tested
without a GPU (``tests/test_cuda.py`` repeats the comparison with nvJPEG)."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from captioner import create_encoder
from captioner.data.device_images import DeviceJpegDecoder, JpegReader, JpegRows, orient
from captioner.data.images import ImageLimits, ImageReadError, ImageTooLargeError, PreprocessConfig, build_transform
from captioner.data.loaders import ImageRows

from conftest import TINY

PREPROCESS = PreprocessConfig(crop_size=112, resize_size=128)  # the 128-px fixtures are never draft-decoded
RGB_JPEGS = [p for p in sorted((TINY / "images").glob("*.jpg")) if Image.open(p).mode == "RGB"]


def photo(width: int = 96, height: int = 64) -> Image.Image:
    return Image.open(RGB_JPEGS[0]).convert("RGB").resize((width, height))


def save(image: Image.Image, path: Path, format: str = "JPEG", **options) -> str:
    image.save(path, format, **options)
    return str(path)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_orient_turns_as_exif_transpose_does(orientation):
    image = Image.fromarray(np.random.default_rng(orientation).integers(0, 256, (5, 7, 3), dtype=np.uint8))
    image.getexif()[0x0112] = orientation
    want = np.asarray(ImageOps.exif_transpose(image)).transpose(2, 0, 1)
    got = orient(torch.from_numpy(np.array(image)).permute(2, 0, 1), orientation)
    np.testing.assert_array_equal(got.numpy(), want)


@pytest.mark.parametrize("preprocess", [PREPROCESS, PreprocessConfig(crop_size=96, resize="squash")],
                         ids=["shorter", "squash"])
def test_device_path_gives_the_cpu_paths_pixels_without_draft_decoding(tmp_path, preprocess):
    """Where Pillow decodes at full scale, torchvision's decoder gives exactly its pixels, and the
    resize, crop and normalisation are the CPU path's own: equal tensors, rotated JPEGs included."""
    exif = Image.Exif()
    exif[0x0112] = 6
    rotated = save(photo(), tmp_path / "rotated.jpg", exif=exif.tobytes())
    paths = [str(p) for p in RGB_JPEGS] + [rotated]
    reader = JpegReader(preprocess)
    jpegs = [reader(Path(p).read_bytes(), p) for p in paths]
    assert all(jpegs) and jpegs[-1].orientation == 6
    got, order = DeviceJpegDecoder(preprocess, "cpu")(jpegs)
    assert sorted(order) == list(range(len(paths)))
    transform = build_transform(preprocess)
    want = torch.stack([transform(paths[i]) for i in order])
    assert torch.equal(got, want)


def test_what_the_device_does_not_decode_goes_to_the_cpu_path(tmp_path):
    """PNG, grayscale, CMYK, progressive, cut-off JPEGs, JPEGs Pillow draft-decodes (sides twice
    what the resize needs) or resizes (``pillow_resize``), and files over ``max_file_bytes`` are
    decoded on the host, as before."""
    image = photo()
    paths = {
        "png": save(image, tmp_path / "a.png", "PNG"),
        "gray": save(image.convert("L"), tmp_path / "gray.jpg"),
        "cmyk": save(image.convert("CMYK"), tmp_path / "cmyk.jpg"),
        "progressive": save(image, tmp_path / "progressive.jpg", progressive=True),
        "draft": save(photo(256, 256), tmp_path / "large.jpg"),  # 2 × resize 128: Pillow decodes it at 1/2
        "baseline": save(photo(255, 400), tmp_path / "baseline.jpg"),  # 255 // 128 = 1: full scale
    }
    reader = JpegReader(PREPROCESS)
    assert {name for name, path in paths.items() if reader(Path(path).read_bytes(), path)} == {"baseline"}
    rows, cpu_rows = JpegRows(list(paths.values()), PREPROCESS), ImageRows(list(paths.values()), PREPROCESS)
    for i in range(len(paths) - 1):
        pixels, index = rows[i]
        assert index == i and torch.equal(pixels, cpu_rows[i][0])
    data = Path(paths["baseline"]).read_bytes()
    pillow_resize = PreprocessConfig(crop_size=112, resize_size=128, pillow_resize=True)  # Pillow's resize: host only
    assert JpegReader(pillow_resize)(data, paths["baseline"]) is None
    over_max_file_bytes = JpegRows([paths["baseline"]], PREPROCESS, ImageLimits(max_file_bytes=len(data) - 1))[0][0]
    assert torch.equal(over_max_file_bytes, cpu_rows[len(paths) - 1][0])  # not held whole: load_image streams it
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(data[: len(data) // 2])
    assert reader(cut.read_bytes(), str(cut)) is None
    with pytest.raises(ImageReadError) as error:
        rows.paths.append(str(cut))
        rows[len(rows) - 1]
    assert str(error.value).startswith(f"{cut}: corrupt or truncated image")


def test_an_over_limit_header_is_refused_before_decoding_with_the_cpu_paths_error(tmp_path):
    path = save(photo(96, 64), tmp_path / "wide.jpg")
    limits = ImageLimits(max_pixels=96 * 64 - 1)
    with pytest.raises(ImageTooLargeError) as device_error:
        JpegReader(PREPROCESS, limits)(Path(path).read_bytes(), path)
    with pytest.raises(ImageTooLargeError) as cpu_error:
        build_transform(PREPROCESS, limits=limits)(path)
    assert str(device_error.value) == str(cpu_error.value)
    assert "\n" not in str(device_error.value)


def test_a_jpeg_the_device_cannot_decode_falls_back_alone(tmp_path):
    """Corrupt scan data behind a readable header: the batch decode fails, the good JPEGs of the
    batch are decoded one by one, and the bad one goes to Pillow, which names it."""
    good = [save(photo(96 + 8 * i, 64), tmp_path / f"good{i}.jpg") for i in range(2)]
    broken = bytearray(Path(good[0]).read_bytes())
    for i in range(600, len(broken) - 50, 97):
        broken[i] = 0xFF
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(bytes(broken))
    reader = JpegReader(PREPROCESS)
    jpegs = [reader(Path(p).read_bytes(), str(p)) for p in (good[0], bad, good[1])]
    assert all(jpegs)  # the header is fine: only decoding finds out
    decoder = DeviceJpegDecoder(PREPROCESS, "cpu")
    with pytest.raises(ImageReadError) as error:
        decoder(jpegs)
    assert str(error.value).startswith(f"{bad}: corrupt or truncated image")
    transform = build_transform(PREPROCESS)
    pixels, order = decoder([jpegs[0], jpegs[2]])
    assert torch.equal(pixels, torch.stack([transform(good[i]) for i in order]))


def test_feature_cache_with_jpegs_decoded_by_torchvision(tmp_path):
    """The whole extraction with ``jpeg_on_device`` (grayscale fixtures decoded on the host):
    the same features as the CPU path, and meta.json says how the JPEGs were decoded."""
    import json

    from captioner.data.feature_cache import FeatureCache

    torch.manual_seed(0)
    encoder = create_encoder("efficientnet_lite0", pretrained=False)
    paths = sorted(str(p) for p in (TINY / "images").glob("*.jpg"))[:8]
    preprocess = PreprocessConfig(crop_size=64, resize_size=128)  # 128-px fixtures: no draft
    on_host = FeatureCache(tmp_path / "host", encoder, preprocess, paths, with_grid=True).build(
        batch_size=3, progress=False, runtime="torch")
    by_torchvision = FeatureCache(tmp_path / "tv", encoder, preprocess, paths, with_grid=True).build(
        batch_size=3, progress=False, runtime="torch", jpeg_on_device=True)
    rows = np.arange(len(paths))
    for got, want in zip(by_torchvision.rows(rows), on_host.rows(rows)):
        torch.testing.assert_close(got, want, atol=2e-3, rtol=1e-2)  # the batch order differs: float rounding
    assert json.loads(by_torchvision.meta_path.read_text())["jpeg_decoding"]["jpegs_on_device"]
    assert not json.loads(on_host.meta_path.read_text())["jpeg_decoding"]["jpegs_on_device"]


def test_the_decoders_are_compared_on_the_caches_own_jpegs(monkeypatch):
    """``decoder_difference``: 0 where the device decodes as the host does (libjpeg both ways), over
    the bound for a device decoder ±3 grey levels off; on the CPU the plan keeps decoding in the
    loader workers without measuring."""
    from captioner.data import device_images
    from captioner.data.device_images import decoder_difference, plan_jpeg_decoding
    from captioner.encoders.precision import TOLERANCE

    torch.manual_seed(0)
    encoder = create_encoder("efficientnet_lite0", pretrained=False).eval()
    samples = [(p.read_bytes(), str(p)) for p in sorted((TINY / "images").glob("*.jpg"))[:8]]  # RGB and gray
    assert decoder_difference(encoder, "cpu", samples, PREPROCESS) == 0.0
    exact = device_images._decode_jpegs
    noise = torch.Generator().manual_seed(0)
    monkeypatch.setattr(device_images, "_decode_jpegs", lambda data, device: [
        (image.int() + torch.randint(-3, 4, image.shape, generator=noise)).clamp(0, 255).to(torch.uint8)
        for image in exact(data, device)])
    assert decoder_difference(encoder, "cpu", samples, PREPROCESS) > TOLERANCE
    assert decoder_difference(encoder, "cpu", samples[1:2], PREPROCESS) is None  # brick.jpg: grayscale
    choice = plan_jpeg_decoding(encoder, "cpu", 10_000, lambda count: samples[:count], PREPROCESS)
    assert not choice.on_device and "CPU" in choice.reason
