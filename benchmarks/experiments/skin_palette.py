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
import hashlib
import json
from collections import defaultdict

import numpy as np
from PIL import Image

from benchmarks.experiments.emoji_ablation import TONES, english, tones_in
from captioner import Captioner
from captioner.data.augment import LUMA, repaint_skin, skin_mask
from captioner.data.emoji import ARTIST_SPLIT
from captioner.data.sources import read_dataset
from captioner.data.tokenizer import ptb_tokenize

MIN_PIXELS = 10  # fewer skin-coloured pixels than this (a monochrome artist): no palette to read


def one_tone(name: str) -> str | None:
    """The skin tone of a name that has exactly one (a couple in two tones has none)."""
    tones = set(tones_in(ptb_tokenize(name)))
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


def probe(model_dir: str, drawn: dict[str, list], palettes: dict[str, dict], per_tone: int, beam_size: int) -> dict:
    """Palette (the drawings' own, or a held-out artist's) → tone → how many of ``per_tone`` of the
    training artists' drawings of that tone the model names in that tone."""
    model = Captioner.from_pretrained(model_dir)
    result = defaultdict(dict)
    for tone in TONES:
        chosen = sorted(drawn[tone], key=lambda d: hashlib.sha256(f"{d[0].parent.name}/{d[0].name}".encode())
                        .hexdigest())[:per_tone]  # the same drawings wherever the data lies
        images = [Image.open(path).convert("RGB") for path, _ in chosen]
        versions = {"own palette": images}
        for artist, tones in palettes.items():
            if tone in tones:
                hue, saturation = tones[tone]["hue"], tones[tone]["saturation"]
                versions[artist] = [repaint_skin(image, hue - own[1], saturation / own[2])
                                    for image, (_, own) in zip(images, chosen)]
        for name, batch in versions.items():
            captions = model.caption(batch, beam_size=beam_size)
            result[name][tone] = {"drawings": len(batch), "right tone": sum(one_tone(c.text) == tone for c in captions)}
    return dict(result)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True,
                        help="an emoji dataset.json (a leave-artists-out copy for the check)")
    parser.add_argument("--model", help="a trained run to probe with the training drawings in the held-out palettes")
    parser.add_argument("--per-tone", type=int, default=60, help="training drawings probed per tone")
    parser.add_argument("--beam-size", type=int, default=3)
    parser.add_argument("--output", help="write the tables as JSON here")
    args = parser.parse_args(argv)

    drawings = defaultdict(list)  # (artist, tone) → palettes
    drawn = defaultdict(list)  # tone → (path, palette) of the training artists' train split
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
            if example.split == "train":
                drawn[tone].append((example.path, found))

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
        pooled = {tone: np.array(points) for tone in TONES
                  if (points := [p for a in training for p in drawings[a, tone]])}
        centres = {tone: np.median(points, axis=0) for tone, points in pooled.items()}
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
    if args.model and held_out:
        palettes = {artist: table[artist] for artist in sorted(held_out & set(artists))}
        found = probe(args.model, drawn, palettes, args.per_tone, args.beam_size)
        print(f"\n{args.model}: training drawings named in their own tone, as drawn and in each held-out palette")
        print("| palette | " + " | ".join(TONES) + " |\n|---|" + "---:|" * len(TONES))
        for name, tones in found.items():
            print(f"| {name} | " + " | ".join(f"{t['right tone']}/{t['drawings']}" if (t := tones.get(tone)) else ""
                                             for tone in TONES) + " |")
        result["probe"] = {"model": args.model, **found}
    if args.output:
        with open(args.output, "w") as f:
            json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
