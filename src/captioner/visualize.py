"""Attention pictures: where an attention decoder looked while it wrote each word."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .data.images import ImageInput, PreprocessConfig, build_transform
from .errors import InvalidInputError
from .io import atomic_write

PANEL_INCHES = 2.2
MAX_COLUMNS = 5


def model_view(image: ImageInput | torch.Tensor, preprocess: PreprocessConfig) -> np.ndarray:
    """The image as the encoder saw it, un-normalised: (height, width, 3) floats in [0, 1].

    ``image`` is a path or PIL image (resized and cropped per ``preprocess``) or an already
    preprocessed pixel tensor (3, height, width), shown as it is.
    """
    if isinstance(image, torch.Tensor):
        pixels = image.detach().float().cpu()
    else:
        pixels = build_transform(preprocess)(image)  # (3, crop, crop), normalised
    mean = torch.tensor(preprocess.mean)[:, None, None]
    std = torch.tensor(preprocess.std)[:, None, None]
    return (pixels * std + mean).clamp(0, 1).permute(1, 2, 0).numpy()


def smooth_heatmaps(attention: torch.Tensor, grid_shape: tuple[int, int], size: int | tuple[int, int]) -> np.ndarray:
    """(words, regions) weights on a (h, w) grid → (words, height, width) maps, each scaled to [0, 1].

    ``size`` is the picture's (height, width) (an int: square). Upsampled bilinearly and
    Gaussian-blurred (half a grid cell) so the cell edges do not show; the blur runs at 8
    pixels per cell, where it is cheap, before the final upsampling.
    """
    from torchvision.transforms.functional import gaussian_blur

    h, w = grid_shape
    height, width = (size, size) if isinstance(size, int) else size
    if attention.shape[-1] != h * w:
        raise InvalidInputError(f"attention has {attention.shape[-1]} regions but the grid is {h}x{w}")
    maps = attention.detach().float().cpu().reshape(-1, 1, h, w)  # (words, 1, h, w)
    cell = 8
    maps = F.interpolate(maps, size=(h * cell, w * cell), mode="bilinear", align_corners=False)
    sigma = cell / 2
    kernel = min(2 * int(2 * sigma) + 1, 2 * min(h, w) * cell - 1)  # reflect padding must stay inside
    maps = gaussian_blur(maps, [kernel, kernel], [sigma, sigma])
    maps = F.interpolate(maps, size=(height, width), mode="bilinear", align_corners=False)[:, 0]  # (words, H, W)
    low = maps.amin(dim=(1, 2), keepdim=True)
    high = maps.amax(dim=(1, 2), keepdim=True)
    return ((maps - low) / (high - low).clamp_min(1e-12)).numpy()


def _overlay(view: np.ndarray, heatmap: np.ndarray, colormap, alpha: float = 0.5) -> np.ndarray:
    return (1 - alpha) * view + alpha * colormap(heatmap)[..., :3]  # (height, width, 3)


def save_attention_figure(
    image_path: ImageInput, caption, out_dir: str | Path, preprocess: PreprocessConfig, name: str | None = None
) -> Path:
    """Write ``out_dir/<name or image name>.png``: the image as the model saw it, then one panel per
    generated word with the smoothed attention map over it and the word written on it.

    ``image_path`` is an image (path or PIL) or the preprocessed pixels (3, H, W) the caption
    was made from. ``caption`` is a :class:`captioner.model.Caption` from an attention decoder:
    its ``attention`` is words × regions over its ``grid_shape`` (h, w). Returns the PNG's path.
    """
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if caption.attention is None:
        raise InvalidInputError("this caption carries no attention weights (the decoder has no attention)")
    if caption.grid_shape is None:
        raise InvalidInputError("this caption has attention weights but no grid_shape (h, w) to lay them out")
    view = model_view(image_path, preprocess)  # (height, width, 3)
    height, width = view.shape[:2]
    words = list(caption.words)
    heatmaps = smooth_heatmaps(caption.attention[: len(words)], tuple(caption.grid_shape), (height, width))
    colormap = matplotlib.colormaps["jet"]
    panels = [view] + [_overlay(view, heatmap, colormap) for heatmap in heatmaps]
    labels = ["input"] + words

    # One mosaic image on one axes: a subplot per word costs ten times more to draw.
    columns = min(MAX_COLUMNS, len(panels))
    rows = math.ceil(len(panels) / columns)
    gap = max(2, min(height, width) // 40)
    mosaic = np.ones((rows * height + (rows - 1) * gap, columns * width + (columns - 1) * gap, 3))
    corners = []
    for index, panel in enumerate(panels):
        top, left = (index // columns) * (height + gap), (index % columns) * (width + gap)
        mosaic[top : top + height, left : left + width] = panel
        corners.append((left, top))

    title_inches = 0.4
    image_inches = PANEL_INCHES * rows * height / width
    figure = Figure(figsize=(PANEL_INCHES * columns, image_inches + title_inches))
    FigureCanvasAgg(figure)
    figure.text(0.5, 1 - 0.5 * title_inches / (image_inches + title_inches), caption.text or "(empty caption)",
                ha="center", va="center", fontsize=11)
    axes = figure.add_axes((0, 0, 1, image_inches / (image_inches + title_inches)))
    axes.set_axis_off()
    axes.imshow(mosaic)
    for (left, top), label in zip(corners, labels):
        axes.text(left + gap, top + gap, label, ha="left", va="top", fontsize=11,
                  bbox={"facecolor": "white", "alpha": 0.8, "edgecolor": "none", "pad": 1.5})

    if name is None:
        name = Path(image_path).stem if isinstance(image_path, (str, Path)) else "image"
    out = Path(out_dir) / f"{name}.png"
    atomic_write(out, lambda tmp: figure.savefig(tmp, format="png", dpi=80, pil_kwargs={"compress_level": 1}))
    return out
