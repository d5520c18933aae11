"""CIDEr-D with coco-caption's exact conventions (``pycocoevalcap.cider``).

For every n = 1..4 a caption is a tf-idf vector over its n-grams:
``tf * (log(N) - log(max(1, df)))`` where ``df`` counts the images whose
references contain the n-gram and ``N`` is the number of images of the
reference corpus.  The similarity of a candidate ``c`` and a reference ``r`` is
``sum_g min(c_g, r_g) * r_g / (|c| |r|)`` (clipping), multiplied by the
Gaussian length penalty ``exp(-(l_c - l_r)^2 / (2 sigma^2))``, ``sigma = 6``,
where -- a coco-caption quirk kept on purpose -- the "length" is the number of
*bigrams* of the caption.  The image score is ``10 * mean_n(sum_r sim) / #refs``.

* :func:`compute_cider_d` -- plain dictionary implementation (df from the
  evaluated references, like pycocoevalcap).
* :class:`CiderD` -- document frequencies precomputed once from a training
  corpus, JSON-serialisable, batch scoring vectorised with numpy (for
  self-critical training rewards).  ``CiderD.from_corpus(refs).score(c, refs)``
  equals :func:`compute_cider_d` on the same data.
"""

from __future__ import annotations

import math
from collections import defaultdict
from itertools import chain, repeat
from typing import Hashable, Iterable, Mapping, Sequence

import numpy as np

from .evaluate import check_pair

__all__ = ["CiderD", "compute_cider_d"]


# --------------------------------------------------------------------------
# plain implementation
# --------------------------------------------------------------------------
def _counts(sentence: str, n: int) -> dict:
    words = sentence.split()
    c: dict = defaultdict(int)
    for k in range(1, n + 1):
        for i in range(len(words) - k + 1):
            c[tuple(words[i : i + k])] += 1
    return c


def compute_cider_d(
    candidates: Mapping[Hashable, str],
    references: Mapping[Hashable, Sequence[str]],
    n: int = 4,
    sigma: float = 6.0,
) -> tuple[float, np.ndarray]:
    """Return ``(mean CIDEr-D, per-image array in the order of references)``.

    Inputs are tokenized (whitespace separated) strings; document frequencies
    come from ``references`` themselves.
    """
    ids, cands, refs = check_pair(candidates, references)
    ref_counts = [[_counts(r, n) for r in refs[k]] for k in ids]
    df: dict = defaultdict(float)
    for rc in ref_counts:
        for g in {g for c in rc for g in c}:
            df[g] += 1.0
    log_n = math.log(float(len(ids))) if ids else 0.0

    def to_vec(cnts):
        vec = [dict() for _ in range(n)]
        norm = [0.0] * n
        length = 0
        for g, tf in cnts.items():
            o = len(g) - 1
            w = float(tf) * (log_n - math.log(max(1.0, df.get(g, 0.0))))
            vec[o][g] = w
            norm[o] += w * w
            if o == 1:
                length += tf
        return vec, [math.sqrt(x) for x in norm], length

    scores = np.zeros(len(ids), dtype=np.float64)
    for idx, k in enumerate(ids):
        vc, nc, lc = to_vec(_counts(cands[k], n))
        acc = np.zeros(n)
        for rc in ref_counts[idx]:
            vr, nr, lr = to_vec(rc)
            pen = math.exp(-((lc - lr) ** 2) / (2 * sigma**2))
            for o in range(n):
                s = 0.0
                for g, w in vc[o].items():
                    wr = vr[o].get(g, 0.0)
                    s += min(w, wr) * wr
                if nc[o] != 0 and nr[o] != 0:
                    s /= nc[o] * nr[o]
                acc[o] += s * pen
        scores[idx] = float(np.mean(acc)) / len(ref_counts[idx]) * 10.0
    return (float(np.mean(scores)) if len(scores) else 0.0), scores


