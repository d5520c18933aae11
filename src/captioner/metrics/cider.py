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
  equals :func:`compute_cider_d` on the same data.  References scored again and
  again (every epoch) can be prepared once: ``CiderD.prepare_references(refs)``,
  then ``score(c, prepared, index=...)`` only processes the candidates.

The fast path creates no Python object per word: a batch is joined into one byte
string, words are found and hashed (64 bit) with numpy, n-gram keys are rolling
hashes of the word hashes, and tf / grouping come from one ``np.sort``.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Hashable, Iterable, Mapping, Sequence

import numpy as np

from ._inputs import check_pair, ngram_counts

__all__ = ["CiderD", "PreparedReferences", "compute_cider_d"]


# --------------------------------------------------------------------------
# plain implementation
# --------------------------------------------------------------------------
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
    ref_counts = [[ngram_counts(r.split(), n) for r in refs[k]] for k in ids]
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
        vc, nc, lc = to_vec(ngram_counts(cands[k].split(), n))
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
_IMG_MULT = np.uint64(0xD6E8FEB86659FD93)
# little-endian masks keeping the first i bytes of a uint64 (i = 0..8)
_BYTE_MASKS = np.array([(1 << (8 * i)) - 1 for i in range(8)] + [(1 << 64) - 1], dtype=np.uint64)
# the ASCII characters str.split() treats as whitespace
_ASCII_SPACE = np.zeros(256, dtype=bool)
_ASCII_SPACE[[9, 10, 11, 12, 13, 28, 29, 30, 31, 32]] = True


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser (vectorised, wrapping uint64 arithmetic; a bijection of uint64)."""
    with np.errstate(over="ignore"):
        x = x ^ (x >> np.uint64(30))
        x = x * _MIX1
        x = x ^ (x >> np.uint64(27))
        x = x * _MIX2
        return x ^ (x >> np.uint64(31))


_ORDER_SALT = _mix(np.arange(1, 65, dtype=np.uint64))
_MIN_LOW_BITS = 0  # tests raise it to force hash-prefix clashes in _group_sort


def _word_hashes(sentences: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """64-bit hashes of the words of ``s.split()`` for every sentence, and the words per sentence.

    No Python object per word: the sentences are joined into one byte string, word boundaries
    are found with numpy and every word is hashed from its bytes, 8 at a time (splitmix64 of
    ``length, chunk_0, chunk_1, ...``).  Non-ASCII text is first re-joined with single spaces
    so that Unicode whitespace splits words exactly as ``str.split()`` does.
    """
    count = len(sentences)
    text = "\n".join(sentences)
    if text.isascii():
        data = text.encode("ascii")
        slen = np.fromiter(map(len, sentences), dtype=np.int64, count=count)
    else:
        enc = [" ".join(s.split()).encode("utf-8") for s in sentences]
        data = b"\n".join(enc)
        slen = np.fromiter(map(len, enc), dtype=np.int64, count=count)
    nb = len(data)
    buf = np.zeros(nb + 8, dtype=np.uint8)  # zero padding: every 8-byte window stays inside
    buf[:nb] = np.frombuffer(data, dtype=np.uint8)
    space = _ASCII_SPACE[buf[:nb]]
    first = ~space
    first[1:] &= space[:-1]  # first byte of a word
    last = ~space
    last[:-1] &= space[1:]  # last byte of a word
    starts = np.flatnonzero(first)
    wlen = np.flatnonzero(last) + 1 - starts
    words_before = np.zeros(nb + 1, dtype=np.int64)
    np.cumsum(first, out=words_before[1:])
    sent_start = np.cumsum(slen + 1) - (slen + 1)  # byte offset of every sentence ("\n" separated)
    lens = words_before[sent_start + slen] - words_before[sent_start]
    # window[i] = the 8 bytes at i..i+7 as a little-endian uint64 (unaligned strided view)
    window = np.ndarray((nb + 1,), dtype="<u8", buffer=buf, offset=0, strides=(1,))
    with np.errstate(over="ignore"):
        chunk = window[starts] & _BYTE_MASKS[np.minimum(wlen, 8)]
        h = _mix(wlen.astype(np.uint64) * _MULT + chunk)
        longer = np.flatnonzero(wlen > 8)
        k = 8
        while len(longer):
            chunk = window[starts[longer] + k] & _BYTE_MASKS[np.minimum(wlen[longer] - k, 8)]
            h[longer] = _mix(h[longer] * _MULT + chunk)
            k += 8
            longer = longer[wlen[longer] > k]
    return h, lens


def _gram_keys(wh: np.ndarray, lens: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """``keys[k, i]``: 64-bit key of the (k+1)-gram starting at word ``i``, and ``valid[k, i]``
    (the n-gram lies inside the sentence of word ``i``); words as returned by :func:`_word_hashes`."""
    nw = len(wh)
    ends = np.cumsum(lens)
    remain = np.repeat(ends, lens) - np.arange(nw, dtype=np.int64)  # words left from i (incl.)
    keys = np.empty((n, nw), dtype=np.uint64)
    roll = wh.copy()
    with np.errstate(over="ignore"):
        for k in range(n):
            if k:
                roll[: nw - k] = roll[: nw - k] * _MULT + wh[k:]
            keys[k] = _mix(roll ^ _ORDER_SALT[k])
    valid = remain[None, :] > np.arange(n, dtype=np.int64)[:, None]
    return keys, valid


def _occurrences(sentences: Sequence[str], n: int):
    """All n-gram occurrences of ``sentences``: (key, order, sentence) arrays, ordered by order
    then sentence, plus the number of bigrams of every sentence."""
    wh, lens = _word_hashes(sentences)
    keys, valid = _gram_keys(wh, lens, n)
    okey = keys[valid]
    per_order = [np.maximum(lens - k, 0) for k in range(n)]
    sent_ids = np.arange(len(lens), dtype=np.int64)
    osent = np.concatenate([np.repeat(sent_ids, c) for c in per_order])
    oord = np.repeat(np.arange(n, dtype=np.int64), [int(c.sum()) for c in per_order])
    return okey, oord, osent, np.maximum(lens - 1, 0).astype(np.float64)


def _pair_hash(key: np.ndarray, grp: np.ndarray) -> np.ndarray:
    """64-bit hash of (group, n-gram key) pairs; for a fixed group a bijection of the key."""
    with np.errstate(over="ignore"):
        return _mix(key ^ (grp.astype(np.uint64) * _IMG_MULT))


def _group_sort(key: np.ndarray, grp: "np.ndarray | None" = None):
    """Order occurrences so that equal ``(grp, key)`` pairs (equal keys if ``grp`` is None) are
    contiguous, each run in increasing occurrence index.  Returns ``(perm, new, skey, low)``: the
    permutation, run-start flags, the sorted keys and the mask of the low bits of the sort hash.

    One ``np.sort`` of the sort hash (``key`` itself, or ``hash(grp, key)``) with the occurrence
    index packed into its low bits; runs whose hashes share the high bits (rare) are then put in
    exact order by a small lexsort.
    """
    num = len(key)
    bits = max(int(num).bit_length(), _MIN_LOW_BITS, 1)
    low = np.uint64((1 << bits) - 1)
    comp = key if grp is None else _pair_hash(key, grp)
    packed = (comp & ~low) | np.arange(num, dtype=np.uint64)
    packed.sort()
    perm = (packed & low).astype(np.int64)
    hi = packed & ~low
    skey = key[perm]
    sgrp = None if grp is None else grp[perm]

    def starts():
        new = np.empty(num, dtype=bool)
        new[0] = True
        new[1:] = skey[1:] != skey[:-1]
        if sgrp is not None:
            new[1:] |= sgrp[1:] != sgrp[:-1]
        return new

    if num == 0:
        return perm, np.zeros(0, dtype=bool), skey, low
    new = starts()
    clash = new[1:] & (hi[1:] == hi[:-1])
    if clash.any():  # distinct runs with equal high bits may interleave: sort those exactly
        pos = np.flatnonzero(np.isin(hi, hi[1:][clash]))
        cols = (perm[pos], skey[pos], hi[pos]) if sgrp is None else (perm[pos], sgrp[pos], skey[pos], hi[pos])
        perm[pos] = perm[pos][np.lexsort(cols)]
        skey[pos] = key[perm[pos]]
        if sgrp is not None:
            sgrp[pos] = grp[perm[pos]]
        new = starts()
    return perm, new, skey, low


class _KeyTable:
    """Open-addressing (linear probing) hash table uint64 key -> float64, vectorised with numpy.

    Key and value share one 16-byte row (one cache miss per probe); key 0 marks an empty row
    (a real key 0 is kept aside).
    """

    def __init__(self, keys: np.ndarray, vals: np.ndarray):
        zero = keys == 0
        self.zero_val = float(vals[zero][0]) if zero.any() else None
        keys, vals = keys[~zero], vals[~zero]
        bits = max(int(2 * len(keys)).bit_length(), 4)  # load factor <= 1/2
        self.mask = (1 << bits) - 1
        self.shift = np.uint64(64 - bits)
        self.rows = np.zeros((1 << bits, 2), dtype=np.uint64)  # [key, float64 bits of value]
        pending = np.arange(len(keys), dtype=np.int64)
        slot = (keys >> self.shift).astype(np.int64)
        while len(pending):
            free = self.rows[slot, 0] == 0
            s, first = np.unique(slot[free], return_index=True)  # one winner per free slot
            win = pending[free][first]
            self.rows[s, 0] = keys[win]
            self.rows[s, 1] = vals[win].view(np.uint64)
            lose = np.ones(len(pending), dtype=bool)
            lose[np.flatnonzero(free)[first]] = False
            pending = pending[lose]
            slot = (slot[lose] + 1) & self.mask

    def get(self, q: np.ndarray, default: float = 0.0) -> np.ndarray:
        out = np.full(len(q), default, dtype=np.float64)
        bits = out.view(np.uint64)
        active = np.arange(len(q), dtype=np.int64)
        slot = (q >> self.shift).astype(np.int64)
        qa = q
        while len(active):
            row = np.take(self.rows, slot, axis=0)  # (much faster than rows[slot] for 2-d rows)
            hit = row[:, 0] == qa
            bits[active[hit]] = row[hit, 1]
            more = ~hit & (row[:, 0] != 0)
            active, slot, qa = active[more], (slot[more] + 1) & self.mask, qa[more]
        if self.zero_val is not None:
            out[q == 0] = self.zero_val
        return out


class PreparedReferences:
    """Reference side of a CIDEr-D computation, prepared once by :meth:`CiderD.prepare_references`.

    Holds the tf-idf entries of every reference grouped by (image, n-gram), the reference norms
    and lengths; scoring candidates against it only touches the candidate side.
    """

    __slots__ = (
        "owner", "nref", "ref_ptr", "ref_norm", "ref_nbig",
        "g_comp", "g_img", "g_ptr", "e_slot", "e_w", "low",
    )

    def __len__(self) -> int:
        return len(self.nref)

    def __repr__(self) -> str:
        return f"PreparedReferences(images={len(self.nref)}, references={len(self.ref_nbig)}, entries={len(self.e_w)})"


class CiderD:
    """CIDEr-D scorer with document frequencies fixed from a reference corpus.

    >>> scorer = CiderD.from_corpus([["a dog runs", "a dog is running"], ["a cat"]])
    >>> scorer.score(["a dog runs"], [["a dog runs", "a dog is running"]])  # doctest: +SKIP

    Captions must already be tokenized (whitespace separated, e.g. with
    :func:`captioner.data.tokenizer.ptb_tokenize`).  Words and n-grams are identified by 64-bit
    hashes (collisions are astronomically unlikely but possible); :func:`compute_cider_d` is the
    exact reference.

    When the same references are scored repeatedly (self-critical training), prepare them once::

        refs = scorer.prepare_references(train_refs)      # list of reference lists, one per image
        rewards = scorer.score(samples, refs, index=image_idx)  # image of every sample
    """

    def __init__(self, df: Mapping[str, float], num_docs: int, n: int = 4, sigma: float = 6.0):
        if num_docs <= 0:
            raise ValueError("num_docs must be positive")
        self.n = int(n)
        self.sigma = float(sigma)
        self.num_docs = int(num_docs)
        self.ref_len = math.log(float(self.num_docs))
        self._df = dict(df)  # "w1 w2" -> document frequency
        grams = list(self._df)
        vals = np.fromiter(self._df.values(), dtype=np.float64, count=len(grams))
        wh, lens = _word_hashes(grams)
        keys, _ = _gram_keys(wh, lens, self.n)
        first = np.cumsum(lens) - lens
        ok = (lens >= 1) & (lens <= self.n)  # longer n-grams are never looked up
        gkeys = keys[lens[ok] - 1, first[ok]] if ok.any() else np.zeros(0, dtype=np.uint64)
        logs = np.log(np.maximum(1.0, vals[ok]))
        self._df_table = _KeyTable(gkeys, logs)  # random lookups
        order = np.argsort(gkeys, kind="stable")
        self._df_keys, self._df_logs = gkeys[order], logs[order]  # lookups of sorted keys
        self._token = object()  # identifies references prepared by this scorer

    # ---- construction / serialisation ----------------------------------
    @classmethod
    def from_corpus(cls, references: Iterable[Sequence[str]], n: int = 4, sigma: float = 6.0) -> "CiderD":
        """Document frequencies from ``references``: one list of tokenized captions per image."""
        df: dict[str, float] = defaultdict(float)
        num = 0
        for refs in references:
            num += 1
            seen = {" ".join(g) for r in refs for g in ngram_counts(r.split(), n)}
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

    # ---- scoring -------------------------------------------------------
    def _tfidf(self, sentences: Sequence[str], group_of_sentence: np.ndarray):
        """Distinct (sentence, n-gram) entries of ``sentences`` with their tf-idf weights, ordered
        so that entries of equal (group, n-gram) are contiguous (in sentence order)."""
        okey, oord, osent, nbig = _occurrences(sentences, self.n)
        perm, new_grp, _, low = _group_sort(okey, group_of_sentence[osent])
        ssent = osent[perm]
        new = new_grp.copy()
        new[1:] |= ssent[1:] != ssent[:-1]
        start = np.flatnonzero(new)
        tf = np.diff(np.append(start, len(perm)))
        first = perm[start]
        e_key, e_ord, e_sent = okey[first], oord[first], ssent[start]
        w = tf * (self.ref_len - self._df_table.get(e_key))
        norm = np.sqrt(
            np.bincount(e_sent * self.n + e_ord, weights=w * w, minlength=len(sentences) * self.n)
        ).reshape(len(sentences), self.n)
        return e_key, e_ord, e_sent, w, new_grp[start], low, norm, nbig

    def prepare_references(self, references: Sequence[Sequence[str]]) -> PreparedReferences:
        """Precompute the reference side for :meth:`score` (``references[i]``: the non-empty
        list of tokenized references of image ``i``).  Reusable for any number of calls."""
        nref = np.fromiter((len(r) for r in references), dtype=np.int64, count=len(references))
        if (nref == 0).any():
            raise ValueError(f"empty reference list for candidate(s) {np.nonzero(nref == 0)[0][:10].tolist()}")
        sentences = [r for rs in references for r in rs]
        img_of = np.repeat(np.arange(len(nref), dtype=np.int64), nref)
        e_key, _, e_sent, w, gstart, low, norm, nbig = self._tfidf(sentences, img_of)
        p = PreparedReferences()
        p.owner = self._token
        p.nref = nref
        p.ref_ptr = np.cumsum(nref) - nref
        p.ref_norm, p.ref_nbig = norm, nbig
        g_first = np.flatnonzero(gstart)
        p.g_ptr = np.append(g_first, len(e_key))
        e_img = img_of[e_sent]
        g_img = e_img[g_first]
        # groups are sorted by the high bits of their (image, n-gram) hash
        p.g_comp = _pair_hash(e_key[g_first], g_img)
        p.g_img = g_img.astype(np.int32)
        p.e_slot = (e_sent - p.ref_ptr[e_img]).astype(np.int32)
        p.e_w = w
        p.low = low
        return p

    @staticmethod
    def _find_groups(p: PreparedReferences, img: np.ndarray, key: np.ndarray) -> np.ndarray:
        """Index of the (image, n-gram) group of ``p`` for every query, -1 where there is none."""
        comp = _pair_hash(key, img)
        q = comp & ~p.low
        ng = len(p.g_comp)
        out = np.full(len(q), -1, dtype=np.int64)
        if ng == 0:
            return out
        # g_comp is sorted by its high bits only, which is all the binary search compares here
        # (every element before the run of q's high bits is < q, every later one >= q)
        pos = np.searchsorted(p.g_comp, q)
        active = np.arange(len(q), dtype=np.int64)
        while len(active):  # more than one step only where pairs share the high bits
            pc = np.minimum(pos, ng - 1)
            gc = p.g_comp[pc]
            same_hi = (pos < ng) & ((gc & ~p.low) == q[active])
            # for one image the pair hash is a bijection of the n-gram key: exact match
            hit = same_hi & (gc == comp[active]) & (p.g_img[pc] == img[active])
            out[active[hit]] = pc[hit]
            more = same_hi & ~hit
            active, pos = active[more], pos[more] + 1
        return out

    def _lookup_sorted(self, ukeys: np.ndarray) -> np.ndarray:
        """log(max(1, df)) of (mostly) sorted keys, 0 for n-grams unseen in the corpus."""
        if len(self._df_keys) == 0 or len(ukeys) == 0:
            return np.zeros(len(ukeys))
        j = np.minimum(np.searchsorted(self._df_keys, ukeys), len(self._df_keys) - 1)
        return np.where(self._df_keys[j] == ukeys, self._df_logs[j], 0.0)

    def score(
        self,
        candidates: Sequence[str],
        references: "Sequence[Sequence[str]] | PreparedReferences",
        index: "Sequence[int] | np.ndarray | None" = None,
    ) -> np.ndarray:
        """CIDEr-D of each candidate against its references (vectorised over the batch).

        ``candidates[i]`` is a tokenized caption; ``references`` is either a list with one
        non-empty list of tokenized captions per image or the result of
        :meth:`prepare_references` (prepared once, scored many times: then only the candidates
        are processed per call).  Candidate ``i`` is scored against the references of image
        ``index[i]`` (default: image ``i``, and then the numbers of candidates and images must
        match).  Returns a float64 array of shape ``(len(candidates),)``.
        """
        prepared = isinstance(references, PreparedReferences)
        if prepared and references.owner is not self._token:
            raise ValueError("these references were prepared by another CiderD scorer")
        m, nimg = len(candidates), len(references)
        if index is None:
            if m != nimg:
                raise ValueError(f"{m} candidates but {nimg} reference lists")
            img = np.arange(m, dtype=np.int64)
        else:
            img = np.asarray(index, dtype=np.int64).reshape(-1)
            if len(img) != m:
                raise ValueError(f"{m} candidates but {len(img)} indices")
            if m and (img.min() < 0 or img.max() >= nimg):
                raise ValueError(f"index out of range for {nimg} images")
        if prepared:
            nref = references.nref
        else:
            nref = np.fromiter((len(r) for r in references), dtype=np.int64, count=nimg)
            if (nref == 0).any():
                raise ValueError(f"empty reference list for candidate(s) {np.nonzero(nref == 0)[0][:10].tolist()}")
        if m == 0:
            return np.zeros(0, dtype=np.float64)
        nref_c = nref[img]
        row_off = np.cumsum(nref_c) - nref_c  # rows: (candidate, one reference of its image)
        row_cand = np.repeat(np.arange(m, dtype=np.int64), nref_c)
        if prepared:
            num, cn, rn, delta = self._rows_prepared(candidates, references, img, nref_c, row_off, row_cand)
        else:
            num, cn, rn, delta = self._rows_joint(candidates, references, img, nref_c, row_off, row_cand)
        ok = (cn != 0) & (rn != 0)
        val = np.where(ok, num / np.where(ok, cn * rn, 1.0), num)
        val = val * np.exp(-(delta**2) / (2 * self.sigma**2))[:, None]
        per_img = np.bincount(row_cand, weights=val.mean(axis=1), minlength=m)
        return per_img / nref_c * 10.0

    def _rows_joint(self, candidates, references, img, nref_c, row_off, row_cand):
        """Per (candidate, reference) row: clipped dot products per order, both norms and the
        length difference -- candidates and references processed together (one sort)."""
        n, m = self.n, len(candidates)
        sentences = []  # candidate j, then the references of its image
        for c, i in zip(candidates, img.tolist()):
            sentences.append(c)
            sentences.extend(references[i])
        nsent = len(sentences)
        slot = np.repeat(np.arange(m, dtype=np.int64), nref_c + 1)  # candidate of every sentence
        cand_sent = row_off + np.arange(m, dtype=np.int64)
        is_cand = np.zeros(nsent, dtype=bool)
        is_cand[cand_sent] = True

        okey, oord, osent, nbig = _occurrences(sentences, n)
        # sorted by n-gram, then sentence: within an n-gram its (candidate slot) groups are
        # contiguous, the candidate first, and (sentence, n-gram) entries are contiguous too
        perm, new_key, skey, _ = _group_sort(okey)
        ssent = osent[perm]
        new = new_key.copy()
        new[1:] |= ssent[1:] != ssent[:-1]
        start = np.flatnonzero(new)
        tf = np.diff(np.append(start, len(perm)))
        key_start = np.flatnonzero(new_key)
        key_id = np.cumsum(new_key)[start] - 1
        idf = self.ref_len - self._lookup_sorted(skey[key_start])
        e_w = tf * idf[key_id]
        e_ord = oord[perm[key_start]][key_id]
        e_sent = ssent[start]
        norm = np.sqrt(np.bincount(e_sent * n + e_ord, weights=e_w * e_w, minlength=nsent * n)).reshape(nsent, n)

        # (n-gram, candidate slot) groups: the candidate's weight meets its references' weights
        e_slot = slot[e_sent]
        new_grp = new_key[start]
        new_grp[1:] |= e_slot[1:] != e_slot[:-1]
        grp_id = np.cumsum(new_grp) - 1
        g_first = np.flatnonzero(new_grp)
        e_cand = is_cand[e_sent]
        g_cand = e_cand[g_first]
        r = np.flatnonzero(~e_cand & g_cand[grp_id])
        wr = e_w[r]
        wc = e_w[g_first][grp_id[r]]
        row = e_sent[r] - slot[e_sent[r]] - 1
        nrows = len(row_cand)
        num = np.bincount(row * n + e_ord[r], weights=np.minimum(wc, wr) * wr, minlength=nrows * n)
        ref_sent = np.arange(nrows, dtype=np.int64) + row_cand + 1
        c_rows = cand_sent[row_cand]
        return num.reshape(nrows, n), norm[c_rows], norm[ref_sent], nbig[c_rows] - nbig[ref_sent]

    def _rows_prepared(self, candidates, prep, img, nref_c, row_off, row_cand):
        """As :meth:`_rows_joint`, against references prepared by :meth:`prepare_references`."""
        n, m = self.n, len(candidates)
        nrows = len(row_cand)
        row_ref = prep.ref_ptr[img][row_cand] + np.arange(nrows, dtype=np.int64) - row_off[row_cand]
        c_key, c_ord, c_cand, c_w, _, _, c_norm, c_nbig = self._tfidf(candidates, np.arange(m, dtype=np.int64))
        # every candidate entry meets the reference entries of its (image, n-gram) group
        g = self._find_groups(prep, img[c_cand], c_key)
        hit = np.flatnonzero(g >= 0)
        gh = g[hit]
        g0 = prep.g_ptr[gh]
        cnt = prep.g_ptr[gh + 1] - g0
        before = np.cumsum(cnt) - cnt
        eidx = np.repeat(g0 - before, cnt) + np.arange(int(cnt.sum()), dtype=np.int64)
        src = np.repeat(hit, cnt)
        wr = prep.e_w[eidx]
        cell = (row_off[c_cand[src]] + prep.e_slot[eidx]) * n + c_ord[src]
        num = np.bincount(cell, weights=np.minimum(c_w[src], wr) * wr, minlength=nrows * n).reshape(nrows, n)
        return num, c_norm[row_cand], prep.ref_norm[row_ref], c_nbig[row_cand] - prep.ref_nbig[row_ref]
