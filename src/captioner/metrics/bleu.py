"""BLEU-1..4 with coco-caption's conventions (``pycocoevalcap.bleu``).

Corpus BLEU sums clipped n-gram matches and guesses over all images; the
effective reference length of an image is the reference length closest to the
candidate length (ties -> the shorter one), brevity penalty ``exp(1 - r/c)``
when ``c < r``; ``tiny = 1e-15`` / ``small = 1e-9`` smoothing of every ratio.
Per-image BLEU uses the same formula on one image.  Input strings are already
tokenized (whitespace separated).
"""

from __future__ import annotations

import math
from typing import Hashable, Mapping, Sequence

import numpy as np

from ._inputs import check_pair, ngram_counts

__all__ = ["compute_bleu"]

_TINY = 1e-15
_SMALL = 1e-9


def _bleu_from_stats(correct, guess, testlen, reflen, n):
    scores = []
    acc = 1.0
    for k in range(n):
        acc *= (float(correct[k]) + _TINY) / (float(guess[k]) + _SMALL)
        scores.append(acc ** (1.0 / (k + 1)))
    ratio = (testlen + _TINY) / (reflen + _SMALL)
    if ratio < 1:
        bp = math.exp(1 - 1 / ratio)
        scores = [s * bp for s in scores]
    return scores


def compute_bleu(
    candidates: Mapping[Hashable, str], references: Mapping[Hashable, Sequence[str]], n: int = 4
) -> tuple[list[float], list[np.ndarray]]:
    """Return ``([BLEU_1..BLEU_n corpus], [per-image array for BLEU_1..BLEU_n])``.

    ``candidates``: ``{id: tokenized caption}``; ``references``: ``{id: [tokenized refs]}``.
    Per-image arrays follow the order of ``references``.
    """
    ids, cands, refs = check_pair(candidates, references)
    tot_correct = [0] * n
    tot_guess = [0] * n
    tot_test = 0
    tot_ref = 0
    per_image = [[] for _ in range(n)]
    for k in ids:
        words = cands[k].split()
        testlen = len(words)
        maxref: dict = {}
        reflens = []
        for r in refs[k]:
            rw = r.split()
            reflens.append(len(rw))
            for g, c in ngram_counts(rw, n).items():
                if c > maxref.get(g, 0):
                    maxref[g] = c
        reflen = min(reflens, key=lambda L: (abs(L - testlen), L))
        correct = [0] * n
        for g, c in ngram_counts(words, n).items():
            m = maxref.get(g)
            if m:
                correct[len(g) - 1] += min(m, c)
        guess = [max(0, testlen - j) for j in range(n)]
        for j in range(n):
            tot_correct[j] += correct[j]
            tot_guess[j] += guess[j]
        tot_test += testlen
        tot_ref += reflen
        for j, s in enumerate(_bleu_from_stats(correct, guess, testlen, reflen, n)):
            per_image[j].append(s)
    corpus = _bleu_from_stats(tot_correct, tot_guess, tot_test, tot_ref, n)
    return corpus, [np.asarray(p, dtype=np.float64) for p in per_image]
