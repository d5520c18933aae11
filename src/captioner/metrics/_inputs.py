"""What every metric reads from its inputs: checked (candidate, references) pairs and the
n-gram counts of a caption.

A leaf of ``captioner.metrics``: BLEU, ROUGE-L, CIDEr-D and :func:`evaluate_captions` all
import it, and it imports none of them.
"""

from __future__ import annotations

from collections import Counter
from typing import Hashable, Mapping, Sequence

from ..errors import InvalidInputError


def as_candidates(candidates: Mapping[Hashable, object]) -> dict[Hashable, str]:
    """Accept ``{id: "caption"}`` or pycocoevalcap-style ``{id: ["caption"]}``."""
    out = {}
    for k, v in candidates.items():
        if isinstance(v, str):
            out[k] = v
        elif isinstance(v, Sequence) and len(v) == 1 and isinstance(v[0], str):
            out[k] = v[0]
        else:
            raise InvalidInputError(f"candidate for id {k!r} must be a string (or a one-element list), got {v!r}")
    return out


def check_ids(candidates: Mapping, references: Mapping) -> None:
    """Raise unless both mappings have the same image ids, naming (up to 10 of) the odd ones."""
    missing_pred = [k for k in references if k not in candidates]
    missing_ref = [k for k in candidates if k not in references]
    if missing_pred or missing_ref:
        parts = []
        if missing_pred:
            parts.append(f"{len(missing_pred)} image id(s) have references but no prediction: {missing_pred[:10]}")
        if missing_ref:
            parts.append(f"{len(missing_ref)} image id(s) have a prediction but no references: {missing_ref[:10]}")
        raise InvalidInputError("prediction and reference image ids do not match; " + "; ".join(parts))


def check_pair(candidates: Mapping[Hashable, object], references: Mapping[Hashable, Sequence[str]]):
    """Validate and return ``(ids, cands, refs)``, ids in the references' order."""
    cands = as_candidates(candidates)
    check_ids(cands, references)
    ids = list(references)
    refs = {}
    for k in ids:
        r = references[k]
        if isinstance(r, str) or not isinstance(r, Sequence) or len(r) == 0:
            raise InvalidInputError(f"references for id {k!r} must be a non-empty list of strings")
        refs[k] = list(r)
    return ids, cands, refs


def ngram_counts(words: Sequence[str], n: int) -> Counter:
    """Occurrences of every 1..n-gram of ``words`` (tuples of words), shorter n-grams first."""
    counts: Counter = Counter()
    for k in range(1, n + 1):
        counts.update(tuple(words[i : i + k]) for i in range(len(words) - k + 1))
    return counts
