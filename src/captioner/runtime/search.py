"""Greedy and batched beam search in numpy over an exported decoder step.

The same algorithm as ``captioner.decoding`` (written there over torch tensors), step for
step, in float32, so an exported model ranks its captions as the torch model does:
<pad>/<start>/<unk> are never generated, <end> not before ``min_length`` words, a beam that
emits <end> stays with its score frozen (or retires, keeping its slot, with ``retire_finished``),
the GNMT length penalty ranks the beams, and when no beam ends the unfinished ones are returned
as they are.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

State = dict  # graph value name → array, batch on dim 0


@dataclass
class DecodingConfig:
    start_id: int
    end_id: int
    pad_id: int = 0
    banned_ids: tuple[int, ...] = ()
    max_length: int = 20
    min_length: int = 1
    retire_finished: bool = False  # as captioner.decoding.DecodingConfig


@dataclass
class Hypothesis:
    """One caption: word ids (no markers), summed log-probability, ranking score."""

    tokens: list[int]
    log_prob: float
    score: float


class StepDecoder(Protocol):
    vocab_size: int
    static: frozenset

    def init_state(self, pooled: np.ndarray, grid: np.ndarray | None) -> State: ...

    def step(self, tokens: np.ndarray, state: State, step: int) -> tuple[np.ndarray, State]: ...


def _prepare(log_probs: np.ndarray, config: DecodingConfig, step: int) -> np.ndarray:
    """Step log-probs with banned tokens (and <end> before ``min_length`` words) at -inf."""
    log_probs = np.array(log_probs, dtype=np.float32)  # a copy: the masks below write into it
    if config.banned_ids:
        log_probs[:, list(config.banned_ids)] = -np.inf
    if step < config.min_length:
        log_probs[:, config.end_id] = -np.inf
    return log_probs


def _strip(ids: list[int], config: DecodingConfig) -> list[int]:
    # Up to <end>: the <pad>s after it are filler. A <pad> before it was generated (only where
    # <pad> is not banned: a model imported from code that allowed it) and stays, as there.
    out = []
    for i in ids:
        if i == config.end_id:
            break
        out.append(i)
    return out


def _top(values: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` largest entries of each row, largest first (ties: lower index first)."""
    return np.argsort(-values, axis=-1, kind="stable")[:, :k]


def greedy(decoder: StepDecoder, pooled: np.ndarray, grid: np.ndarray | None,
           config: DecodingConfig) -> list[list[Hypothesis]]:
    """The most likely word at each step; one hypothesis per image."""
    batch = pooled.shape[0]
    state = decoder.init_state(pooled, grid)
    tokens = np.full(batch, config.start_id, dtype=np.int64)
    finished = np.zeros(batch, dtype=bool)
    total = np.zeros(batch, dtype=np.float32)
    rows = np.arange(batch)
    words = []
    for step in range(config.max_length):
        log_probs, state = decoder.step(tokens, state, step)
        log_probs = _prepare(log_probs, config, step)  # (batch, vocab)
        tokens = log_probs.argmax(axis=-1)
        chosen = log_probs[rows, tokens]
        total += np.where(finished, np.float32(0.0), chosen)
        words.append(np.where(finished, config.pad_id, tokens))
        finished |= tokens == config.end_id
        if finished.all():
            break
    sequences = np.stack(words, axis=1).tolist()  # (batch, steps)
    return [[Hypothesis(_strip(sequences[i], config), float(total[i]), float(total[i]))] for i in range(batch)]


def _length_penalty(lengths: np.ndarray, alpha: float) -> np.ndarray:
    """GNMT length penalty ((5 + length) / 6) ** alpha; alpha = 0 ranks by log-probability."""
    return ((np.float32(5.0) + lengths.astype(np.float32)) / np.float32(6.0)) ** np.float32(alpha)


