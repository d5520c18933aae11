"""Score trained emoji models on held-out artists and held-out emoji, one table row per run.

The runs of an ablation share one dataset split (``captioner data emoji --holdout-artist ...``
or ``scripts/resplit_emoji.py``) and one training budget; this script captions the
``test-artist`` split (every image of the held-out artists) and the ``test`` split with each
run's best model, from a feature cache of those images (one extraction per encoder +
preprocessing, shared by every run that uses them), through the same pipeline as ``captioner
caption`` (beam search, then the model's datastore reranking when it has one), and scores the
English captions like ``captioner evaluate --by artist``: exact match, coco-caption BLEU-4 and
CIDEr-D, with the held-out artists' images also split into emoji seen in training (drawn by
other artists) and unseen. A model with a datastore is scored twice: the decoder alone
(``--no-retrieval``'s captions) and with retrieval. Where the model has a confidence, its
AUROC for exact vs wrong captions is reported too. The held-out artists' images are also scored by
the kind of emoji the issue's external evaluation found hardest (a person or gesture with a skin
tone, a flag, a keycap, the rest), with how many skin-tone captions name the right emoji in the
wrong tone, and, tone by tone, how often a rightly named one-person emoji gets its own tone (an
artist whose palette reads as another tone shows there); ``--predictions FILE`` keeps every
caption (JSON lines) for reading the errors.

``--add-to-datastore 0.5`` also measures what adding half of the held-out artists' drawings
(every other emoji, by a hash of its name) to the datastore — no retraining — does to their
other drawings, skin tones counted as above (whether an artist's own drawings place its tones).

    OMP_NUM_THREADS=2 python -m benchmarks.experiments.emoji_ablation \\
        --data data/emoji/dataset-fluent.json --beam-size 3 --output ablation.json \\
        runs/f-base runs/f-aug2 runs/f-ls ...
"""
from __future__ import annotations

import argparse
import copy
import hashlib
import json
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import score
from captioner import Captioner, DecodeOptions
from captioner.cache import cache_root
from captioner.captions import caption_features
from captioner.data.emoji import ARTIST_SPLIT
from captioner.data.feature_cache import FeatureCache
from captioner.data.sources import read_dataset
from captioner.data.tokenizer import ptb_tokenize
from captioner.datastore import example_captions
from captioner.decoding import host_array
from captioner.evaluate import iter_val_features

SPLITS = (ARTIST_SPLIT, "test")
LANGUAGE = "en"


def english(example) -> list[str]:
    return example.captions_in(LANGUAGE, LANGUAGE)


@torch.no_grad()
def features_of(model: Captioner, examples, cache_root_dir: Path, batch_size: int) -> list:
    """Batches of the examples' features, from a feature cache of their images — or, for a
    confidence that reads what a fine-tuned encoder's untuned stages see (which a feature cache
    does not keep), encoded from the images."""
    cache = None
    if model.confidence is None or model.confidence.reads == "pooled":
        cache = FeatureCache(cache_root_dir, model.encoder, model.preprocess, [e.image_ref for e in examples],
                             with_grid=model.decoder.needs_grid)
        cache.build(progress=False)
    return [f for _, f in iter_val_features(model, examples, list(range(len(examples))), cache, batch_size, "cpu")]


def caption_all(model: Captioner, features: list, options: DecodeOptions) -> tuple[list[str], list]:
    """Each image's caption and confidence (``None`` without one), as ``captioner caption`` makes them."""
    model.eval()
    captions = [c for f in features for c in caption_features(model, f, options)]
    return [c.text for c in captions], [c.confidence for c in captions]


def auroc(confidence: list, right: list[bool]) -> float | None:
    """P(a right caption's confidence > a wrong one's) + P(tie) / 2."""
    if any(c is None for c in confidence) or all(right) or not any(right):
        return None
    values, right = np.asarray(confidence, float), np.asarray(right)
    positive, negative = values[right][:, None], values[~right][None, :]
    return float((positive > negative).mean() + 0.5 * (positive == negative).mean())


def emoji_kind(name: str) -> str:
    """The kinds of CLDR name the external evaluation's errors fall into."""
    if "skin tone" in name.partition(": ")[2]:
        return "skin tone"
    return next((kind for kind in ("flag", "keycap") if name.startswith(kind + ":")), "other emoji")


TONES = ("light", "medium-light", "medium", "medium-dark", "dark")


def tones_in(words: list[str]) -> list[str]:
    """["kiss", "medium-light", "skin", "tone", "dark", "skin", "tone"] → ["medium-light", "dark"]:
    the skin tones a tokenized caption names."""
    return [w for i, w in enumerate(words) if w in TONES and words[i + 1:i + 3] == ["skin", "tone"]]


