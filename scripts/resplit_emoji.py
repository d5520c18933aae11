"""Write a copy of an emoji dataset.json with other splits, without rendering the images again.

What ``captioner data emoji --holdout-artist ... [--split-by image]`` would write for the same images
(the same ``captioner.data.emoji.split_images`` over the same English names, whatever other languages the
dataset captions in), beside the original so its image paths still resolve:

    python scripts/resplit_emoji.py data/emoji/dataset.json fluent --split-by image --test-fraction 0.03 \\
        --holdout-artist fluent-color --holdout-artist fluent-flat --holdout-artist fluent-high-contrast
    # → data/emoji/dataset-fluent.json
    python scripts/resplit_emoji.py data/emoji/dataset.json ship --split-by image --test-fraction 0
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

from captioner.data.emoji import split_images
from captioner.data.emoji.sources import partial_families
from captioner.data.emoji.splits import SPLIT_BY
from captioner.io import atomic_write_text


def english_caption(image: dict) -> str | None:
    """The caption the builder split on: the English sentence (untagged in an English-only build)."""
    return next((s["raw"] for s in image["sentences"] if s.get("language", "en") == "en"), None)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dataset", help="dataset.json written by `captioner data emoji`")
    parser.add_argument("name", help="the copy is dataset-NAME.json beside it")
    parser.add_argument("--holdout-artist", action="append", default=[], metavar="ARTIST")
    parser.add_argument("--split-by", choices=SPLIT_BY, default="emoji")
    parser.add_argument("--test-fraction", type=float, default=0.1)
    parser.add_argument("--val-fraction", type=float, default=0.05)
    args = parser.parse_args(argv)

    path = Path(args.dataset)
    data = json.loads(path.read_text(encoding="utf-8"))
    images = data["images"]
    artists = [image["artist"] for image in images]
    unknown = sorted(set(args.holdout_artist) - set(artists))
    if unknown:
        parser.error(f"--holdout-artist: no images by {', '.join(unknown)} in {path}")
    captions = [english_caption(image) for image in images]
    if None in captions:
        image = images[captions.index(None)]
        parser.error(f"{path}: image {image['imgid']} ({image['filepath']}/{image['filename']}) has no English "
                     "caption; splits are drawn from the English names (build with --languages including en)")
    for family, left in partial_families(args.holdout_artist, artists).items():
        print(f"warning: holding out part of {family}; {', '.join(left)} still train on the same design",
              file=sys.stderr)
    splits = split_images(captions, artists, holdout_artists=args.holdout_artist,
                          test_fraction=args.test_fraction, val_fraction=args.val_fraction, by=args.split_by)
    for image, split in zip(images, splits):
        image["split"] = split
    out = path.with_name(f"dataset-{args.name}.json")
    atomic_write_text(out, json.dumps(data, ensure_ascii=False, separators=(",", ":")) + "\n")
    print(out, dict(sorted(Counter(splits).items())))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
