"""Caption-preserving augmentation for art: new drawings of the same thing, not new things.

An emoji's name survives a change of size, position, a small tilt, a blur, JPEG artefacts,
a sticker outline and another background colour; it does not survive a mirror image
("left-facing fist", "arrow pointing right") or a hue shift (a skin tone *is* a colour), so
neither is done. The background is the near-white region connected to the image border
(a flood fill from the border), so white *inside* a drawing (eyes, "white circle") stays white.

Every augmented image is a pure function of (image, seed): a feature cache of augmented
views (``data.augment_views``) is deterministic, and an interrupted extraction resumes with
the same views.
"""
from __future__ import annotations

import io
from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image, ImageFilter

from ..errors import InvalidInputError

# A pixel this close to white (per channel, 0–255) and connected to the border is background.
BACKGROUND_TOLERANCE = 16


@dataclass(frozen=True)
class AugmentConfig:
    """Strengths of each change; probabilities are per image, ranges are sampled uniformly."""

    scale: tuple[float, float] = (0.6, 1.0)  # the drawing's side, as a share of the canvas
    rotate: float = 12.0  # degrees, either way
    background: float = 0.5  # probability of a random background colour instead of white
    outline: float = 0.25  # probability of a sticker outline (black, white or grey)
    outline_width: tuple[float, float] = (0.015, 0.04)  # its width, as a share of the canvas side
    blur: float = 0.3  # probability of a Gaussian blur
    blur_radius: tuple[float, float] = (0.3, 1.5)  # pixels at the working size
    jpeg: float = 0.3  # probability of a JPEG round trip
    jpeg_quality: tuple[int, int] = (25, 85)
    size: int = 160  # working canvas side (pixels); the encoder's preprocessing resizes afterwards

    @classmethod
    def from_dict(cls, options: dict) -> "AugmentConfig":
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(options) - known)
        if unknown:
            raise InvalidInputError(f"data.augment: unknown option(s) {', '.join(unknown)}; "
                                    f"valid: {', '.join(sorted(known))}")
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in options.items()}
        return cls(**values)

    def to_dict(self) -> dict:
        return asdict(self)


def background_mask(image: Image.Image, tolerance: int = BACKGROUND_TOLERANCE) -> np.ndarray:
    """(h, w) bool: near-white pixels connected (4-neighbours) to the border — a flood fill from
    the border, grown one pixel a round over the near-white pixels until it stops."""
    near_white = (np.asarray(image.convert("RGB")) >= 255 - tolerance).all(axis=2)
    mask = np.zeros_like(near_white)
    mask[0], mask[-1], mask[:, 0], mask[:, -1] = near_white[0], near_white[-1], near_white[:, 0], near_white[:, -1]
    while True:
        grown = mask.copy()
        grown[1:] |= mask[:-1]
        grown[:-1] |= mask[1:]
        grown[:, 1:] |= mask[:, :-1]
        grown[:, :-1] |= mask[:, 1:]
        grown &= near_white
        if np.array_equal(grown, mask):
            return mask
        mask = grown


def augment_image(image: Image.Image, config: AugmentConfig, seed) -> Image.Image:
    """One augmented RGB view of ``image`` (RGB, drawn on white), a function of ``seed``."""
    rng = np.random.default_rng(seed)
    side = config.size
    image = image.convert("RGB").resize((side, side), Image.Resampling.BICUBIC)
    alpha = np.where(background_mask(image), 0, 255).astype(np.uint8)
    drawing = image.convert("RGBA")
    drawing.putalpha(Image.fromarray(alpha, "L"))

    if rng.random() < config.outline:
        width = max(1, round(rng.uniform(*config.outline_width) * side))
        grown = Image.fromarray(alpha, "L").filter(ImageFilter.MaxFilter(2 * width + 1))
        shade = int(rng.choice([0, 128, 255]))
        sticker = Image.new("RGBA", (side, side), (shade, shade, shade, 0))
        sticker.putalpha(grown)
        drawing = Image.alpha_composite(sticker, drawing)

    scale = rng.uniform(*config.scale)
    small = max(8, round(side * scale))
    drawing = drawing.resize((small, small), Image.Resampling.LANCZOS)
    drawing = drawing.rotate(rng.uniform(-config.rotate, config.rotate), Image.Resampling.BICUBIC, expand=True)
    colour = tuple(int(c) for c in rng.integers(0, 256, 3)) if rng.random() < config.background else (255, 255, 255)
    canvas = Image.new("RGBA", (side, side), (*colour, 255))
    # A random place: anywhere the drawing fits (a rotated full-size drawing is centred, corners cut).
    room_x, room_y = side - drawing.width, side - drawing.height
    x = int(rng.integers(0, room_x + 1)) if room_x > 0 else room_x // 2
    y = int(rng.integers(0, room_y + 1)) if room_y > 0 else room_y // 2
    canvas.alpha_composite(drawing, (max(x, 0), max(y, 0)), (max(-x, 0), max(-y, 0)))
    out = canvas.convert("RGB")

    if rng.random() < config.blur:
        out = out.filter(ImageFilter.GaussianBlur(rng.uniform(*config.blur_radius)))
    if rng.random() < config.jpeg:
        buffer = io.BytesIO()
        out.save(buffer, "JPEG", quality=int(rng.integers(config.jpeg_quality[0], config.jpeg_quality[1] + 1)))
        out = Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")
    return out


__all__ = ["AugmentConfig", "augment_image", "background_mask"]