def right_tone_share(counts: dict) -> str:
    """One tone's count from :func:`wrong_tone` as "right tone/right emoji"."""
    return f"{counts['right tone']}/{counts['right emoji']}"


def without_tone(words: list[str]) -> list[str]:
    """["man", "golfing", "medium-dark", "skin", "tone"] → ["man", "golfing"]: a caption's words
    without its skin tones (as tokenized for exact match, so the CLDR name's colon is gone)."""
    kept, i = [], 0
    while i < len(words):
        if words[i] in TONES and words[i + 1:i + 3] == ["skin", "tone"]:
            i += 3
        else:
            kept.append(words[i])
            i += 1
    return kept


def wrong_tone(predicted: list[str], references: list[str]) -> dict:
    """Of the skin-tone references: how many captions name the right emoji, tone and all, and how
    many the right emoji with another tone (or none); and by tone, of the one-person references
    whose emoji is named right, how many in their own tone — where an artist's palette reads as
    another tone."""
    pairs = [(ptb_tokenize(p), ptb_tokenize(r)) for p, r in zip(predicted, references) if emoji_kind(r) == "skin tone"]
    right_emoji = [without_tone(p) == without_tone(r) for p, r in pairs]
    by_tone = {tone: {"right emoji": 0, "right tone": 0} for tone in TONES}
    for (p, r), named in zip(pairs, right_emoji):
        tones = tones_in(r)
        if named and len(tones) == 1:
            by_tone[tones[0]]["right emoji"] += 1
            by_tone[tones[0]]["right tone"] += p == r
    return {"images": len(pairs), "exact": sum(p == r for p, r in pairs),
            "right emoji, wrong tone": sum(p != r and named for (p, r), named in zip(pairs, right_emoji)),
            "by tone": by_tone}


def scored(split, chosen, predicted, confidence, train_captions) -> dict:
    rows = np.arange(len(chosen))
    references = [english(e)[0] for e in chosen]
    result = score(split, rows, predicted, references, [str(e.metadata.get("artist", "?")) for e in chosen])
    right = [ptb_tokenize(p) == ptb_tokenize(r) for p, r in zip(predicted, references)]
    result["all"]["confidence_auroc"] = auroc(confidence, right)
    if split == ARTIST_SPLIT:
        seen = ["seen emoji" if r in train_captions else "unseen emoji" for r in references]
        result |= {g: s for g, s in score(split, rows, predicted, references, seen).items()
                   if g not in ("all", "protocol")}
        kinds = [emoji_kind(r) for r in references]
        result["by kind"] = {g: s for g, s in score(split, rows, predicted, references, kinds).items()
                             if g not in ("all", "protocol")}
        result["skin tone"] = wrong_tone(predicted, references)
    return result


