"""CIDEr-D speed: pycocoevalcap's Cider vs captioner's plain and fast (CiderD) implementations.

Synthetic but realistic corpus: 5,000 images x 5 references, 8-15 word captions drawn
from a 3,000-word vocabulary with Zipf-like frequencies, per-image "topic" words so
references of an image overlap; candidates are noisy copies of a reference.

``CiderD.score`` is timed twice: *cold* (reference lists passed as they are, so every call
also tokenises and weights the references) and *warm* (references prepared once with
``CiderD.prepare_references``, as a self-critical training loop would, then only the sampled
candidates are processed per call).  Run it on a quiet machine, e.g.

    OMP_NUM_THREADS=1 python -m benchmarks.timing.bench_cider [--images 5000] [--refs 5] [--repeat 3]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from captioner.metrics.cider import CiderD, compute_cider_d


def make_corpus(n_images: int, n_refs: int, vocab_size: int = 3000, seed: int = 0):
    rng = np.random.default_rng(seed)
    vocab = np.array([f"w{i}" for i in range(vocab_size)])
    p = 1.0 / np.arange(1, vocab_size + 1) ** 1.1
    p /= p.sum()
    refs, cands = {}, {}
    for img in range(n_images):
        topic = rng.choice(vocab_size, size=6, replace=False, p=p)
        caps = []
        for _ in range(n_refs):
            n = int(rng.integers(8, 16))
            words = rng.choice(vocab_size, size=n, p=p)
            mask = rng.random(n) < 0.35
            words[mask] = rng.choice(topic, size=int(mask.sum()))
            caps.append(" ".join(vocab[words]))
        refs[img] = caps
        base = caps[int(rng.integers(n_refs))].split()
        keep = [w for w in base if rng.random() > 0.2]
        if rng.random() < 0.5:
            keep.insert(int(rng.integers(len(keep) + 1)), str(vocab[rng.choice(vocab_size, p=p)]))
        cands[img] = " ".join(keep)
    return cands, refs


def best_of(fn, repeat):
    """Best wall-clock and best CPU (process) time over ``repeat`` runs, the median wall-clock
    time, and the last result."""
    walls, cpus, out = [], [], None
    for _ in range(repeat):
        t, c = time.perf_counter(), time.process_time()
        out = fn()
        walls.append(time.perf_counter() - t)
        cpus.append(time.process_time() - c)
    return (min(walls), min(cpus), float(np.median(walls))), out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=5000)
    ap.add_argument("--refs", type=int, default=5)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()

    cands, refs = make_corpus(args.images, args.refs)
    ids = list(refs)
    cand_list = [cands[k] for k in ids]
    ref_list = [refs[k] for k in ids]
    rows = []

    try:
        from pycocoevalcap.cider.cider import Cider

        gts = {k: refs[k] for k in ids}
        res = {k: [cands[k]] for k in ids}
        t_ref, (ref_mean, ref_scores) = best_of(lambda: Cider().compute_score(gts, res), args.repeat)
        rows.append(("pycocoevalcap Cider().compute_score", t_ref, float(ref_mean)))
    except ImportError:
        t_ref, ref_scores = None, None

    t_plain, (plain_mean, plain_scores) = best_of(lambda: compute_cider_d(cands, refs), args.repeat)
    rows.append(("captioner compute_cider_d (plain)", t_plain, plain_mean))
    t_df, scorer = best_of(lambda: CiderD.from_corpus(ref_list), 1)
    rows.append(("captioner CiderD.from_corpus (once)", t_df, float("nan")))
    t_fast, fast_scores = best_of(lambda: scorer.score(cand_list, ref_list), args.repeat)
    rows.append(("captioner CiderD.score (cold: ref lists)", t_fast, float(fast_scores.mean())))
    t_prep, prepared = best_of(lambda: scorer.prepare_references(ref_list), 1)
    rows.append(("captioner CiderD.prepare_references (once)", t_prep, float("nan")))
    t_warm, warm_scores = best_of(lambda: scorer.score(cand_list, prepared), args.repeat)
    rows.append(("captioner CiderD.score (warm: prepared)", t_warm, float(warm_scores.mean())))

    print(f"CIDEr-D on {args.images} images x {args.refs} refs (best of {args.repeat}; wall and CPU seconds)")
    print(
        f"{'implementation':44s} {'wall s':>8s} {'cpu s':>8s} {'median s':>8s} {'CIDEr-D':>10s} "
        f"{'speed-up (wall/cpu)':>20s}"
    )
    for name, (w, c, med), score in rows:
        ratio = f"{t_ref[0] / w:8.1f}x /{t_ref[1] / c:6.1f}x" if t_ref else "n/a"
        print(f"{name:44s} {w:8.3f} {c:8.3f} {med:8.3f} {score:10.6f} {ratio:>20s}")
    ref_cmp = ref_scores if ref_scores is not None else plain_scores
    print(f"max |fast cold - reference| per image: {np.max(np.abs(fast_scores - ref_cmp)):.2e}")
    print(f"max |fast warm - reference| per image: {np.max(np.abs(warm_scores - ref_cmp)):.2e}")
    print(f"max |plain - reference| per image: {np.max(np.abs(plain_scores - ref_cmp)):.2e}")
    if t_ref:
        for label, t in (("cold", t_fast), ("warm", t_warm)):
            print(
                f"speed-up of CiderD.score ({label}) over pycocoevalcap: {t_ref[0] / t[0]:.1f}x wall, "
                f"{t_ref[1] / t[1]:.1f}x CPU (best of {args.repeat}); {t_ref[2] / t[2]:.1f}x wall (medians)"
            )


if __name__ == "__main__":
    main()
