"""Image loading and preprocessing: one function for training, evaluation and inference.

Image files are untrusted bytes. ``load_image`` sizes each one from its header before any
pixel is decoded (``ImageLimits``: width, height, pixel count, and the size the resize policy
would make), decodes a JPEG only at the scale the preprocessing needs, and turns every mode
into 8-bit RGB by its real range. Anything it cannot read raises one ``ImageReadError`` that
names the file.

Preprocessing is written once for both engines: the sizes (``PreprocessConfig.resized_size``),
``center_crop`` and ``normalize`` run on torch tensors and numpy arrays alike; only the
resampling kernel differs — torchvision's (``ImageTransform``, the torch engine) or its numpy
port (``preprocess_array``, the torch-free engine of exported models), the same bits either
way. torch and torchvision are imported inside the torch engine only.
"""
from __future__ import annotations

import io
import struct
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Optional, Union

import numpy as np
from array_api_compat import array_namespace, device as array_device
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from ..errors import CaptionerError

if TYPE_CHECKING:
    import torch

ImageInput = Union[str, Path, Image.Image]
# What load_image and the transform also take: an upload's bytes or an open binary file.
ImageSource = Union[ImageInput, bytes, BinaryIO]

# PIL's own guard (checked inside Image.open) only warns between 1× and 2× this value and
# raises past 2×; captioner refuses at ImageLimits.max_pixels itself, from the header, so
# PIL's error stays as a backstop for everyone and its warning (printed just before our
# refusal names the file) is silenced.
Image.MAX_IMAGE_PIXELS = 178_956_970
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)

# What Pillow's decoders raise on malformed data (a hostile header can reach any of these).
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, IndexError, ZeroDivisionError)

# Interpolations the tensor resize supports (box and hamming exist only for PIL images).
INTERPOLATIONS = ("nearest", "nearest-exact", "bilinear", "bicubic", "lanczos")


class ImageReadError(CaptionerError, ValueError):
    """An image that cannot be read or is over the limits; the message names the file and the cause.

    Raised by ``load_image``, ``verify_image`` and the transform of ``build_transform`` for a
    missing file, a directory, a symlink loop, bytes that are no image (text, SVG, random,
    empty), a truncated or corrupt file, and an image over its ``ImageLimits``. A
    ``ValueError`` too, so callers written before ``CaptionerError`` still catch it.
    """


class ImageTooLargeError(ImageReadError):
    """An image over its ``ImageLimits``, refused from its header (a server answers 413)."""


class ImageConfigError(CaptionerError, ValueError):
    """A ``PreprocessConfig`` or ``ImageLimits`` value that cannot work (a crop of 0 pixels,
    an unknown interpolation); the message names the setting and what it accepts."""


