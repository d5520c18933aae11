"""Greedy and beam search over the step interface, on a real (randomly initialised) decoder."""
from __future__ import annotations

import numpy as np
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


class _BigramPieces:
    """A numpy step decoder whose next piece depends on the last one (and <end> on the length):
    it likes to write "cat" as ▁ca + t, twice, then stop."""

    vocab_size, static_state = 8, ()
    #   ids: 0 <pad> 1 <start> 2 <end> 3 <unk> 4 ▁the 5 ▁ca 6 t 7 ▁dog
    LIKES = {1: {5: 0.9, 4: 0.1}, 4: {5: 0.9, 7: 0.1}, 5: {6: 0.9, 7: 0.1},
             6: {5: 0.7, 6: 0.2, 7: 0.1}, 7: {5: 0.5, 6: 0.5}}

    def init_state(self, features):
        return {"steps": np.zeros(features.pooled.shape[0], dtype=np.int64)}

    def step(self, tokens, state):
        table = np.full((8, 8), 1e-6)
        for previous, likes in self.LIKES.items():
            for token, p in likes.items():
                table[previous, token] = p
        table[:, 2] = np.where(state["steps"][0] >= 4, 5.0, 1e-3)  # <end> once four pieces are written
        log_probs = np.log(table / table.sum(1, keepdims=True))[tokens].astype(np.float32)
        return log_probs, {"steps": state["steps"] + 1}


def _words(tokens, starts):
    words = []
    for t in tokens:
        if starts[t] or not words:
            words.append([t])
        else:
            words[-1].append(t)
    return [tuple(w) for w in words]


def test_no_repeat_counts_words_of_a_subword_vocabulary():
    import numpy as np

    starts = (True, True, True, True, True, True, False, True)
    config = DecodingConfig(start_id=1, end_id=2, pad_id=0, banned_ids=(0, 1, 3), max_length=8, word_starts=starts)
    features = Features(np.zeros((1, 4), dtype=np.float32))
    free = beam_search(_BigramPieces(), features, config, beam_size=3)[0][0].tokens
    assert _words(free, starts).count((5, 6)) >= 2  # without the rule: "cat cat …"
    for n in (1, 2):
        for hypothesis in beam_search(_BigramPieces(), features, config, beam_size=3, n_best=3,
                                      no_repeat_ngram_size=n)[0]:
            words = _words(hypothesis.tokens, starts)
            grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
            assert len(grams) == len(set(grams)), (n, words)
