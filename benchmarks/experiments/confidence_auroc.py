"""How well the confidence tells held-out emoji from photographs: AUROC of the shipped confidence
and of each signal it reads, and the share of each set flagged ``low_confidence``; and how well
it tells the held-out emoji's exact captions from wrong ones (AUROC of the confidence between
them; on artists no run saw: ``benchmarks.experiments.emoji_ablation``).

In-domain: the model's held-out test split (emoji never seen in training) of its own sources;
out-of-domain: the photographs that ship with scikit-image, matplotlib and (when installed)
scikit-learn. ``--other-sources`` adds a second in-domain set: emoji by artists the model never
saw (test split), reported on its own line.

    python -m benchmarks.experiments.confidence_auroc --data data/emoji/dataset.json \\
        --sources google,noto,openmoji \\
        --other-sources fluent-color,fluent-flat,fluent-high-contrast,emojione-1,emojione-2,noto-v1 \\
        [--extra-photos china.jpg flower.jpg] [--no-retrieval] [--json out.json]

(about 10 minutes on one busy CPU core for the 2,134 images; ``--device cuda`` where there is one).

AUROC = P(an in-domain image scores higher than a photo), ties counted half.
"""
import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from captioner import Captioner, DecodeOptions
from captioner.captions import caption_features, caption_signals
from captioner.data.sources import read_dataset, split_examples

# scikit-image's photographs (its synthetic images — logo, colour wheel, chessboard, phantom — left out).
SKIMAGE_PHOTOS = (
    "astronaut.png brick.png camera.png cell.png chelsea.png clock_motion.png coffee.png coins.png grass.png "
    "gravel.png horse.png hubble_deep_field.jpg ihc.png microaneurysms.png moon.png motorcycle_left.png page.png "
    "retina.jpg rocket.jpg text.png"
).split()