# --------------------------------------------------------------------------
# fast, precomputed-df implementation
# --------------------------------------------------------------------------
_MULT = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser (vectorised, wrapping uint64 arithmetic)."""
    x = x ^ (x >> np.uint64(30))
    x = x * _MIX1
    x = x ^ (x >> np.uint64(27))
    x = x * _MIX2
    return x ^ (x >> np.uint64(31))


def _dense_ids(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``np.unique(keys, return_inverse=True)`` for uint64 keys, usually via a plain sort.

    The occurrence index is packed into the low bits of the key so that ``np.sort`` (much
    faster than ``argsort``) also yields the permutation; the result is exact whenever no two
    distinct keys share their high bits (checked), else ``np.unique`` is used.
    """
    n = len(keys)
    if n == 0:
        return keys[:0], np.zeros(0, dtype=np.int64)
    bits = int(n).bit_length()
    low = np.uint64((1 << bits) - 1)
    packed = (keys & ~low) | np.arange(n, dtype=np.uint64)
    packed.sort()
    perm = (packed & low).astype(np.int64)
    sk = keys[perm]
    same_hi = (packed[1:] & ~low) == (packed[:-1] & ~low)
    diff_key = sk[1:] != sk[:-1]
    if np.any(same_hi & diff_key):  # high-bit collision between distinct keys: exact fallback
        u, inv = np.unique(keys, return_inverse=True)
        return u, inv.astype(np.int64)
    new = np.empty(n, dtype=bool)
    new[0] = True
    new[1:] = diff_key
    uid = np.empty(n, dtype=np.int64)
    uid[perm] = np.cumsum(new) - 1
    return sk[new], uid


