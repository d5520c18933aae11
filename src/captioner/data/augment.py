"""Caption-preserving augmentation for art: new drawings of the same thing, not new things.

An emoji's name survives a change of size, position, a small tilt, a blur, JPEG artefacts,
a sticker outline and another background colour; it does not survive a mirror image
("left-facing fist", "arrow pointing right") or a hue or brightness shift of the whole drawing
(a "red heart" is a hue, a skin tone a lightness: "medium-dark" is one artist's "dark"), so
neither is done. What artists do vary that a name survives is the *style*, each change optional
(probability 0 by default): more or less saturated colour at the same lightness, flat fills
instead of gradients (the colours quantised to a few), dark contour lines where colours meet, and
the skin palette — artists paint one skin tone at one lightness in pinker or yellower, greyer or
richer browns (Fluent's medium-dark has Google's medium-dark's lightness in a pinker, greyer
brown), so the skin change turns the hue and saturation of skin-coloured pixels and keeps their
luma. The background is the near-white region connected to the image border (a flood fill from
the border), so white *inside* a drawing (eyes, "white circle") stays white.

Every augmented image is a pure function of (image, seed): a feature cache of augmented
views (``data.augment_views``) is deterministic, and an interrupted extraction resumes with
the same views.
"""
from __future__ import annotations

import io
from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter

from ..errors import InvalidInputError

# A pixel this close to white (per channel, 0–255) and connected to the border is background.
BACKGROUND_TOLERANCE = 16
# A colour step (summed over R, G, B, 0–765) this large across two pixels is an edge a contour traces.
CONTOUR_STEP = 96
# Pixels darker than this (R + G + B) are ink: a contour is not drawn beside lines already there.
INK_LEVEL = 240

STYLE_OPTIONS = ("saturation", "saturation_range", "flatten", "flatten_colours", "contour", "contour_grow")
SKIN_OPTIONS = ("skin", "skin_hue", "skin_saturation")
# Skin-coloured pixels: hue (degrees) from pink-red to light brown, short of the yellow of the
# toneless emoji (~43° and up: a yellow hand turned orange would read as a skin tone its name
# lacks), neither grey nor vivid (a red heart or a tangerine: saturation above SKIN_SATURATION[1]),
# not black.
SKIN_HUES = (-20.0, 38.0)
SKIN_SATURATION = (0.1, 0.75)
SKIN_MIN_VALUE = 0.15
# Rec. 601 luma: what the skin change keeps.
LUMA = np.array([0.299, 0.587, 0.114])


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
    # Style, drawn from a stream of its own: with these at 0 every view is the one it was before.
    saturation: float = 0.0  # probability of scaling the colours' saturation (lightness kept)
    saturation_range: tuple[float, float] = (0.5, 1.5)
    flatten: float = 0.0  # probability of flat fills: the drawing quantised to a few colours
    flatten_colours: tuple[int, int] = (6, 24)
    contour: float = 0.0  # probability of dark lines drawn where colours meet (outlined art)
    contour_grow: tuple[int, int] = (0, 1)  # the line's pixels either side of its middle, at the working size
    skin: float = 0.0  # probability of another skin palette: skin-coloured pixels' hue and saturation moved, luma kept
    skin_hue: tuple[float, float] = (-20.0, 8.0)  # degrees: pinker (as Fluent paints skin) to yellower
    skin_saturation: tuple[float, float] = (0.6, 1.2)  # the skin pixels' saturation scaled by this

    @classmethod
    def from_dict(cls, options: dict) -> "AugmentConfig":
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(options) - known)
        if unknown:
            raise InvalidInputError(f"data.augment: unknown option(s) {', '.join(unknown)}; "
                                    f"valid: {', '.join(sorted(known))}")
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in options.items()}
        return cls(**values)

    @property
    def restyles(self) -> bool:
        return bool(self.saturation or self.flatten or self.contour or self.skin)

    def to_dict(self) -> dict:
        """The options; without style, without its keys — the views are the ones made before the
        style options existed, and so is a cache's key over them (and without the skin change,
        without its keys: the views are the ones made before it existed)."""
        options = asdict(self)
        dropped = (SKIN_OPTIONS if not self.skin else ()) + (STYLE_OPTIONS if not self.restyles else ())
        for name in dropped:
            del options[name]
        return options


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


def skin_mask(hsv: np.ndarray) -> np.ndarray:
    """(h, w) bool over an HSV array (floats, hue in degrees, saturation and value 0–1): the
    pixels a skin tone could be painted in."""
    hue = np.where(hsv[..., 0] > 180, hsv[..., 0] - 360, hsv[..., 0])
    return ((hue >= SKIN_HUES[0]) & (hue <= SKIN_HUES[1]) & (hsv[..., 1] >= SKIN_SATURATION[0])
            & (hsv[..., 1] <= SKIN_SATURATION[1]) & (hsv[..., 2] >= SKIN_MIN_VALUE))


