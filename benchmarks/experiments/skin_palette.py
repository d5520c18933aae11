"""How artists paint skin tones, and which cue to a tone carries to a new artist.

For every drawing whose English name has one skin tone, the median lightness (Rec. 601 luma),
hue and saturation of its skin-coloured pixels (``captioner.data.augment.skin_mask``), by artist
and tone. For the held-out artists (the ``test-artist`` split) it also says how often the tone
nearest by lightness alone, and by hue and saturation alone, is the drawing's own — the tones'
centres being the training artists' medians — which of the cues a model could learn from the
training artists still names the tone in a new artist's palette:

    python -m benchmarks.experiments.skin_palette --data data/emoji/dataset-fluent.json
"""
from __future__ import annotations

import argparse
import json
import re
from collections import defaultdict

import numpy as np
from PIL import Image

from benchmarks.experiments.emoji_ablation import TONES, english
from captioner.data.augment import LUMA, skin_mask
from captioner.data.emoji import ARTIST_SPLIT
from captioner.data.sources import read_dataset

TONE = re.compile(r"\b(medium-light|medium-dark|light|medium|dark) skin tone\b")
MIN_PIXELS = 10  # fewer skin-coloured pixels than this (a monochrome artist): no palette to read


def one_tone(name: str) -> str | None:
    """The skin tone of a name that has exactly one (a couple in two tones has none)."""
    tones = set(TONE.findall(name))
    return tones.pop() if len(tones) == 1 else None


def palette(path) -> tuple[float, float, float] | None:
    """Median (luma 0–255, hue in degrees with reds below zero, saturation 0–1) of a drawing's
    skin-coloured pixels, or None when it has too few."""
    image = Image.open(path).convert("RGB")
    hsv = np.asarray(image.convert("HSV")).astype(np.float64) * np.array([360 / 255, 1 / 255, 1 / 255])
    mask = skin_mask(hsv)
    if mask.sum() < MIN_PIXELS:
        return None
    hue = hsv[mask][:, 0]
    hue = np.where(hue > 180, hue - 360, hue)
    luma = np.asarray(image).astype(np.float64)[mask] @ LUMA
    return float(np.median(luma)), float(np.median(hue)), float(np.median(hsv[mask][:, 1]))


def nearest_tone(point: np.ndarray, centres: dict[str, np.ndarray], scale: np.ndarray) -> str:
    return min(centres, key=lambda tone: float((((point - centres[tone]) / scale) ** 2).sum()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True,
                        help="an emoji dataset.json (a leave-artists-out copy for the check)")
    parser.add_argument("--output", help="write the table and the check as JSON here")
    args = parser.parse_args(argv)

    drawings = defaultdict(list)  # (artist, tone) → palettes
    held_out, skipped = set(), defaultdict(int)
    for example in read_dataset(args.data):
        tone = one_tone(english(example)[0])
        if tone is None:
            continue
        artist = example.metadata.get("artist", "?")
        if example.split == ARTIST_SPLIT:
            held_out.add(artist)
        found = palette(example.path)
        if found is None:
            skipped[artist] += 1
        else:
            drawings[artist, tone].append(found)

    artists = sorted({artist for artist, _ in drawings})
    table = {artist: {tone: {"drawings": len(drawings[artist, tone]),
                             **dict(zip(("luma", "hue", "saturation"),
                                        np.round(np.median(drawings[artist, tone], axis=0), 2).tolist()))}
                      for tone in TONES if drawings[artist, tone]} for artist in artists}
    print("median of the skin-coloured pixels, one-tone drawings: luma / hue° / saturation (drawings)")
    print("| artist | " + " | ".join(TONES) + " |\n|---|" + "---:|" * len(TONES))
    for artist in artists:
        cells = [f"{c['luma']:.0f} / {c['hue']:.0f} / {c['saturation']:.2f} ({c['drawings']})"
                 if (c := table[artist].get(tone)) else "" for tone in TONES]
        print(f"| {artist}{' (held out)' if artist in held_out else ''} | " + " | ".join(cells) + " |")
    if skipped:
        print("too few skin-coloured pixels:", ", ".join(f"{a} {n}" for a, n in sorted(skipped.items())))

    result = {"palettes": table, "too few skin pixels": dict(skipped)}
    training = [artist for artist in artists if artist not in held_out]
    if held_out and training:
        pooled = {tone: np.array([p for a in training for p in drawings[a, tone]]) for tone in TONES}
        centres = {tone: np.median(points, axis=0) for tone, points in pooled.items() if len(points)}
        scale = np.concatenate(list(pooled.values())).std(axis=0)
        cues = {"lightness": [0], "hue and saturation": [1, 2]}
        check = {}
        print("\nheld-out drawings whose nearest tone (the training artists' medians) is their own, by cue")
        print("| artist | tone | drawings | " + " | ".join(cues) + " |\n|---|---|---:|" + "---:|" * len(cues))
        for artist in sorted(held_out & set(artists)):
            for tone in TONES:
                points = drawings[artist, tone]
                if not points:
                    continue
                right = {cue: sum(nearest_tone(np.array(p)[dims], {t: c[dims] for t, c in centres.items()},
                                               scale[dims]) == tone for p in points) for cue, dims in cues.items()}
                check.setdefault(artist, {})[tone] = {"drawings": len(points), **right}
                print(f"| {artist} | {tone} | {len(points)} | " + " | ".join(str(n) for n in right.values()) + " |")
        result["nearest tone"] = check
    if args.output:
        with open(args.output, "w") as f:
            json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
