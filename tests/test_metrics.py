"""Caption metrics: equality with pycocoevalcap (the oracle), hand-checked values, fast CIDEr-D."""

from __future__ import annotations

import json
import math
import random
import shutil
from pathlib import Path

import numpy as np
import pytest

from captioner.data.tokenizer import ptb_tokenize, tokenize_corpus
from captioner.metrics import (
    CiderD,
    compute_bleu,
    compute_cider_d,
    compute_rouge_l,
    evaluate_captions,
    load_coco_references,
    load_coco_results,
)

FIXTURE = Path(__file__).parent / "fixtures" / "metrics" / "corpus.json"
TOL = 1e-6

needs_java = pytest.mark.skipif(shutil.which("java") is None, reason="java not installed")


def _corpus():
    images = json.loads(FIXTURE.read_text(encoding="utf-8"))["images"]
    preds = {im["image_id"]: im["caption"] for im in images}
    refs = {im["image_id"]: im["references"] for im in images}
    return preds, refs


# --------------------------------------------------------------------------
# oracle: pycocoevalcap (Java tokenizer run once per batch, like COCOEvalCap)
# --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def oracle():
    pytest.importorskip("pycocoevalcap.tokenizer.ptbtokenizer")
    if shutil.which("java") is None:
        pytest.skip("java not installed")
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    preds, refs = _corpus()
    gts = PTBTokenizer().tokenize({k: [{"caption": c} for c in v] for k, v in refs.items()})
    res = PTBTokenizer().tokenize({k: [{"caption": preds[k]}] for k in refs})
    return preds, refs, gts, res


def test_fixture_covers_the_hard_cases():
    preds, refs = _corpus()
    assert len(preds) >= 40
    assert "" in preds.values()
    assert any(len(c.split()) == 1 for c in preds.values())
    assert {len(r) for r in refs.values()} == {1, 2, 3, 4, 5}
    text = " ".join(list(preds.values()) + [c for r in refs.values() for c in r])
    for needle in ["n't", "'s", "-and-", "3.5", "1,000", "(", '"', "é", "U.S.", "p.m.", "…" if "…" in text else "..."]:
        assert needle in text, needle


def test_tokenizer_matches_java_ptbtokenizer(oracle):
    preds, refs, gts, res = oracle
    assert tokenize_corpus(refs) == gts
    assert tokenize_corpus({k: [preds[k]] for k in refs}) == res
    # dict captions accepted like pycocoevalcap's input
    assert tokenize_corpus({k: [{"caption": c} for c in v] for k, v in refs.items()}) == gts


@needs_java
def test_tokenizer_matches_java_on_tricky_lines():
    pytest.importorskip("pycocoevalcap.tokenizer.ptbtokenizer")
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    lines = [
        "A man don't like it's dogs' bones.",
        "The black-and-white cat, on a 3.5 inch (small) table with 1,000 \"things\".",
        "Café über naïve 😀 emoji here",
        "a.m. U.S. at 5 p.m. in the U.S.",
        "Two   spaces\tand trailing period .",
        "I'm we're they've she'd we'll cannot gonna wanna gotta",
        "A {curly} [square] <angle> thing & AT&T",
        "Mr. Smith and Dr. Who vs. Jr. etc. e.g. i.e. st. Mt. no. 5",
        "He said -- \"hi\" ... ok… — – - !!! ?!",
        "'quoted' `back` '' “curly” ‘single’ don’t",
        "a/b and/or 24/7 x*y 1/2 ½ $5 £3 €4 100% #tag @user",
        "O'Neil rock'n'roll ma'am y'all o'clock 'twas '90s 90's",
        "the letter b. A dog",
        "mother-in-law's t-shirt x-ray 12-year-old 5pm 2x4",
        "ΩMEGA Привет 中文字 ★ ❤ © °",
        "",
        "one",
        "ends with the letter b.",
    ]
    expected = PTBTokenizer().tokenize({i: [{"caption": c}] for i, c in enumerate(lines)})
    assert tokenize_corpus({i: [c] for i, c in enumerate(lines)}) == expected
    # ptb_tokenize == a one-caption batch (last line of its file)
    assert ptb_tokenize(lines[-1]) == expected[len(lines) - 1][0].split()
    assert ptb_tokenize(lines[0]) == ["a", "man", "do", "n't", "like", "it", "'s", "dogs", "bones"]


