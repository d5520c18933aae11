"""How well the confidence tells held-out emoji from photographs: AUROC of the shipped confidence
and of the candidate signals it was chosen from, and the share of each set flagged as low.

In-domain: the model's held-out test split (emoji never seen in training) of its own sources;
out-of-domain: the photographs that ship with scikit-image, matplotlib and (when installed)
scikit-learn. ``--other-sources`` adds a second in-domain set: emoji by artists the model never
saw (test split), reported on its own line.

    python -m benchmarks.experiments.confidence_auroc --data data/emoji/dataset.json \\
        --sources google,noto,openmoji \\
        --other-sources fluent-color,fluent-flat,fluent-high-contrast,emojione-1,emojione-2,noto-v1 \\
        [--extra-photos china.jpg flower.jpg] [--json out.json]

(about 10 minutes on one busy CPU core for the 2,134 images; ``--device cuda`` where there is one).

AUROC = P(an in-domain image scores higher than a photo), ties counted half.
"""
import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from captioner import Captioner
from captioner.confidence import mean_word_probability
from captioner.data.images import build_transform, load_image
from captioner.data.sources import split_image_paths

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
def measure(model: Captioner, paths: list[str], beam_size: int, batch_size: int = 64) -> dict[str, np.ndarray]:
    """Each candidate signal (higher = more in-domain) and the shipped confidence, per image."""
    transform = build_transform(model.preprocess)
    config = model.decoding_config()
    columns: dict[str, list[float]] = {k: [] for k in (
        "mean token probability", "mean word probability", "min token probability",
        "length-normalised log-prob", "first-step entropy (negated)", "familiarity (diagonal Mahalanobis)",
        "confidence (shipped)")}
    for start in range(0, len(paths), batch_size):
        pixels = torch.stack([transform(load_image(p)) for p in paths[start : start + batch_size]]).to(model.device)
        features = model.encode(pixels)
        first, _ = model.decoder.step(
            torch.full((len(pixels),), config.start_id, device=model.device), model.decoder.init_state(features)
        )  # (batch, vocab)
        first = first.float()
        first[:, list(config.banned_ids)] = -math.inf
        first = first.log_softmax(-1)
        entropy = -(first.exp() * first.nan_to_num(neginf=0.0)).sum(-1)  # (batch,)
        best = [h[0] for h in model.generate(features, beam_size=beam_size)]
        words = [mean_word_probability(h.token_log_probs, len(h.tokens)) for h in best]
        columns["mean token probability"] += [float(np.mean(np.exp(h.token_log_probs))) for h in best]
        columns["mean word probability"] += words
        columns["min token probability"] += [float(np.exp(min(h.token_log_probs))) for h in best]
        columns["length-normalised log-prob"] += [h.log_prob / len(h.token_log_probs) for h in best]
        columns["first-step entropy (negated)"] += (-entropy).tolist()
        columns["familiarity (diagonal Mahalanobis)"] += model.confidence.familiarity(features.pooled).tolist()
        columns["confidence (shipped)"] += model.confidence.confidence(features.pooled, words).tolist()
    return {k: np.asarray(v) for k, v in columns.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="the model's dataset.json")
    parser.add_argument("--sources", default="google,noto,openmoji", help="the sources the model was trained on")
    parser.add_argument("--other-sources", default="", help="sources the model never saw, reported apart")
    parser.add_argument("--model", help="model directory (default: the bundled model)")
    parser.add_argument("--beam-size", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--extra-photos", nargs="*", default=[],
                        help="more photographs (e.g. scikit-learn's china.jpg and flower.jpg copied from its wheel)")
    parser.add_argument("--json", type=Path, help="write the numbers here as JSON")
    args = parser.parse_args()

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", torch.get_num_threads())))
    model = Captioner.from_pretrained(args.model, device=args.device)
    if model.confidence is None:
        raise SystemExit("the model has no confidence.safetensors: write it with scripts/confidence_stats.py")
    sets = {"held-out emoji": split_image_paths(args.data, "test", set(args.sources.split(",")))}
    if args.other_sources:
        sets["unseen artists' emoji"] = split_image_paths(args.data, "test", set(args.other_sources.split(",")))
    sets["photos"] = photo_paths() + [str(p) for p in args.extra_photos]
    started = time.perf_counter()
    scores = {name: measure(model, paths, args.beam_size) for name, paths in sets.items()}
    seconds = time.perf_counter() - started
    photos = scores["photos"]
    threshold = model.confidence.threshold
    report = {"threshold": threshold, "domain": model.confidence.domain, "seconds": round(seconds, 1),
              "images": {name: len(paths) for name, paths in sets.items()}, "auroc": {}, "flagged": {}}
    in_domain = [name for name in sets if name != "photos"]
    print(f"{len(sets['photos'])} photos vs " + ", ".join(f"{len(sets[n])} {n}" for n in in_domain)
          + f" ({seconds:.0f} s)")
    print(f"{'signal':38s}" + "".join(f"{'AUROC ' + n:>30s}" for n in in_domain))
    for signal in photos:
        values = {n: auroc(scores[n][signal], photos[signal]) for n in in_domain}
        report["auroc"][signal] = values
        print(f"{signal:38s}" + "".join(f"{values[n]:>30.4f}" for n in in_domain))
    for name in sets:
        flagged = scores[name]["confidence (shipped)"] < threshold
        report["flagged"][name] = float(flagged.mean())
        print(f"flagged low (confidence < {threshold}): {name}: {flagged.sum()} of {len(flagged)} "
              f"({flagged.mean():.1%})")
    missed = [Path(p).name for p, c in zip(sets["photos"], photos["confidence (shipped)"]) if c >= threshold]
    if missed:
        print("photos not flagged: " + ", ".join(missed))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
