"""Fit a trained model's confidence statistics and write ``confidence.safetensors`` into its
directory (``captioner train`` does this itself for new models; this is for models trained
before it did, such as the bundled one).

Feature statistics come from the model's training images, calibration from its held-out
validation images captioned as ``caption`` does (reranked by the model's datastore when it has
one), both read from the dataset it was trained on (only its ``--sources``):

    python scripts/confidence_stats.py --data data/emoji/dataset.json \\
        --sources google,noto,openmoji --domain "emoji art" [--model DIR] [--train-stride 3] \\
        [--leave-out artist]

``--leave-out FIELD`` (a per-image field of the dataset) captions each val image with the
datastore rows of its own FIELD left out, as images of a new artist will find none of theirs
(the datastore must hold the dataset's training images of those sources, in order: ``captioner
datastore build --data DATA --split train``).
"""
import argparse
import time
from pathlib import Path

import numpy as np

from captioner import Captioner, DecodeOptions
from captioner.confidence import DEFAULT_DOMAIN, DEFAULT_THRESHOLD, features_from_images, fit_confidence
from captioner.data.sources import read_dataset, split_examples
from captioner.model import default_model_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="the model's training dataset.json")
    parser.add_argument("--sources", help="comma-separated sources the model was trained on (default: all)")
    parser.add_argument("--model", help="model directory (default: the bundled model)")
    parser.add_argument("--domain", default=DEFAULT_DOMAIN, help="what the model knows, as the page names it")
    parser.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD,
                        help="confidence below which a caption is flagged (the share of held-out images flagged)")
    parser.add_argument("--train-stride", type=int, default=1,
                        help="use every Nth training image for the feature statistics (faster on a CPU)")
    parser.add_argument("--beam-size", type=int, default=3, help="decoding used for the calibration captions")
    parser.add_argument("--leave-out", metavar="FIELD",
                        help="caption each val image without the datastore rows of its own FIELD (e.g. artist)")
    args = parser.parse_args()

    sources = set(args.sources.split(",")) if args.sources else None
    examples = read_dataset(args.data)  # read once: train, val and (--leave-out) the datastore's rows
    stored, held_out = split_examples(examples, "train", sources), split_examples(examples, "val", sources)
    train = [str(e.path) for e in stored][:: args.train_stride]
    if not train or not held_out:
        raise SystemExit(f"{args.data}: {len(train)} train and {len(held_out)} val images of sources {args.sources}")
    model = Captioner.from_pretrained(args.model)
    directory = Path(args.model) if args.model else default_model_dir()
    language = model.vocab.default_language  # calibrated on the captions the decoder writes
    references = [e.captions_in(language, language) for e in held_out]
    labels = {}
    if args.leave_out:
        if model.datastore is None or len(model.datastore) != len(stored):
            raise SystemExit(f"--leave-out: the model's datastore must hold the {len(stored)} training images of "
                             f"{args.data} in order (it holds {0 if model.datastore is None else len(model.datastore)})")
        missing = [e.image_id for e in stored + held_out if args.leave_out not in e.metadata]
        if missing:  # as training refuses it: an image without the field is no artist's
            raise SystemExit(f"--leave-out {args.leave_out}: {len(missing)} images have no {args.leave_out!r} field "
                             f"(e.g. {missing[0]!r})")
        field = lambda found: np.array([str(e.metadata[args.leave_out]) for e in found])  # noqa: E731
        labels = {"held_out_labels": field(held_out), "store_labels": field(stored)}
    started = time.perf_counter()
    model.confidence = fit_confidence(
        model, features_from_images(model, train), features_from_images(model, [str(e.path) for e in held_out]),
        references, DecodeOptions(beam_size=args.beam_size), threshold=args.threshold, domain=args.domain, **labels,
    )
    path = model.confidence.save(directory)
    print(f"wrote {path} ({path.stat().st_size} bytes): statistics of {len(train)} training images, "
          f"calibrated on {len(held_out)} val images, threshold {args.threshold}, "
          f"in {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