def add_to_datastore(model: Captioner, chosen, features: list, share: float, options: DecodeOptions) -> dict:
    """Half the held-out artists' emoji (by a hash of the name) added to a copy of the datastore;
    the other half scored before and after."""
    emoji = [english(e)[0] for e in chosen]
    added = np.array([int(hashlib.sha256(name.encode()).hexdigest(), 16) % 1000 < share * 1000 for name in emoji])
    pooled = np.concatenate([host_array(f.pooled) for f in features])
    split = {}
    for name, store in (("before", model.datastore), ("after", copy.deepcopy(model.datastore))):
        if name == "after":
            store.add(pooled[added], [example_captions(e, LANGUAGE) for e, a in zip(chosen, added) if a])
        model.datastore, saved = store, model.datastore
        try:
            predicted, _ = caption_all(model, features, options)
        finally:
            model.datastore = saved
        rest = [i for i in range(len(chosen)) if not added[i]]
        predicted, references = [predicted[i] for i in rest], [emoji[i] for i in rest]
        split[name] = score(ARTIST_SPLIT, np.arange(len(rest)), predicted, references, ["held out"] * len(rest))["all"]
        split[name]["skin tone"] = wrong_tone(predicted, references)
    return {"added_images": int(added.sum()), "scored_images": int((~added).sum()), **split}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", help="trained model directories (captioner train --out)")
    parser.add_argument("--data", required=True, help="the dataset.json the runs were trained on")
    parser.add_argument("--beam-size", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--cache-dir", default=None, help="feature cache root (default: captioner's cache)")
    parser.add_argument("--add-to-datastore", type=float, default=0.0, metavar="SHARE",
                        help="also add this share of the held-out artists' emoji to the datastore and score the rest")
    parser.add_argument("--output", default=None, help="write every score as JSON here")
    parser.add_argument("--predictions", default=None, metavar="FILE",
                        help="write every image's caption, reference and confidence here (JSON lines)")
    args = parser.parse_args(argv)
    predictions = open(args.predictions, "w", encoding="utf-8") if args.predictions else None

    examples = read_dataset(args.data)
    train_captions = {c for e in examples if e.split == "train" for c in english(e)}
    cache_dir = Path(args.cache_dir) if args.cache_dir else cache_root("features")
    results = []
    for run in args.runs:
        started = time.monotonic()
        model = Captioner.from_pretrained(run)
        arms = {"decoder": DecodeOptions(beam_size=args.beam_size, language=LANGUAGE, retrieval=False)}
        if model.datastore is not None:
            arms["+retrieval"] = DecodeOptions(beam_size=args.beam_size, language=LANGUAGE)
        for split in SPLITS:
            chosen = [e for e in examples if e.split == split]
            if not chosen:
                continue
            features = features_of(model, chosen, cache_dir, args.batch_size)
            for arm, options in arms.items():
                predicted, confidence = caption_all(model, features, options)
                result = next((r for r in results if r["run"] == run and r["arm"] == arm), None)
                if result is None:
                    result = {"run": run, "arm": arm}
                    results.append(result)
                result[split] = scored(split, chosen, predicted, confidence, train_captions)
                if predictions:
                    for e, p, c in zip(chosen, predicted, confidence):
                        predictions.write(json.dumps({"run": run, "arm": arm, "split": split, "image": str(e.image_ref),
                                                      "artist": e.metadata.get("artist"), "reference": english(e)[0],
                                                      "caption": p, "confidence": c}, ensure_ascii=False) + "\n")
                if split == ARTIST_SPLIT and arm == "+retrieval" and args.add_to_datastore:
                    result["add_to_datastore"] = add_to_datastore(model, chosen, features, args.add_to_datastore,
                                                                  options)
                print(json.dumps({"run": run, "arm": arm, split: result[split]["all"]}), flush=True)
        for result in results:
            if result["run"] == run:
                result["seconds"] = round(time.monotonic() - started, 1)

    print(f"| run | {ARTIST_SPLIT} exact | BLEU-4 | CIDEr-D | seen / unseen emoji exact | confidence AUROC "
          "| test exact | CIDEr-D |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        a, t = r.get(ARTIST_SPLIT, {}), r.get("test", {})
        seen, unseen = a.get("seen emoji", {}), a.get("unseen emoji", {})
        auc = a.get("all", {}).get("confidence_auroc")
        print(f"| {Path(r['run']).name} ({r['arm']}) | {100 * a['all']['exact_match']:.1f}% | {a['all']['Bleu_4']:.3f} | "
              f"{a['all']['CIDEr']:.3f} | {100 * seen.get('exact_match', 0):.1f}% / "
              f"{100 * unseen.get('exact_match', 0):.1f}% | {'–' if auc is None else f'{auc:.3f}'} | "
              f"{100 * t['all']['exact_match']:.1f}% | {t['all']['CIDEr']:.3f} |")
        if "add_to_datastore" in r:
            d = r["add_to_datastore"]
            print(f"|  adding {d['added_images']} of their drawings to the datastore: the other {d['scored_images']} "
                  f"| {100 * d['before']['exact_match']:.1f}% → {100 * d['after']['exact_match']:.1f}% | | "
                  f"{d['before']['CIDEr']:.3f} → {d['after']['CIDEr']:.3f} | | | | |")
            before, after = d["before"]["skin tone"], d["after"]["skin tone"]
            by_tone = ", ".join(f"{tone} {right_tone_share(before['by tone'][tone])} → "
                                f"{right_tone_share(after['by tone'][tone])}" for tone in TONES)
            print(f"|  skin tones: the right emoji in the wrong tone {before['right emoji, wrong tone']} → "
                  f"{after['right emoji, wrong tone']}; one tone, right emoji, right tone: {by_tone} | | | | | | | |")
        if ARTIST_SPLIT in r:
            kinds = ", ".join(f"{kind} {100 * g['exact_match']:.1f}% ({g['images']})"
                              for kind, g in r[ARTIST_SPLIT]["by kind"].items())
            tone = r[ARTIST_SPLIT]["skin tone"]
            by_tone = ", ".join(f"{name} {right_tone_share(t)}" for name, t in tone["by tone"].items())
            print(f"|  by kind: {kinds}; skin tone: {tone['right emoji, wrong tone']} of {tone['images']} "
                  f"the right emoji in the wrong tone; one tone, right emoji, right tone: {by_tone} | | | | | | | |")
    if predictions:
        predictions.close()
    if args.output:
        Path(args.output).write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