def _ban_repeated_ngrams(log_probs: np.ndarray, sequences: np.ndarray, n: int) -> None:
    """Set -inf where a token would repeat an n-gram already in that row's sequence."""
    if n <= 0 or sequences.shape[1] < n:
        return
    windows = np.lib.stride_tricks.sliding_window_view(sequences, n, axis=1)  # (rows, windows, n)
    prefix = sequences[:, sequences.shape[1] - (n - 1):]  # (rows, n - 1)
    matches = (windows[:, :, :-1] == prefix[:, None, :]).all(axis=-1)  # (rows, windows)
    rows, columns = np.nonzero(matches)
    log_probs[rows, windows[rows, columns, -1]] = -np.inf


def beam_search(decoder: StepDecoder, pooled: np.ndarray, grid: np.ndarray | None, config: DecodingConfig,
                beam_size: int = 3, n_best: int = 1, length_penalty: float = 0.0,
                no_repeat_ngram_size: int = 0) -> list[list[Hypothesis]]:
    """Batched beam search; ``n_best`` hypotheses per image, best first."""
    if n_best > beam_size:
        raise ValueError(f"n_best ({n_best}) cannot exceed beam_size ({beam_size})")
    batch, k, vocab = pooled.shape[0], beam_size, decoder.vocab_size
    state = {name: np.repeat(value, k, axis=0) for name, value in decoder.init_state(pooled, grid).items()}
    tokens = np.full(batch * k, config.start_id, dtype=np.int64)
    scores = np.zeros((batch, k), dtype=np.float32)
    scores[:, 1:] = -np.inf  # all beams start identical: keep one until the first step
    finished = np.zeros(batch * k, dtype=bool)
    lengths = np.zeros(batch * k, dtype=np.int64)
    sequences = np.empty((batch * k, 0), dtype=np.int64)
    offsets = (np.arange(batch) * k)[:, None]  # (batch, 1)
    for step in range(config.max_length):
        log_probs, state = decoder.step(tokens, state, step)
        log_probs = _prepare(log_probs, config, step)  # (batch*k, vocab)
        _ban_repeated_ngrams(log_probs, sequences, no_repeat_ngram_size)
        # A finished beam can only continue with <pad>, at no cost: its score is frozen.
        log_probs[finished] = -np.inf
        log_probs[finished, config.pad_id] = 0.0
        candidate_lengths = np.where(finished, lengths, lengths + 1)
        raw = scores.reshape(-1, 1) + log_probs  # (batch*k, vocab)
        ranked = raw / _length_penalty(candidate_lengths, length_penalty)[:, None]
        if config.retire_finished:
            ranked[finished, config.pad_id] = np.inf  # a retired beam keeps its slot
        ranked = ranked.reshape(batch, k * vocab)
        top = _top(ranked, k)  # (batch, k)
        source = (top // vocab + offsets).reshape(-1)  # the old beam each new beam extends, flat
        scores = np.take_along_axis(raw.reshape(batch, k * vocab), top, axis=1)
        was_finished = finished[source]
        lengths = np.where(was_finished, lengths[source], lengths[source] + 1)
        tokens = (top % vocab).reshape(-1)
        finished = was_finished | (tokens == config.end_id)
        sequences = np.concatenate([sequences[source], tokens[:, None]], axis=1)
        state = {name: value if name in decoder.static else value[source] for name, value in state.items()}
        if finished.all():
            break
    final = scores / _length_penalty(lengths, length_penalty).reshape(batch, k)
    order = _top(final, k)  # (batch, k)
    if config.retire_finished:  # finished first, each group best first (a stable sort keeps that order)
        unfinished = np.take_along_axis(~finished.reshape(batch, k), order, axis=1)
        order = np.take_along_axis(order, np.argsort(unfinished, axis=1, kind="stable"), axis=1)
    order = order[:, :n_best]  # (batch, n_best)
    sequences = sequences.tolist()
    return [
        [Hypothesis(_strip(sequences[i * k + j], config), float(scores[i, j]), float(final[i, j])) for j in order[i]]
        for i in range(batch)
    ]