def test_ptb_tokenize_known_outputs():
    assert ptb_tokenize("A black-and-white dog's toy, isn't it?") == [
        "a", "black-and-white", "dog", "'s", "toy", "is", "n't", "it"
    ]
    assert ptb_tokenize("It costs 3.5 or 1,000 (maybe).") == ["it", "costs", "3.5", "or", "1,000", "-lrb-", "maybe", "-rrb-"]
    assert ptb_tokenize("Line\nbreak  and   spaces") == ["line", "break", "and", "spaces"]
    assert ptb_tokenize("") == []
    assert ptb_tokenize("... ! ?") == []
    assert ptb_tokenize("wow!?") == ["wow", "!?"]  # "!?" is not in coco-caption's punctuation list


def test_bleu_rouge_cider_match_pycocoevalcap(oracle):
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    _, _, gts, res = oracle
    cands = {k: v[0] for k, v in res.items()}

    ref_b, ref_b_img = Bleu(4).compute_score(gts, res, verbose=0)
    b, b_img = compute_bleu(cands, gts)
    np.testing.assert_allclose(b, ref_b, atol=TOL, rtol=0)
    for j in range(4):
        np.testing.assert_allclose(b_img[j], ref_b_img[j], atol=TOL, rtol=0)

    ref_r, ref_r_img = Rouge().compute_score(gts, res)
    r, r_img = compute_rouge_l(cands, gts)
    assert abs(r - ref_r) < TOL
    np.testing.assert_allclose(r_img, ref_r_img, atol=TOL, rtol=0)

    ref_c, ref_c_img = Cider().compute_score(gts, res)
    c, c_img = compute_cider_d(cands, gts)
    assert abs(c - ref_c) < TOL
    np.testing.assert_allclose(c_img, ref_c_img, atol=TOL, rtol=0)

    fast = CiderD.from_corpus(gts.values()).score([cands[k] for k in gts], list(gts.values()))
    np.testing.assert_allclose(fast, ref_c_img, atol=TOL, rtol=0)


def test_evaluate_captions_matches_pycocoevalcap(oracle):
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    preds, refs, gts, res = oracle
    out = evaluate_captions(preds, refs, metrics=["bleu", "rouge_l", "cider"])
    b, _ = Bleu(4).compute_score(gts, res, verbose=0)
    expected = {f"Bleu_{i + 1}": b[i] for i in range(4)}
    expected["ROUGE_L"] = Rouge().compute_score(gts, res)[0]
    c, c_img = Cider().compute_score(gts, res)
    expected["CIDEr"] = c
    for k, v in expected.items():
        assert abs(out[k] - v) < TOL, k
    assert "METEOR" not in out and "SPICE" not in out
    assert set(out["per_image"]) == set(refs)
    for k, s in zip(gts, c_img):
        assert abs(out["per_image"][k]["CIDEr"] - s) < TOL
    # COCO-format inputs give the same result
    results_list = [{"image_id": k, "caption": v} for k, v in preds.items()]
    pairs = [(img, cap) for img, caps in refs.items() for cap in caps]
    coco_refs = {"annotations": [{"image_id": img, "id": i, "caption": cap} for i, (img, cap) in enumerate(pairs)]}
    out2 = evaluate_captions(results_list, coco_refs, metrics=["cider"])
    assert abs(out2["CIDEr"] - c) < TOL