def repaint_skin(image: Image.Image, hue: float, saturation: float) -> Image.Image:
    """``image`` (RGB) with its skin-coloured pixels' hue turned by ``hue`` degrees and their
    saturation scaled by ``saturation``, each pixel's luma kept: the same tone in another palette."""
    pixels = np.asarray(image).astype(np.float64)
    hsv = np.asarray(image.convert("HSV")).astype(np.float64) * np.array([360 / 255, 1 / 255, 1 / 255])
    mask = skin_mask(hsv)
    if not mask.any():
        return image
    moved = hsv[mask]
    moved[:, 0] = (moved[:, 0] + hue) % 360
    moved[:, 1] = np.clip(moved[:, 1] * saturation, 0.0, 1.0)
    packed = np.round(moved * np.array([255 / 360, 255, 255])).clip(0, 255).astype(np.uint8)
    rgb = np.asarray(Image.fromarray(packed[None], "HSV").convert("RGB"))[0].astype(np.float64)
    target = pixels[mask] @ LUMA
    rgb = (rgb * (target / np.maximum(rgb @ LUMA, 1.0))[:, None]).clip(0, 255)
    for _ in range(3):  # what a channel lost at 255 goes to the others, in luma's proportions
        room = rgb < 255
        rgb = (rgb + room * ((target - rgb @ LUMA) / np.maximum(room @ LUMA, 1e-6))[:, None]).clip(0, 255)
    out = pixels.copy()
    out[mask] = rgb
    return Image.fromarray(np.round(out).astype(np.uint8), "RGB")


def restyle(image: Image.Image, config: AugmentConfig, rng: np.random.Generator) -> Image.Image:
    """The same drawing in another artist's manner (RGB in, RGB out): each of saturation, flat
    fills, contour lines and the skin palette with its probability. None moves a fill's lightness
    or, but for skin colours, its hue far — a skin tone stays that tone — and near-white stays
    near-white, so the background still reads as background."""
    if rng.random() < config.flatten:
        colours = int(rng.integers(config.flatten_colours[0], config.flatten_colours[1] + 1))
        image = image.quantize(colours, Image.Quantize.MEDIANCUT).convert("RGB")
    if rng.random() < config.saturation:
        image = ImageEnhance.Color(image).enhance(float(rng.uniform(*config.saturation_range)))
    if rng.random() < config.contour:
        # Where the colour steps between two colours that are not ink already — measured two
        # pixels apart, so an antialiased edge counts and a gradient does not (an outlined
        # drawing keeps its own lines, not thickened) — a line one pixel wide, grown by
        # `contour_grow` pixels each side.
        pixels = np.asarray(image).astype(np.int16)
        light = pixels.sum(axis=2) >= INK_LEVEL
        edge = np.zeros(pixels.shape[:2], bool)
        edge[1:-1] |= (np.abs(pixels[2:] - pixels[:-2]).sum(axis=2) > CONTOUR_STEP) & light[2:] & light[:-2]
        edge[:, 1:-1] |= ((np.abs(pixels[:, 2:] - pixels[:, :-2]).sum(axis=2) > CONTOUR_STEP)
                          & light[:, 2:] & light[:, :-2])
        lines = Image.fromarray(edge.astype(np.uint8) * 255, "L")
        grow = int(rng.integers(config.contour_grow[0], config.contour_grow[1] + 1))
        if grow:
            lines = lines.filter(ImageFilter.MaxFilter(2 * grow + 1))
        ink = tuple(int(c) for c in rng.integers(0, 64, 3))
        image = Image.composite(Image.new("RGB", image.size, ink), image, lines)
    # Drawn last, so that the changes above draw as they did before it existed.
    if rng.random() < config.skin:
        image = repaint_skin(image, float(rng.uniform(*config.skin_hue)),
                             float(rng.uniform(*config.skin_saturation)))
    return image


def augment_image(image: Image.Image, config: AugmentConfig, seed) -> Image.Image:
    """One augmented RGB view of ``image`` (RGB, drawn on white), a function of ``seed``."""
    rng = np.random.default_rng(seed)
    side = config.size
    image = image.convert("RGB").resize((side, side), Image.Resampling.BICUBIC)
    if config.restyles:
        image = restyle(image, config, np.random.default_rng(np.random.SeedSequence(seed).spawn(1)[0]))
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


__all__ = ["AugmentConfig", "augment_image", "background_mask", "repaint_skin", "restyle", "skin_mask"]