def photo_paths() -> list[str]:
    """The photographs installed with the test dependencies (scikit-learn's only when installed)."""
    import matplotlib
    import skimage.data

    folder = Path(skimage.data.__file__).parent
    paths = [folder / name for name in SKIMAGE_PHOTOS]
    paths.append(Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg")
    try:
        import sklearn

        images = Path(sklearn.__file__).parent / "datasets" / "images"
        paths += [images / "china.jpg", images / "flower.jpg"]
    except ImportError:
        print("scikit-learn is not installed: its china.jpg and flower.jpg are left out", file=sys.stderr)
    return [str(p) for p in paths if p.is_file()]


def auroc(positive: np.ndarray, negative: np.ndarray) -> float:
    """P(positive > negative) + P(tie) / 2 — the area under the ROC curve."""
    positive, negative = np.asarray(positive, float)[:, None], np.asarray(negative, float)[None, :]
    return float((positive > negative).mean() + 0.5 * (positive == negative).mean())


@torch.inference_mode()
def measure(model: Captioner, paths: list[str], beam_size: int, batch_size: int = 64,
            retrieval: bool = True) -> tuple[dict[str, np.ndarray], list[str]]:
    """Each signal the confidence reads (higher = more in-domain), the shipped confidence and its
    flag, per image, captioned as ``captioner caption`` does (``--no-retrieval`` when not
    ``retrieval``); and the captions."""
    options = DecodeOptions(beam_size=beam_size, retrieval=retrieval)
    columns: dict[str, list[float]] = {}
    texts: list[str] = []
    for start in range(0, len(paths), batch_size):
        features = model.encode_images(paths[start : start + batch_size])
        _, values = caption_signals(model, features, options)
        kind = "per dimension" if model.confidence.feature_axes is None else "principal axes"
        kind += ", untuned stages" if model.confidence.reads == "untuned" else ""
        values[f"familiarity ({kind})"] = model.confidence.familiarity_of(features).tolist()
        captions = caption_features(model, features, options)
        values["confidence (shipped)"] = [c.confidence for c in captions]
        values["flagged"] = [float(c.low_confidence) for c in captions]
        texts += [c.text for c in captions]
        for name, column in values.items():
            columns.setdefault(name, []).extend(column)
    return {k: np.asarray(v, dtype=float) for k, v in columns.items()}, texts


def artists_test_examples(data: Path, sources: str) -> list:
    """The dataset's test examples drawn by ``sources`` (comma-separated artists)."""
    return split_examples(read_dataset(data), "test", sources.split(","))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="the model's dataset.json")
    parser.add_argument("--sources", default="google,noto,openmoji", help="the sources the model was trained on")
    parser.add_argument("--other-sources", default="", help="sources the model never saw, reported apart")
    parser.add_argument("--model", help="model directory (default: the bundled model)")
    parser.add_argument("--beam-size", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--no-retrieval", action="store_true",
                        help="caption without the model's datastore (its confidence's fit for the decoder alone)")
    parser.add_argument("--extra-photos", nargs="*", default=[],
                        help="more photographs (e.g. scikit-learn's china.jpg and flower.jpg copied from its wheel)")
    parser.add_argument("--json", type=Path, help="write the numbers here as JSON")
    args = parser.parse_args()

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", torch.get_num_threads())))
    model = Captioner.from_pretrained(args.model, device=args.device)
    if model.confidence is None:
        raise SystemExit("the model has no confidence.safetensors: write it with scripts/confidence_stats.py")
    examples = {"held-out emoji": artists_test_examples(args.data, args.sources)}
    if args.other_sources:
        examples["unseen artists' emoji"] = artists_test_examples(args.data, args.other_sources)
    sets = {name: [str(e.path) for e in found] for name, found in examples.items()}
    sets["photos"] = photo_paths() + [str(p) for p in args.extra_photos]
    started = time.perf_counter()
    measured = {name: measure(model, paths, args.beam_size, retrieval=not args.no_retrieval)
                for name, paths in sets.items()}
    scores = {name: columns for name, (columns, _) in measured.items()}
    seconds = time.perf_counter() - started
    photos = scores["photos"]
    threshold = model.confidence.threshold
    report = {"threshold": threshold, "domain": model.confidence.domain, "seconds": round(seconds, 1),
              "images": {name: len(paths) for name, paths in sets.items()}, "auroc": {}, "flagged": {}}
    in_domain = [name for name in sets if name != "photos"]
    print(f"{len(sets['photos'])} photos vs " + ", ".join(f"{len(sets[n])} {n}" for n in in_domain)
          + f" ({seconds:.0f} s)")
    print(f"{'signal':46s}" + "".join(f"{'AUROC ' + n:>30s}" for n in in_domain))
    for signal in (s for s in photos if s != "flagged"):
        values = {n: auroc(scores[n][signal], photos[signal]) for n in in_domain}
        report["auroc"][signal] = values
        print(f"{signal:46s}" + "".join(f"{values[n]:>30.4f}" for n in in_domain))
    for name in sets:
        flagged = scores[name]["flagged"] > 0
        report["flagged"][name] = float(flagged.mean())
        print(f"flagged low_confidence: {name}: {flagged.sum()} of {len(flagged)} ({flagged.mean():.1%})")
    missed = [Path(p).name for p, f in zip(sets["photos"], photos["flagged"]) if not f]
    if missed:
        print("photos not flagged: " + ", ".join(missed))
    language = model.vocab.default_language
    words = lambda text: " ".join(model.vocab.tokenize(text, language))  # noqa: E731
    report["exact_vs_wrong"] = {}
    for name, found in examples.items():
        texts, confidence = measured[name][1], scores[name]["confidence (shipped)"]
        exact = np.array([words(t) in {words(c) for c in e.captions_in(language, language)}
                          for t, e in zip(texts, found)])
        value = auroc(confidence[exact], confidence[~exact]) if 0 < exact.sum() < len(exact) else float("nan")
        report["exact_vs_wrong"][name] = {"auroc": value, "exact": float(exact.mean())}
        print(f"exact vs wrong captions, {name}: AUROC {value:.4f} ({exact.sum()} of {len(exact)} exact)")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