@needs_java
def test_meteor_matches_pycocoevalcap(oracle):
    from pycocoevalcap.meteor.meteor import Meteor

    from captioner.metrics.java import java_metrics_status, meteor_score

    if java_metrics_status()["METEOR"] is not None:
        pytest.skip(java_metrics_status()["METEOR"])
    _, _, gts, res = oracle
    # each METEOR JVM spends ~15 s loading its paraphrase table: start the oracle's first so
    # that both load concurrently
    oracle_meteor = Meteor()
    m, m_img = meteor_score({k: v[0] for k, v in res.items()}, gts)
    ref, ref_img = oracle_meteor.compute_score(gts, res)
    assert abs(m - ref) < TOL
    np.testing.assert_allclose(m_img, ref_img, atol=TOL, rtol=0)


def test_java_metrics_skipped_with_reason(monkeypatch):
    from captioner.metrics import java

    monkeypatch.setattr(java.shutil, "which", lambda name: None)
    out = evaluate_captions({1: "a dog"}, {1: ["a dog runs"]}, metrics=["meteor", "spice", "bleu"])
    assert set(out["skipped"]) == {"METEOR", "SPICE"}
    assert "java" in out["skipped"]["METEOR"]
    assert "Bleu_4" in out and "METEOR" not in out


# --------------------------------------------------------------------------
# hand-checked values
# --------------------------------------------------------------------------
def test_identical_caption_scores_one():
    refs = {0: ["a man riding a horse on the beach"]}
    b, b_img = compute_bleu({0: refs[0][0]}, refs)
    assert all(abs(x - 1) < 1e-6 for x in b)
    assert all(abs(x[0] - 1) < 1e-6 for x in b_img)
    r, _ = compute_rouge_l({0: refs[0][0]}, refs)
    assert r == pytest.approx(1.0)


def test_bleu_by_hand():
    # clipped unigram precision 2/7, candidate longer than reference -> no brevity penalty
    b, _ = compute_bleu({0: "the the the the the the the"}, {0: ["the cat is on the mat"]})
    assert b[0] == pytest.approx(2 / 7, abs=1e-9)
    # short candidate: p1 = p2 = 1, brevity penalty exp(1 - 6/2)
    b, _ = compute_bleu({0: "the cat"}, {0: ["the cat is on the mat"]})
    assert b[0] == pytest.approx(math.exp(-2), abs=1e-9)
    assert b[1] == pytest.approx(math.exp(-2), abs=1e-9)
    # no trigram: p3 = tiny / small = 1e-6 (coco-caption smoothing), geometric mean of p1..p3
    assert b[2] == pytest.approx((1e-15 / 1e-9) ** (1 / 3) * math.exp(-2), rel=1e-6)
    # "closest" reference length, ties go to the shorter reference: len 4 vs refs of len 2 and 6 -> r = 2
    b, _ = compute_bleu({0: "a b c d"}, {0: ["a b", "a b c d e f"]})
    assert b[0] == pytest.approx(1.0, abs=1e-6)
    # corpus level sums statistics: 3 correct of 4 guessed unigrams; lengths 4 vs 2+2 refs -> BP 1
    b, _ = compute_bleu({0: "a b", 1: "x y"}, {0: ["a b"], 1: ["x z"]})
    assert b[0] == pytest.approx(3 / 4, abs=1e-6)


def test_rouge_by_hand():
    # LCS("a b c d", "a c e") = 2, P = 2/4, R = 2/3, F_beta with beta = 1.2
    p, r, beta2 = 0.5, 2 / 3, 1.2**2
    f = (1 + beta2) * p * r / (r + beta2 * p)
    score, per = compute_rouge_l({0: "a b c d"}, {0: ["a c e", "z"]})
    assert score == pytest.approx(f, abs=1e-12)
    assert compute_rouge_l({0: ""}, {0: ["a b"]})[0] == 0.0


def test_cider_by_hand():
    # two images -> log(N) = log 2; all n-grams have df = 1 -> weight log 2.
    # image 0: identical 2-word captions -> cos = 1 for n = 1, 2 and 0 for n = 3, 4 -> 10 * 2/4 = 5
    refs = {0: ["a b"], 1: ["e f"]}
    score, per = compute_cider_d({0: "a b", 1: "c d"}, refs)
    np.testing.assert_allclose(per, [5.0, 0.0], atol=1e-12)
    assert score == pytest.approx(2.5)
    fast = CiderD.from_corpus(refs.values()).score(["a b", "c d"], list(refs.values()))
    np.testing.assert_allclose(fast, [5.0, 0.0], atol=1e-12)
    # a single image: log(1) = 0 -> every weight is 0 (coco-caption convention)
    assert compute_cider_d({0: "a b"}, {0: ["a b"]})[0] == 0.0


