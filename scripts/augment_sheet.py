"""A contact sheet of augmented views: see what ``data.augment`` does before training on it.

Each row is one image: the clean drawing at the working size, then its views, each the view
training would cache for that seed (``captioner.data.augment.augment_image``):

    python scripts/augment_sheet.py examples/emoji-*.png --views 6 --out sheet.png
    python scripts/augment_sheet.py --data data/emoji/dataset.json --count 12 --views 4 \\
        --augment '{saturation: 0.5, flatten: 0.5, contour: 0.5}' --out sheet.png
"""
from __future__ import annotations

import argparse
import random
import sys

import yaml
from PIL import Image

from captioner.data.augment import AugmentConfig, augment_image
from captioner.data.images import load_image
from captioner.data.sources import read_dataset
from captioner.errors import InvalidInputError
from captioner.io import atomic_write


def sheet(paths: list[str], config: AugmentConfig, views: int, seed: int = 0) -> Image.Image:
    """Rows of [clean, view 1 … view K] at ``config.size`` pixels a cell; the view in row r,
    column v is ``augment_image(image, config, seed=seed + r * views + v - 1)``."""
    side = config.size
    out = Image.new("RGB", (side * (views + 1), side * len(paths)), "white")
    for r, path in enumerate(paths):
        image = load_image(path)
        out.paste(image.convert("RGB").resize((side, side), Image.Resampling.BICUBIC), (0, r * side))
        for v in range(1, views + 1):
            out.paste(augment_image(image, config, seed=seed + r * views + v - 1), (v * side, r * side))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("images", nargs="*", help="image files (or --data)")
    parser.add_argument("--data", help="a captions file: draw --count of its images at random")
    parser.add_argument("--count", type=int, default=8)
    parser.add_argument("--views", type=int, default=4)
    parser.add_argument("--augment", default="{}", help="data.augment's options, as YAML (default: the defaults)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True, help="the sheet (PNG)")
    args = parser.parse_args(argv)
    try:
        options = yaml.safe_load(args.augment) or {}
        if not isinstance(options, dict):
            raise InvalidInputError(f"--augment: expected a mapping of options, got {args.augment!r}")
        config = AugmentConfig.from_dict(options)
        paths = list(args.images)
        if args.data:
            refs = sorted({e.image_ref for e in read_dataset(args.data)})
            paths += random.Random(args.seed).sample(refs, min(args.count, len(refs)))
        if not paths or args.views < 1:
            raise InvalidInputError("name images (or --data) and at least one view")
        result = sheet(paths, config, args.views, args.seed)
    except (InvalidInputError, yaml.YAMLError, OSError, TypeError, ValueError) as e:
        print(f"augment_sheet: {e}", file=sys.stderr)
        return 2
    atomic_write(args.out, lambda tmp: result.save(tmp, format="PNG"))
    print(f"{args.out}: {len(paths)} images × {args.views} views", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
