"""Greedy and beam search over the step interface, on a real (randomly initialised) decoder."""
from __future__ import annotations

import pytest
import torch

from captioner.decoders import Features, create_decoder
from captioner.decoding import DecodingConfig, beam_search, greedy, sample

VOCAB = 12
CONFIG = DecodingConfig(start_id=1, end_id=2, pad_id=0, banned_ids=(0, 1), max_length=8)


@pytest.fixture(scope="module")
def decoder():
    torch.manual_seed(0)
    dec = create_decoder("show-tell", vocab_size=VOCAB, pooled_dim=16, embed_dim=8, hidden_dim=16).eval()
    with torch.no_grad():  # sharper distributions than random init, so captions vary by image
        dec.head.weight.mul_(8)
    return dec


@pytest.fixture(scope="module")
def features():
    torch.manual_seed(1)
    return Features(torch.randn(5, 16))


def test_beam_one_equals_greedy(decoder, features):
    g = greedy(decoder, features, CONFIG)
    b = beam_search(decoder, features, CONFIG, beam_size=1)
    assert [h[0].tokens for h in g] == [h[0].tokens for h in b]
    for gh, bh in zip(g, b):
        assert gh[0].log_prob == pytest.approx(bh[0].log_prob, abs=1e-5)


def test_n_best_is_sorted_and_scores_are_real_log_probs(decoder, features):
    results = beam_search(decoder, features, CONFIG, beam_size=4, n_best=4)
    for hypotheses in results:
        assert len(hypotheses) == 4
        scores = [h.score for h in hypotheses]
        assert scores == sorted(scores, reverse=True)
        best = hypotheses[0]
        # Recompute the log-probability of the best caption with teacher forcing.
        tokens = torch.tensor([[CONFIG.start_id] + best.tokens])
        targets = best.tokens + ([CONFIG.end_id] if len(best.tokens) < CONFIG.max_length else [])
        i = results.index(hypotheses)
        logits = decoder(Features(features.pooled[i : i + 1]), tokens).logits[0]
        log_probs = logits.log_softmax(-1)
        total = sum(log_probs[t, w].item() for t, w in enumerate(targets))
        assert best.log_prob == pytest.approx(total, abs=1e-4)


def test_beam_search_beats_or_ties_greedy(decoder, features):
    g = greedy(decoder, features, CONFIG)
    b = beam_search(decoder, features, CONFIG, beam_size=5)
    for gh, bh in zip(g, b):
        assert bh[0].log_prob >= gh[0].log_prob - 1e-5


def test_batched_equals_one_by_one(decoder, features):
    batched = beam_search(decoder, features, CONFIG, beam_size=3, n_best=2)
    for i in range(features.pooled.shape[0]):
        single = beam_search(decoder, Features(features.pooled[i : i + 1]), CONFIG, beam_size=3, n_best=2)[0]
        assert [h.tokens for h in single] == [h.tokens for h in batched[i]]
        assert [round(h.score, 4) for h in single] == [round(h.score, 4) for h in batched[i]]


def test_returns_a_caption_when_end_never_wins(decoder, features):
    config = DecodingConfig(start_id=1, end_id=2, pad_id=0, banned_ids=(0, 1, 2), max_length=6)  # <end> banned
    for results in (greedy(decoder, features, config), beam_search(decoder, features, config, beam_size=3, n_best=3)):
        for hypotheses in results:
            assert all(len(h.tokens) == 6 for h in hypotheses)


def test_no_repeat_ngram_and_length_penalty(decoder, features):
    results = beam_search(decoder, features, CONFIG, beam_size=3, no_repeat_ngram_size=1)
    for hypotheses in results:
        tokens = hypotheses[0].tokens
        assert len(tokens) == len(set(tokens))
    long = beam_search(decoder, features, CONFIG, beam_size=4, length_penalty=2.0)
    short = beam_search(decoder, features, CONFIG, beam_size=4, length_penalty=0.0)
    assert sum(len(h[0].tokens) for h in long) >= sum(len(h[0].tokens) for h in short)
    with pytest.raises(ValueError, match="n_best"):
        beam_search(decoder, features, CONFIG, beam_size=2, n_best=3)


def test_sampling_is_seeded(decoder, features):
    a = sample(decoder, features, CONFIG, generator=torch.Generator().manual_seed(3))
    b = sample(decoder, features, CONFIG, generator=torch.Generator().manual_seed(3))
    assert [h[0].tokens for h in a] == [h[0].tokens for h in b]
