"""Image loading and preprocessing: one function for training, evaluation and inference.

torch and torchvision are imported inside the transforms, so ``load_image`` and
``PreprocessConfig`` also serve the torch-free runtime (``captioner.runtime``).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Union

from PIL import Image, ImageOps, UnidentifiedImageError

ImageInput = Union[str, Path, Image.Image]

# Decompression-bomb guard: PIL warns at ~89 Mpx; we refuse past this many pixels.
Image.MAX_IMAGE_PIXELS = 178_956_970


class ImageReadError(ValueError):
    """An image file that cannot be read; the message names the file and the cause."""


@dataclass(frozen=True)
class PreprocessConfig:
    """How pixels become an encoder input; recorded in every model's config.json.

    ``resize="shorter"`` scales the shorter side to ``resize_size`` then center-crops
    ``crop_size`` (ImageNet practice); ``resize="squash"`` scales straight to
    ``crop_size``² (small square art such as emoji).
    """

    crop_size: int = 224
    resize_size: int = 256
    resize: str = "shorter"
    interpolation: str = "bilinear"
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)

    def __post_init__(self):
        if self.resize not in ("shorter", "squash"):
            raise ValueError(f"preprocess.resize must be 'shorter' or 'squash', got {self.resize!r}")
        object.__setattr__(self, "mean", tuple(float(x) for x in self.mean))
        object.__setattr__(self, "std", tuple(float(x) for x in self.std))

    def to_dict(self) -> dict:
        return asdict(self)

    def key(self) -> str:
        """A stable string naming this preprocessing (part of the feature-cache key)."""
        return ",".join(f"{k}={v}" for k, v in sorted(self.to_dict().items()))


def load_image(image: ImageInput) -> Image.Image:
    """Open an image as RGB: EXIF orientation applied; grayscale, CMYK, palette and alpha converted.

    Transparent pixels are composited onto white, so an RGBA emoji and its flattened
    copy give the same input.
    """
    if isinstance(image, Image.Image):
        pil = image
    else:
        path = Path(image)
        if not path.is_file():
            raise ImageReadError(f"{path}: no such file")
        try:
            pil = Image.open(path)
            pil.load()
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
            raise ImageReadError(f"{path}: not a readable image ({e})") from None
        except Image.DecompressionBombError as e:
            raise ImageReadError(f"{path}: too many pixels ({e})") from None
    pil = ImageOps.exif_transpose(pil)
    if pil.mode in ("RGBA", "LA", "PA") or (pil.mode == "P" and "transparency" in pil.info):
        rgba = pil.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        pil = Image.alpha_composite(background, rgba)
    return pil.convert("RGB")


def build_transform(config: PreprocessConfig, train: bool = False):
    """PIL RGB image → normalised float tensor (3, crop, crop).

    ``train=True`` adds the seed's augmentation (random crop + horizontal flip); it is only
    used when the encoder reads pixels during training (fine-tuning).
    """
    import torch
    from torchvision.transforms import v2 as T

    interpolation = T.InterpolationMode(config.interpolation)
    if config.resize == "squash":
        resize = [T.Resize((config.crop_size, config.crop_size), interpolation=interpolation, antialias=True)]
        crop = [T.RandomHorizontalFlip()] if train else []
    else:
        resize = [T.Resize(config.resize_size, interpolation=interpolation, antialias=True)]
        crop = [T.RandomCrop(config.crop_size), T.RandomHorizontalFlip()] if train else [T.CenterCrop(config.crop_size)]
    return T.Compose(
        [
            T.PILToTensor(),
            *resize,
            *crop,
            T.ToDtype(torch.float32, scale=True),
            T.Normalize(config.mean, config.std),
        ]
    )


def preprocess(images: list[ImageInput], config: PreprocessConfig) -> torch.Tensor:
    """Load and preprocess a list of images into one batch (N, 3, crop, crop)."""
    import torch

    transform = build_transform(config)
    return torch.stack([transform(load_image(image)) for image in images])