# --------------------------------------------------------------------------
# fast CIDEr-D
# --------------------------------------------------------------------------
def _random_caption(rng, vocab, lo=0, hi=14):
    return " ".join(rng.choice(vocab) for _ in range(rng.randint(lo, hi)))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fast_cider_equals_plain(seed):
    rng = random.Random(seed)
    vocab = [f"w{i}" for i in range(25)]
    refs = [[_random_caption(rng, vocab, 1) for _ in range(rng.randint(1, 5))] for _ in range(60)]
    cands = [_random_caption(rng, vocab + ["unseen", "zz"]) for _ in range(60)]
    plain_mean, plain = compute_cider_d(dict(enumerate(cands)), dict(enumerate(refs)))
    scorer = CiderD.from_corpus(refs)
    fast = scorer.score(cands, refs)
    np.testing.assert_allclose(fast, plain, atol=1e-9, rtol=0)
    # JSON round trip keeps the scores
    again = CiderD.from_dict(json.loads(json.dumps(scorer.to_dict())))
    np.testing.assert_allclose(again.score(cands, refs), plain, atol=1e-9, rtol=0)
    # batches can be scored in pieces with the same precomputed df
    np.testing.assert_allclose(scorer.score(cands[:7], refs[:7]), fast[:7], atol=1e-12)


def test_fast_cider_prepared_references_and_index():
    rng = random.Random(5)
    vocab = [f"w{i}" for i in range(20)]
    refs = [[_random_caption(rng, vocab, 1) for _ in range(rng.randint(1, 5))] for _ in range(40)]
    cands = [_random_caption(rng, vocab + ["unseen"]) for _ in range(40)]
    scorer = CiderD.from_corpus(refs)
    _, plain = compute_cider_d(dict(enumerate(cands)), dict(enumerate(refs)))
    prepared = scorer.prepare_references(refs)
    assert len(prepared) == 40
    for _ in range(2):  # prepared once, scored repeatedly
        np.testing.assert_allclose(scorer.score(cands, prepared), plain, atol=1e-9, rtol=0)
    # self-critical style: several samples per image, images in any order, repeated
    index = np.array([3, 3, 0, 39, 3, 17, 0])
    samples = [cands[i] for i in index[:4]] + ["w1 w2 w3", cands[17], ""]
    got = scorer.score(samples, prepared, index=index)
    want = scorer.score(samples, [refs[i] for i in index])
    np.testing.assert_allclose(got, want, atol=1e-12, rtol=0)
    np.testing.assert_allclose(got[[0, 1, 2, 3, 5]], plain[[3, 3, 0, 39, 17]], atol=1e-9, rtol=0)
    assert got[6] == 0.0
    np.testing.assert_allclose(scorer.score(samples, refs, index=index), got, atol=1e-12, rtol=0)
    with pytest.raises(ValueError, match="another"):
        CiderD.from_corpus(refs).score(cands, prepared)
    with pytest.raises(ValueError):
        scorer.score(cands[:3], prepared)
    with pytest.raises(ValueError):
        scorer.score(["a"], prepared, index=[40])
    with pytest.raises(ValueError):
        scorer.score(["a", "b"], prepared, index=[1])


