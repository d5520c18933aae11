"""ROUGE-L (coco-caption flavour): per image, LCS-based precision and recall
are maximised independently over the references, then
``F = (1 + b^2) P R / (R + b^2 P)`` with ``b = 1.2``; corpus score = mean.

Captions are split on single spaces (``str.split(" ")``) exactly like
pycocoevalcap, so an empty caption counts as one empty token.  The LCS length is
computed with a bit-parallel algorithm (Python big ints as bit vectors).
"""

from __future__ import annotations

from typing import Hashable, Mapping, Sequence

import numpy as np

from ._inputs import check_pair

__all__ = ["compute_rouge_l", "lcs_length", "rouge_l_single"]


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence of two token sequences."""
    if len(a) < len(b):
        a, b = b, a
    m = len(a)
    if m == 0 or not b:
        return 0
    masks: dict = {}
    for i, t in enumerate(a):
        masks[t] = masks.get(t, 0) | (1 << i)
    full = (1 << m) - 1
    v = full
    for t in b:
        u = v & masks.get(t, 0)
        v = ((v + u) | (v - u)) & full
    return m - bin(v).count("1")


def rouge_l_single(candidate: str, refs: Sequence[str], beta: float = 1.2) -> float:
    tc = candidate.split(" ")
    prec_max = 0.0
    rec_max = 0.0
    for r in refs:
        tr = r.split(" ")
        lcs = lcs_length(tr, tc)
        prec_max = max(prec_max, lcs / float(len(tc)))
        rec_max = max(rec_max, lcs / float(len(tr)))
    if prec_max != 0 and rec_max != 0:
        return ((1 + beta**2) * prec_max * rec_max) / float(rec_max + beta**2 * prec_max)
    return 0.0


def compute_rouge_l(
    candidates: Mapping[Hashable, str], references: Mapping[Hashable, Sequence[str]], beta: float = 1.2
) -> tuple[float, np.ndarray]:
    """Return ``(mean ROUGE-L, per-image array in the order of references)``."""
    ids, cands, refs = check_pair(candidates, references)
    scores = np.array([rouge_l_single(cands[k], refs[k], beta) for k in ids], dtype=np.float64)
    return float(np.mean(scores)) if len(scores) else 0.0, scores
