"""What several trained runs would caption together: per image, the caption of highest confidence.

Reads ``emoji_ablation --predictions`` files of runs scored on the same split (one JSON line per
image, arm and run) and prints, per arm, each run's exact match, the runs' ensemble (per image
the caption whose confidence is highest), and the oracle (any run right) — how much two runs of
one recipe disagree, and how much of that a confidence can recover:

    python -m benchmarks.experiments.ensemble_pick runs/fluent-ft4-pred.jsonl runs/fluent-ft5-pred.jsonl
"""
from __future__ import annotations

import argparse
import json

from captioner.data.tokenizer import ptb_tokenize


def read_predictions(path: str, split: str) -> dict[tuple[str, str], dict]:
    """``(arm, image) → record`` of one predictions file's ``split``."""
    with open(path) as f:
        records = (json.loads(line) for line in f if line.strip())
        return {(r["arm"], r["image"]): r for r in records if r["split"] == split}


def exact(record: dict) -> bool:
    """Exact match as ``emoji_ablation`` scores it: the same PTB tokens as the reference."""
    return ptb_tokenize(record["caption"]) == ptb_tokenize(record["reference"])


def ensemble(runs: list[dict[tuple[str, str], dict]], arm: str) -> dict:
    """Exact-match shares over the images every run captioned in ``arm``."""
    keys = sorted(set.intersection(*(set(k for k in run if k[0] == arm) for run in runs)))
    if not keys:
        return {"images": 0}
    share = lambda hits: round(100 * hits / len(keys), 1)  # noqa: E731
    return {"images": len(keys),
            "runs": [share(sum(exact(run[k]) for k in keys)) for run in runs],
            "most confident": share(sum(exact(max((run[k] for run in runs), key=lambda r: r["confidence"]))
                                        for k in keys)),
            "any right (oracle)": share(sum(any(exact(run[k]) for run in runs) for k in keys))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("predictions", nargs="+", help="emoji_ablation --predictions files, one a run")
    parser.add_argument("--split", default="test-artist")
    args = parser.parse_args(argv)
    runs = [read_predictions(path, args.split) for path in args.predictions]
    for arm in sorted({k[0] for run in runs for k in run}):
        print(arm, json.dumps(ensemble(runs, arm)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