def test_fast_cider_tokenisation_edge_cases():
    # str.split() semantics: tabs/newlines, ASCII separators \x1c-\x1f, Unicode spaces; long
    # words that differ only after 8 or 16 bytes; NUL is not whitespace; non-ASCII words
    refs = [
        ["abcdefghX one\ttwo", "abcdefghijklmnopQ  one two\n", "caf\u00e9 \u00fcber\u00a0x"],
        ["a\x00 b", "a b\x1cc", "  "],
        ["x\u3000y z", "\u65e5\u672c \u8a9e", "abcdefghijklmnopqrstuvwxyz0123456789 q"],
    ]
    cands = ["abcdefghY one two", "a b c", "x y z"]
    _, plain = compute_cider_d(dict(enumerate(cands)), dict(enumerate(refs)))
    scorer = CiderD.from_corpus(refs)
    np.testing.assert_allclose(scorer.score(cands, refs), plain, atol=1e-9, rtol=0)
    cands2 = ["abcdefghX one two", "a\x00 b", "\u65e5\u672c \u8a9e"]
    _, plain2 = compute_cider_d(dict(enumerate(cands2)), dict(enumerate(refs)))
    np.testing.assert_allclose(scorer.score(cands2, refs), plain2, atol=1e-9, rtol=0)
    assert plain2[0] > 0 and plain2[1] > 0 and plain2[2] > 0


def test_fast_cider_hash_prefix_clashes(monkeypatch):
    # force the (image, n-gram) hash prefixes used for grouping to clash: still exact
    from captioner.metrics import cider

    rng = random.Random(7)
    vocab = [f"w{i}" for i in range(12)]
    refs = [[_random_caption(rng, vocab, 1) for _ in range(rng.randint(1, 4))] for _ in range(30)]
    cands = [_random_caption(rng, vocab) for _ in range(30)]
    _, plain = compute_cider_d(dict(enumerate(cands)), dict(enumerate(refs)))
    scorer = CiderD.from_corpus(refs)
    monkeypatch.setattr(cider, "_MIN_LOW_BITS", 61)
    np.testing.assert_allclose(scorer.score(cands, refs), plain, atol=1e-9, rtol=0)
    prepared = scorer.prepare_references(refs)
    np.testing.assert_allclose(scorer.score(cands, prepared), plain, atol=1e-9, rtol=0)


def test_fast_cider_validation():
    scorer = CiderD.from_corpus([["a b"], ["c d"]])
    with pytest.raises(ValueError):
        scorer.score(["a"], [["a"], ["b"]])
    with pytest.raises(ValueError):
        scorer.score(["a"], [[]])
    assert scorer.score([], []).shape == (0,)
    with pytest.raises(ValueError):
        CiderD.from_dict({"nope": 1})


# --------------------------------------------------------------------------
# input validation / loaders
# --------------------------------------------------------------------------
def test_evaluate_captions_id_mismatch():
    with pytest.raises(ValueError, match=r"no prediction: \[2\]"):
        evaluate_captions({1: "a dog"}, {1: ["a dog"], 2: ["a cat"]}, metrics=["bleu"])
    with pytest.raises(ValueError, match=r"no references: \[3\]"):
        evaluate_captions({1: "a dog", 3: "x"}, {1: ["a dog"]}, metrics=["bleu"])
    with pytest.raises(ValueError, match="unknown metric"):
        evaluate_captions({1: "a dog"}, {1: ["a dog"]}, metrics=["bogus"])


def test_loaders(tmp_path):
    res = tmp_path / "res.json"
    res.write_text(json.dumps([{"image_id": 1, "caption": "A dog."}, {"image_id": 2, "caption": "a cat"}]))
    assert load_coco_results(res) == {1: "A dog.", 2: "a cat"}
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps({"annotations": [{"image_id": 1, "caption": "x"}, {"image_id": 1, "caption": "y"}]}))
    assert load_coco_references(ann) == {1: ["x", "y"]}

    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_coco_results(bad)
    bad.write_text(json.dumps({"image_id": 1}))
    with pytest.raises(ValueError, match="JSON list"):
        load_coco_results(bad)
    bad.write_text(json.dumps([{"image_id": 1}]))
    with pytest.raises(ValueError, match="caption"):
        load_coco_results(bad)
    bad.write_text(json.dumps({"annotations": [{"caption": "x"}]}))
    with pytest.raises(ValueError, match="annotation 0"):
        load_coco_references(bad)
    with pytest.raises(FileNotFoundError):
        load_coco_references(tmp_path / "missing.json")