def _unique_counts(comp: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``np.unique(comp, return_counts=True)`` for non-negative int64 values."""
    if len(comp) == 0:
        return comp, np.zeros(0, dtype=np.int64)
    srt = np.sort(comp)
    new = np.empty(len(srt), dtype=bool)
    new[0] = True
    new[1:] = srt[1:] != srt[:-1]
    starts = np.nonzero(new)[0]
    return srt[starts], np.diff(np.append(starts, len(srt)))


class _Batch:
    """Flattened n-gram occurrences of a list of sentences."""

    __slots__ = ("sent", "order", "key", "nsent", "nbigrams")

    def __init__(self, sent, order, key, nsent, nbigrams):
        self.sent, self.order, self.key, self.nsent, self.nbigrams = sent, order, key, nsent, nbigrams


class CiderD:
    """CIDEr-D scorer with document frequencies fixed from a reference corpus.

    >>> scorer = CiderD.from_corpus([["a dog runs", "a dog is running"], ["a cat"]])
    >>> scorer.score(["a dog runs"], [["a dog runs", "a dog is running"]])  # doctest: +SKIP

    Captions must already be tokenized (whitespace separated, e.g. with
    :func:`captioner.data.tokenizer.ptb_tokenize`).  N-grams are identified by a
    64-bit hash of their word ids (collisions are astronomically unlikely but
    possible); :func:`compute_cider_d` is the exact reference.
    """

    def __init__(self, df: Mapping[str, float], num_docs: int, n: int = 4, sigma: float = 6.0):
        if num_docs <= 0:
            raise ValueError("num_docs must be positive")
        self.n = int(n)
        self.sigma = float(sigma)
        self.num_docs = int(num_docs)
        self.ref_len = math.log(float(self.num_docs))
        self._df = dict(df)  # "w1 w2" -> document frequency
        self._vocab: dict[str, int] = {}
        for g in self._df:
            for w in g.split(" "):
                if w not in self._vocab:
                    self._vocab[w] = len(self._vocab) + 1
        if self._df:
            keys = self._hash_ngrams(list(self._df))
            vals = np.fromiter(self._df.values(), dtype=np.float64, count=len(self._df))
            order = np.argsort(keys, kind="stable")
            self._df_keys = keys[order]
            self._df_logs = np.log(np.maximum(1.0, vals[order]))
        else:
            self._df_keys = np.zeros(0, dtype=np.uint64)
            self._df_logs = np.zeros(0, dtype=np.float64)

    # ---- construction / serialisation ----------------------------------
    @classmethod
    def from_corpus(cls, references: Iterable[Sequence[str]], n: int = 4, sigma: float = 6.0) -> "CiderD":
        """Document frequencies from ``references``: one list of tokenized captions per image."""
        df: dict[str, float] = defaultdict(float)
        num = 0
        for refs in references:
            num += 1
            seen = set()
            for r in refs:
                w = r.split()
                for k in range(1, n + 1):
                    for i in range(len(w) - k + 1):
                        seen.add(" ".join(w[i : i + k]))
            for g in seen:
                df[g] += 1.0
        return cls(df, num, n=n, sigma=sigma)

    def to_dict(self) -> dict:
        """Plain JSON-able description (no pickle)."""
        return {
            "type": "CiderD",
            "version": 1,
            "n": self.n,
            "sigma": self.sigma,
            "num_docs": self.num_docs,
            "df": {g: (int(v) if float(v).is_integer() else float(v)) for g, v in self._df.items()},
        }

    @classmethod
    def from_dict(cls, d: Mapping) -> "CiderD":
        if not isinstance(d, Mapping) or d.get("type", "CiderD") != "CiderD" or "df" not in d or "num_docs" not in d:
            raise ValueError("not a CiderD dict (expected keys 'df', 'num_docs', 'n', 'sigma')")
        return cls(d["df"], int(d["num_docs"]), n=int(d.get("n", 4)), sigma=float(d.get("sigma", 6.0)))

    def __repr__(self) -> str:
        return f"CiderD(n={self.n}, sigma={self.sigma}, num_docs={self.num_docs}, ngrams={len(self._df)})"

    # ---- hashing -------------------------------------------------------
    def _ids(self, sentences: Sequence[str], extra: dict) -> tuple[np.ndarray, np.ndarray]:
        """Word ids (unknown words get batch-local ids) and sentence lengths."""
        toks = [t.split() for t in sentences]
        lens = np.fromiter(map(len, toks), dtype=np.int64, count=len(toks))
        flat = list(chain.from_iterable(toks))
        ids = np.fromiter(map(self._vocab.get, flat, repeat(0, len(flat))), dtype=np.uint64, count=len(flat))
        unknown = np.nonzero(ids == 0)[0]
        if len(unknown):
            nv = len(self._vocab)
            for i in unknown.tolist():
                w = flat[i]
                j = extra.get(w)
                if j is None:
                    j = extra[w] = nv + len(extra) + 1
                ids[i] = j
        return ids, lens

    def _hash_ngrams(self, grams: list[str]) -> np.ndarray:
        """Keys of space-joined n-grams whose words are all in the vocabulary."""
        vocab = self._vocab
        mult = int(_MULT)
        mask = (1 << 64) - 1
        out = []
        for g in grams:
            h = 0
            for w in g.split(" "):
                h = (h * mult + vocab[w]) & mask
            out.append(h)
        with np.errstate(over="ignore"):
            return _mix(np.array(out, dtype=np.uint64))

    def _batch(self, sentences: Sequence[str], extra: dict) -> _Batch:
        ids, lens = self._ids(sentences, extra)
        nsent = len(sentences)
        sent_of = np.repeat(np.arange(nsent, dtype=np.int64), lens)
        starts = np.cumsum(lens) - lens
        pos = np.arange(len(ids), dtype=np.int64) - np.repeat(starts, lens)
        remain = np.repeat(lens, lens) - pos  # tokens left from this position (incl.)
        sents, orders, keys = [], [], []
        h = np.zeros(len(ids), dtype=np.uint64)
        with np.errstate(over="ignore"):
            for k in range(self.n):
                valid = remain > k
                if k == 0:
                    h = ids.copy()
                else:
                    # extend the (k)-gram starting at i by the token at i + k
                    nxt = np.zeros(len(ids), dtype=np.uint64)
                    nxt[: len(ids) - k] = ids[k:]
                    h = h * _MULT + nxt
                sel = np.nonzero(valid)[0]
                sents.append(sent_of[sel])
                orders.append(np.full(len(sel), k, dtype=np.int64))
                keys.append(_mix(h[sel]))
        nbigrams = np.maximum(lens - 1, 0).astype(np.float64)
        return _Batch(np.concatenate(sents), np.concatenate(orders), np.concatenate(keys), nsent, nbigrams)

    # ---- scoring -------------------------------------------------------
    def _lookup_logdf(self, ukeys: np.ndarray) -> np.ndarray:
        """log(max(1, df)) of sorted unique keys (0 for n-grams unseen in the corpus)."""
        if len(self._df_keys) == 0 or len(ukeys) == 0:
            return np.zeros(len(ukeys))
        j = np.searchsorted(self._df_keys, ukeys)
        j_c = np.minimum(j, len(self._df_keys) - 1)
        return np.where(self._df_keys[j_c] == ukeys, self._df_logs[j_c], 0.0)

    def score(self, candidates: Sequence[str], references: Sequence[Sequence[str]]) -> np.ndarray:
        """CIDEr-D of each candidate against its references (vectorised over the batch).

        ``candidates[i]`` is a tokenized caption, ``references[i]`` a non-empty
        list of tokenized captions.  Returns a float64 array of shape ``(len(candidates),)``.
        """
        if len(candidates) != len(references):
            raise ValueError(f"{len(candidates)} candidates but {len(references)} reference lists")
        m = len(candidates)
        if m == 0:
            return np.zeros(0, dtype=np.float64)
        nref = np.fromiter((len(r) for r in references), dtype=np.int64, count=m)
        if (nref == 0).any():
            raise ValueError(f"empty reference list for candidate(s) {np.nonzero(nref == 0)[0][:10].tolist()}")
        n = self.n
        sentences = list(candidates)
        for rs in references:
            sentences.extend(rs)
        nsent = len(sentences)  # candidates first (index = image), then all references
        b = self._batch(sentences, {})
        # image of every sentence
        img_of = np.concatenate([np.arange(m, dtype=np.int64), np.repeat(np.arange(m, dtype=np.int64), nref)])

        # dense ids of the distinct n-grams of the batch, and their idf
        ukeys, uid = _dense_ids(b.key)
        nu = len(ukeys)
        idf = self.ref_len - self._lookup_logdf(ukeys)
        uorder = np.zeros(nu, dtype=np.int64)
        uorder[uid] = b.order

        # term frequencies per (sentence, n-gram); entries come out sorted by sentence, then n-gram
        comp, tf = _unique_counts(b.sent * nu + uid)
        e_sent = comp // nu
        e_uid = comp - e_sent * nu
        e_ord = uorder[e_uid]
        w = tf * idf[e_uid]
        norms = np.sqrt(np.bincount(e_sent * n + e_ord, weights=w * w, minlength=nsent * n)).reshape(nsent, n)

        # clipped dot products: join reference entries with the candidate entry of their image
        is_c = e_sent < m
        c_comp = comp[is_c]  # == image * nu + uid, sorted
        c_w = w[is_c]
        r_sel = ~is_c
        r_sent = e_sent[r_sel]
        r_comp = img_of[r_sent] * nu + e_uid[r_sel]
        r_w = w[r_sel]
        if len(c_comp):
            pos = np.minimum(np.searchsorted(c_comp, r_comp), len(c_comp) - 1)
            hit = np.nonzero(c_comp[pos] == r_comp)[0]
        else:
            pos = hit = np.zeros(0, dtype=np.int64)
        rw = r_w[hit]
        contrib = np.minimum(c_w[pos[hit]], rw) * rw
        num = np.bincount(r_sent[hit] * n + e_ord[r_sel][hit], weights=contrib, minlength=nsent * n).reshape(nsent, n)[m:]

        ref_img = img_of[m:]
        cn = norms[:m][ref_img]
        rn = norms[m:]
        ok = (cn != 0) & (rn != 0)
        val = np.where(ok, num / np.where(ok, cn * rn, 1.0), num)
        delta = b.nbigrams[:m][ref_img] - b.nbigrams[m:]
        val = val * np.exp(-(delta**2) / (2 * self.sigma**2))[:, None]
        per_img = np.bincount(ref_img, weights=val.mean(axis=1), minlength=m)
        return per_img / nref * 10.0

    def compute_score(
        self, candidates: Mapping[Hashable, str], references: Mapping[Hashable, Sequence[str]]
    ) -> tuple[float, np.ndarray]:
        """Dict interface like :func:`compute_cider_d` (but with this object's df)."""
        ids, cands, refs = check_pair(candidates, references)
        s = self.score([cands[k] for k in ids], [refs[k] for k in ids])
        return (float(s.mean()) if len(s) else 0.0), s