@dataclass(frozen=True)
class ImageLimits:
    """The most an untrusted image may make us decode and allocate; checked from its header.

    ``max_side``: the most pixels along its width or its height. ``max_pixels``: the most
    pixels (width × height) — the decompression-bomb guard, refused above it, never decoded.
    ``max_resized_pixels``: the most pixels of the image the resize policy makes before the
    crop (``resize: shorter`` scales a 1×12000 strip to 256×3 M). ``max_file_bytes``: the most
    bytes of an image held in memory whole before it is decoded — a WebDataset shard's member,
    refused from its declared size (files on disk are streamed instead). The server passes its own
    (``--max-pixels``); the defaults suit a command run on one machine. Images over a limit
    raise ``ImageTooLargeError``. (PIL refuses past 2 × ``PIL.Image.MAX_IMAGE_PIXELS``,
    357,913,940 pixels, whatever ``max_pixels`` says: a larger limit needs that raised too.)
    """

    max_side: int = 32_768  # past any single camera frame; longer strips are no photo
    max_pixels: int = 178_956_970  # 2× PIL's default guard: a 12,000×9,000 photo (108 Mpx) passes
    max_resized_pixels: int = 16_777_216  # 4096²: 50 MB of uint8; a 1:256 strip at resize 256
    # 128 MiB: above any photo under max_pixels (a 108 Mpx JPEG is ~40 MB, a noisy 40 Mpx PNG
    # ~120 MB); a sparse 2 GB member of a 61 KB shard cost 5 GB to caption before this.
    max_file_bytes: int = 128 * 2**20

    def __post_init__(self):
        for name in ("max_side", "max_pixels", "max_resized_pixels", "max_file_bytes"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ImageConfigError(f"ImageLimits.{name} must be a positive integer, got {value!r}")

    def check(self, name: str, size: tuple[int, int], preprocess: Optional["PreprocessConfig"] = None) -> None:
        """Raise ``ImageTooLargeError`` naming ``name`` when an image of ``size`` (w, h) is over a
        limit — with ``preprocess``, the size its resize would make counts too."""
        width, height = size
        if width < 1 or height < 1:
            raise ImageReadError(f"{name}: the image is empty ({width}×{height} pixels)")
        if max(width, height) > self.max_side:
            raise ImageTooLargeError(
                f"{name}: {width}×{height} pixels is over the limit of {self.max_side} pixels a side (max_side)"
            )
        if width * height > self.max_pixels:
            raise ImageTooLargeError(
                f"{name}: {width}×{height} = {width * height:,} pixels is over the limit of "
                f"{self.max_pixels:,} (max_pixels; a decompression bomb?)"
            )
        if preprocess is not None:
            resized_width, resized_height = preprocess.resized_size(size)
            if resized_width * resized_height > self.max_resized_pixels:
                raise ImageTooLargeError(
                    f"{name}: a {width}×{height} image would be resized to {resized_width}×{resized_height} "
                    f"= {resized_width * resized_height:,} pixels, over the limit of "
                    f"{self.max_resized_pixels:,} (max_resized_pixels); the sides are too unequal for "
                    f"resize: {preprocess.resize}"
                )


DEFAULT_IMAGE_LIMITS = ImageLimits()


@dataclass(frozen=True)
class PreprocessConfig:
    """How pixels become an encoder input; recorded in every model's config.json.

    ``resize="shorter"`` scales the shorter side to ``resize_size`` then center-crops
    ``crop_size`` (ImageNet practice); ``resize="squash"`` scales straight to
    ``crop_size``² (small square art such as emoji). ``interpolation`` is one of
    ``INTERPOLATIONS``.

    ``pillow_resize=True`` resizes (and crops) the fully decoded PIL image with Pillow's own
    ``Image.resize`` and scales by dividing by 255, as scripts built on Pillow and
    ``ToTensor`` do (the models ``captioner import`` brings in were trained that way): their
    pixels to the last bit, where torchvision's uint8 kernel differs by a level or two, the
    reduced JPEG decoding of large photos by more, and multiplying by 1/255 in the last bit.
    It decodes every pixel of a large photo, so it is slower there.
    """

    crop_size: int = 224
    resize_size: int = 256
    resize: str = "shorter"
    interpolation: str = "bilinear"
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    pillow_resize: bool = False

    def __post_init__(self):
        if self.resize not in ("shorter", "squash"):
            raise ImageConfigError(f"preprocess.resize must be 'shorter' or 'squash', got {self.resize!r}")
        for name in ("crop_size", "resize_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ImageConfigError(f"preprocess.{name} must be a positive whole number of pixels, got {value!r}")
        if self.interpolation not in INTERPOLATIONS:
            raise ImageConfigError(
                f"preprocess.interpolation must be one of {', '.join(INTERPOLATIONS)}; got {self.interpolation!r}"
            )
        if not isinstance(self.pillow_resize, bool):
            raise ImageConfigError(f"preprocess.pillow_resize must be true or false, got {self.pillow_resize!r}")
        object.__setattr__(self, "mean", tuple(float(x) for x in self.mean))
        object.__setattr__(self, "std", tuple(float(x) for x in self.std))

    def to_dict(self) -> dict:
        return asdict(self)

    def key(self) -> str:
        """A stable string naming this preprocessing (part of the feature-cache key)."""
        fields = self.to_dict()
        if not self.pillow_resize:  # left out when off: caches made before the option keep their keys
            del fields["pillow_resize"]
        return ",".join(f"{k}={v}" for k, v in sorted(fields.items()))

    def resized_size(self, size: tuple[int, int]) -> tuple[int, int]:
        """(w, h) of an image of ``size`` after the resize, before the crop (as torchvision computes it)."""
        if self.resize == "squash":
            return self.crop_size, self.crop_size
        width, height = size
        short, long = min(width, height), max(width, height)
        resized_long = int(self.resize_size * long / short)
        return (self.resize_size, resized_long) if width <= height else (resized_long, self.resize_size)

    def needed_side(self) -> int:
        """The fewest pixels the shorter decoded side needs so the resize never upsamples a
        downscaled decode: JPEG draft decoding and the box reduction stop at this."""
        return self.resize_size if self.resize == "shorter" else self.crop_size


# The smallest decode: JPEG at 1/8 scale (validation only needs to know the bytes decode).
_SMALLEST_DECODE = PreprocessConfig(crop_size=1, resize_size=1, resize="squash")


def load_image(
    image: ImageSource,
    preprocess: Optional[PreprocessConfig] = None,
    limits: ImageLimits = DEFAULT_IMAGE_LIMITS,
    *,
    name: Optional[str] = None,
) -> Image.Image:
    """Open an image (path, bytes, binary file or PIL image) as 8-bit RGB.

    The header is checked against ``limits`` before any pixel is decoded; with
    ``preprocess``, the size after its resize is checked too, a JPEG is decoded at the
    smallest scale (1/2 … 1/8) whose shorter side still covers ``preprocess.needed_side()``,
    and any image is then box-averaged by the largest whole factor that still covers it
    (neither with ``preprocess.pillow_resize``, which resizes from every decoded pixel).
    Only the first frame of an animated GIF or a multi-page TIFF is read. EXIF orientation
    is applied; 16-bit and float images are scaled by their range (``_to_8bit``);
    grayscale, CMYK, palette and alpha are converted, transparent pixels composited onto
    white so an RGBA emoji and its flattened copy give the same input. ``name`` names
    bytes or a file object in error messages. Raises ``ImageReadError``.
    """
    if isinstance(image, Image.Image):
        name = name or "image"
        limits.check(name, image.size, preprocess)
        return _shrink(_to_rgb(image, name), preprocess)
    if isinstance(image, (bytes, bytearray)):
        return _decode(io.BytesIO(image), name or "upload", preprocess, limits)
    if hasattr(image, "read"):
        return _decode(image, name or getattr(image, "name", "upload"), preprocess, limits)
    path = Path(image)
    try:
        file = open(path, "rb")
    except OSError as e:  # missing, a directory, a symlink loop, no permission
        raise ImageReadError(f"{path}: cannot be opened: {(e.strerror or str(e)).lower()}") from None
    with file:
        return _decode(file, str(path), preprocess, limits)


def verify_image(path: Union[str, Path], limits: ImageLimits = DEFAULT_IMAGE_LIMITS) -> None:
    """Raise ``ImageReadError`` unless ``path`` decodes within ``limits``.

    Decodes every byte (``Image.verify`` does not decode JPEG data, so it passes truncated
    JPEGs), a JPEG at 1/8 scale to stay fast.
    """
    load_image(path, _SMALLEST_DECODE, limits)


def _decode(file: BinaryIO, name: str, preprocess: Optional[PreprocessConfig], limits: ImageLimits) -> Image.Image:
    try:
        pil = Image.open(file)  # reads the header only
    except Image.DecompressionBombError as e:  # PIL's backstop, past 2 × Image.MAX_IMAGE_PIXELS
        raise ImageTooLargeError(
            f"{name}: over the limit of {limits.max_pixels:,} pixels (max_pixels; {e})"
        ) from None
    except UnidentifiedImageError:
        if file.seek(0, io.SEEK_END) == 0:
            raise ImageReadError(f"{name}: the file is empty") from None
        raise ImageReadError(
            f"{name}: not an image in a format Pillow reads (JPEG, PNG, GIF, WebP, TIFF, BMP, …); "
            "text, SVG and random bytes are not"
        ) from None
    except _DECODE_ERRORS as e:
        raise ImageReadError(f"{name}: not a readable image ({e})") from None
    # The checks use the size as stored; EXIF rotation only swaps the sides.
    limits.check(name, pil.size, preprocess)
    try:
        if pil.format == "PNG":
            pil = _with_checked_crcs(pil, file)
        if preprocess is not None and not preprocess.pillow_resize:
            # A square request: JPEG picks the largest scale (8, 4, 2) at which *both* sides
            # stay at least this long, so the shorter side never drops below what the resize needs.
            side = preprocess.needed_side()
            pil.draft(None, (side, side))
        pil.load()
        return _shrink(_to_rgb(pil, name), preprocess)
    except _DECODE_ERRORS as e:
        raise ImageReadError(f"{name}: corrupt or truncated image ({e})") from None


def _with_checked_crcs(pil: Image.Image, file: BinaryIO) -> Image.Image:
    """A PNG whose every chunk's CRC is checked, reopened for decoding. Pillow checks the
    checksums only in ``verify()`` — decoding skips the pixel data's — so a PNG with a broken
    CRC was captioned as if fine; ``verify()`` reads one chunk at a time, and leaves the
    image unusable: it is opened again from the start."""
    pil.verify()
    file.seek(0)
    return Image.open(file)


def _shrink(pil: Image.Image, preprocess: Optional[PreprocessConfig]) -> Image.Image:
    """Box-average an RGB image by the largest whole factor that keeps both sides at least
    ``preprocess.needed_side()`` — what JPEG's draft does, for every format. The resize then
    starts from a few times its output, not from a 6000-pixel photo (whose tensor copies cost
    ~3× its decoded size)."""
    if preprocess is None or preprocess.pillow_resize:  # Pillow resizes from every decoded pixel
        return pil
    factor = min(pil.width, pil.height) // preprocess.needed_side()
    return pil.reduce(factor) if factor >= 2 else pil


def _to_8bit(pil: Image.Image) -> Image.Image:
    """A 16-bit, 32-bit integer or float single-band image as 8-bit ``L``, by its real range.

    16-bit data (``I;16*``, and ``I`` whose values all lie in 0…65535, the form PIL gives
    16-bit PNG/PGM/TIFF) maps 0…65535 onto 0…255 (÷257, so 65535 is white): a dark 16-bit
    photo stays dark. Float images in [0, 1] — the usual convention for normalised data —
    map 0 → black and 1 → white. Any other float or 32-bit range has no standard white
    point (HDR radiance, depth, measurements), so the image's own finite min…max is
    stretched onto 0…255: otherwise clipping turns it all black or all white.
    """
    values = np.asarray(pil)  # (h, w); uint16, int32 or float32
    if values.dtype.kind == "u" or (values.dtype.kind == "i" and values.min() >= 0 and values.max() <= 65535):
        # One byte per pixel through a 64 K lookup table: no float copy of a large image.
        lookup = ((np.arange(65536, dtype=np.uint32) + 128) // 257).astype(np.uint8)
        return Image.fromarray(lookup[values], "L")
    values = values.astype(np.float32)
    finite = np.isfinite(values)
    low, high = (float(values[finite].min()), float(values[finite].max())) if finite.any() else (0.0, 0.0)
    if not (0.0 <= low and high <= 1.0):
        values = (values - low) / (high - low) if high > low else np.zeros_like(values)
    values = np.nan_to_num(values, nan=0.0, posinf=1.0, neginf=0.0)
    return Image.fromarray(np.rint(np.clip(values, 0.0, 1.0) * 255.0).astype(np.uint8), "L")


def _to_rgb(pil: Image.Image, name: str) -> Image.Image:
    """Any mode → RGB: a new image unless ``pil`` already is upright RGB (returned as is)."""
    if pil.mode in ("I", "F") or pil.mode.startswith("I;16"):
        pil = _to_8bit(pil)
    try:
        # Transposing only when the tag asks for it: exif_transpose copies even an upright image.
        if pil.getexif().get(ExifTags.Base.Orientation, 1) != 1:
            pil = ImageOps.exif_transpose(pil)
    except _DECODE_ERRORS as e:  # a malformed EXIF block
        raise ImageReadError(f"{name}: unreadable EXIF orientation ({e})") from None
    if pil.mode in ("RGBA", "LA", "PA", "La", "RGBa") or (pil.mode == "P" and "transparency" in pil.info):
        rgba = pil.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        pil = Image.alpha_composite(background, rgba)
    if pil.mode == "RGB":
        return pil
    try:
        return pil.convert("RGB")
    except ValueError as e:  # a mode PIL cannot turn into RGB (LAB, HSV, multi-band float)
        raise ImageReadError(f"{name}: {pil.mode} images cannot be converted to RGB ({e})") from None


def center_crop(pixels, size: int):
    """The middle ``size``×``size`` of (C, H, W) pixels — a torch tensor or a numpy array —
    zero-padded first where the image is smaller: torchvision's ``CenterCrop``, for both engines."""
    xp = array_namespace(pixels)
    channels, height, width = pixels.shape
    if size > height or size > width:
        padded = xp.zeros((channels, max(size, height), max(size, width)), dtype=pixels.dtype,
                          device=array_device(pixels))
        top, left = max(size - height, 0) // 2, max(size - width, 0) // 2
        padded[:, top : top + height, left : left + width] = pixels
        pixels, (_, height, width) = padded, padded.shape
    top, left = int(round((height - size) / 2.0)), int(round((width - size) / 2.0))
    return pixels[:, top : top + size, left : left + size]


def normalize(pixels, config: PreprocessConfig):
    """uint8 (C, H, W) pixels → float32 scaled to [0, 1] and standardised by ``config.mean``/``std``
    (torchvision's ``ToDtype(scale=True)`` — or ``ToTensor``'s division with ``pillow_resize`` —
    then ``Normalize``, in the same float32 operations, so both engines give the same bits)."""
    xp = array_namespace(pixels)
    where = array_device(pixels)
    mean = xp.asarray(np.asarray(config.mean, dtype=np.float32)[:, None, None], device=where)
    std = xp.asarray(np.asarray(config.std, dtype=np.float32)[:, None, None], device=where)
    if config.pillow_resize:  # ToTensor divides by 255 (× 1/255 differs in the last bit for 126 values)
        scaled = xp.astype(pixels, xp.float32) / xp.asarray(np.float32(255), device=where)
    else:
        scaled = xp.astype(pixels, xp.float32) * xp.asarray(np.float32(1.0 / 255), device=where)
    return (scaled - mean) / std


def preprocess_array(image: ImageSource, config: PreprocessConfig, limits: ImageLimits = DEFAULT_IMAGE_LIMITS,
                     *, name: Optional[str] = None) -> np.ndarray:
    """The torch-free engine: an image → normalised float32 (3, crop, crop) numpy array, the
    same bits as ``build_transform(config)(image)`` (the same ``load_image``, sizes, crop and
    normalisation; :func:`captioner.data.resize.resize` reproduces torchvision's resize kernel)."""
    from .resize import resize

    pil = load_image(image, config, limits, name=name)
    width, height = config.resized_size(pil.size)
    if config.pillow_resize:
        pixels = resize_with_pillow(pil, width, height, config)
    else:
        pixels = resize(np.asarray(pil), height, width, config.interpolation)  # (H, W, 3) uint8
    return normalize(center_crop(pixels.transpose(2, 0, 1), config.crop_size), config)


_PILLOW_FILTERS = {"nearest": Image.Resampling.NEAREST, "nearest-exact": Image.Resampling.NEAREST,
                   "bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC,
                   "lanczos": Image.Resampling.LANCZOS}


def resize_with_pillow(pil: Image.Image, width: int, height: int, config: PreprocessConfig) -> np.ndarray:
    """``pillow_resize``: Pillow's own ``Image.resize`` (as torchvision's ``Resize`` does to a PIL
    image) → (H, W, 3) uint8; the same for both engines."""
    return np.asarray(pil.resize((width, height), _PILLOW_FILTERS[config.interpolation]))


class ImageTransform:
    """Image (path, bytes, binary file or PIL image) → normalised float tensor (3, crop, crop):
    the torch engine of the preprocessing (torchvision's resize kernel; sizes, crop and
    normalisation shared with :func:`preprocess_array`).

    Given a file, it decodes through ``load_image`` with this preprocessing, so a JPEG is
    decoded only as large as the resize needs; given a decoded PIL image, it checks the
    limits and converts it. Either way an image over ``limits`` raises ``ImageReadError``
    before the resize allocates anything. Training augments images before this
    (:func:`captioner.data.augment.augment_image`: no mirror images, which change an emoji's
    name), so there is one transform for training and captioning.
    """

    def __init__(self, config: PreprocessConfig, limits: ImageLimits = DEFAULT_IMAGE_LIMITS):
        from torchvision.transforms import v2 as T

        self.config = config
        self.limits = limits
        self.interpolation = T.InterpolationMode(config.interpolation)

    def __call__(self, image: ImageSource, name: Optional[str] = None) -> torch.Tensor:
        import torch
        from torchvision.transforms.v2 import functional as F

        pil = load_image(image, self.config, self.limits, name=name)
        width, height = self.config.resized_size(pil.size)
        if self.config.pillow_resize:
            pixels = torch.from_numpy(resize_with_pillow(pil, width, height, self.config).transpose(2, 0, 1).copy())
        else:
            pixels = F.resize(F.pil_to_tensor(pil), [height, width], self.interpolation, antialias=True)  # (3, H, W) uint8
        return normalize(center_crop(pixels, self.config.crop_size), self.config)


def build_transform(config: PreprocessConfig, limits: ImageLimits = DEFAULT_IMAGE_LIMITS) -> ImageTransform:
    """The preprocessing of ``config`` as one callable: image (path or PIL) → (3, crop, crop) tensor."""
    return ImageTransform(config, limits=limits)


def preprocess(
    images: list[ImageSource], config: PreprocessConfig, limits: ImageLimits = DEFAULT_IMAGE_LIMITS
) -> torch.Tensor:
    """Load and preprocess a list of images into one batch (N, 3, crop, crop)."""
    import torch

    transform = build_transform(config, limits=limits)
    return torch.stack([transform(image) for image in images])
