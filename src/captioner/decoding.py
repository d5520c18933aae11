"""Greedy, beam search and sampling, written once over the decoder ``init_state`` / ``step``
interface, batched over images (and beams), for every decoder."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch

from .decoders.base import Decoder, Features, State
from .errors import InvalidInputError


@dataclass
class Hypothesis:
    """One generated caption: word ids (no markers), its summed log-probability, the
    ranking score (log-probability after the length penalty), per-word attention, and the
    log-probability of each chosen word (``<end>`` last, when the caption ended)."""

    tokens: list[int]
    log_prob: float
    score: float
    attention: Optional[torch.Tensor] = None  # (words, regions)
    token_log_probs: list[float] = field(default_factory=list)


@dataclass
class DecodingConfig:
    start_id: int
    end_id: int
    pad_id: int = 0
    banned_ids: tuple[int, ...] = ()  # never generated (<pad>, <start>, optionally <unk>)
    max_length: int = 20
    min_length: int = 1  # words before <end> may be chosen: no empty captions
    # Beam search: a beam that emits <end> retires with its caption and the beam shrinks, the
    # finished captions ranking before unfinished ones (the Show, Attend and Tell tutorial's
    # search), instead of staying to compete for a slot with its score frozen.
    retire_finished: bool = False

    def __post_init__(self):
        if self.max_length < 1:
            raise InvalidInputError(f"max_length must be at least 1 word, got {self.max_length}")


def _prepare(log_probs: torch.Tensor, config: DecodingConfig, step: int) -> torch.Tensor:
    """Step log-probs with banned tokens (and <end> before ``min_length`` words) at -inf."""
    log_probs = _ban(log_probs.float(), config.banned_ids)
    if step < config.min_length:
        log_probs[:, config.end_id] = float("-inf")
    return log_probs


def _map_state(state: State, fn, skip: tuple[str, ...] = ()) -> State:
    def apply(value):
        if isinstance(value, torch.Tensor):
            return fn(value)
        if isinstance(value, (list, tuple)):
            return type(value)(apply(v) for v in value)
        if isinstance(value, dict):
            return {k: apply(v) for k, v in value.items()}
        return value

    return {k: (v if k in skip else apply(v)) for k, v in state.items()}


def expand_state(state: State, times: int) -> State:
    """Repeat each image's state ``times`` times along dim 0 (image-major)."""
    return _map_state(state, lambda t: t.repeat_interleave(times, dim=0))


def reorder_state(state: State, index: torch.Tensor, static: tuple[str, ...] = ()) -> State:
    return _map_state(state, lambda t: t.index_select(0, index), skip=static)


def _ban(log_probs: torch.Tensor, ids: tuple[int, ...]) -> torch.Tensor:
    if ids:
        log_probs[:, list(ids)] = float("-inf")
    return log_probs


def _attention_of(state: State) -> Optional[torch.Tensor]:
    return state.get("attention")


def _one_per_image(decoder: Decoder, features: Features, config: DecodingConfig, choose) -> list[list[Hypothesis]]:
    """The left-to-right loop greedy search and sampling share: ``choose(log_probs)`` picks
    one token per image at each step."""
    batch = features.pooled.shape[0]
    device = features.pooled.device
    state = decoder.init_state(features)
    tokens = torch.full((batch,), config.start_id, dtype=torch.long, device=device)
    finished = torch.zeros(batch, dtype=torch.bool, device=device)
    total = torch.zeros(batch, device=device)
    words, attentions, chosen_log_probs = [], [], []
    for step in range(config.max_length):
        log_probs, state = decoder.step(tokens, state)  # (batch, vocab)
        log_probs = _prepare(log_probs, config, step)
        tokens = choose(log_probs)  # (batch,)
        chosen = log_probs.gather(1, tokens[:, None])[:, 0]
        total += torch.where(finished, torch.zeros_like(chosen), chosen)
        chosen_log_probs.append(chosen)
        words.append(torch.where(finished, torch.full_like(tokens, config.pad_id), tokens))
        if _attention_of(state) is not None:
            attentions.append(_attention_of(state))
        finished |= tokens == config.end_id
        if finished.all():
            break
    words = torch.stack(words, 1).tolist()  # (batch, steps)
    chosen_log_probs = torch.stack(chosen_log_probs, 1).tolist()  # (batch, steps)
    attention = torch.stack(attentions, 1) if attentions else None  # (batch, steps, regions)
    results = []
    for i in range(batch):
        sequence = _strip(words[i], config)
        att = attention[i, : len(sequence)].cpu() if attention is not None else None
        word_log_probs = chosen_log_probs[i][: _scored_steps(words[i], sequence, config)]
        results.append([Hypothesis(sequence, float(total[i]), float(total[i]), att, word_log_probs)])
    return results


@torch.no_grad()
def greedy(decoder: Decoder, features: Features, config: DecodingConfig) -> list[list[Hypothesis]]:
    """Pick the most likely word at each step; one hypothesis per image."""
    return _one_per_image(decoder, features, config, lambda log_probs: log_probs.argmax(dim=-1))


def _strip(ids: list[int], config: DecodingConfig) -> list[int]:
    # Up to <end>: the <pad>s after it are filler. A <pad> before it was generated (only where
    # <pad> is not banned: a model imported from code that allowed it) and stays, as there.
    out = []
    for i in ids:
        if i == config.end_id:
            break
        out.append(i)
    return out


def _scored_steps(ids: list[int], words: list[int], config: DecodingConfig) -> int:
    """How many steps of ``ids`` the caption ``words`` used: its words, plus ``<end>`` if it ended."""
    ended = len(ids) > len(words) and ids[len(words)] == config.end_id
    return len(words) + int(ended)


def _length_penalty(lengths: torch.Tensor, alpha: float) -> torch.Tensor:
    """GNMT length penalty ((5 + length) / 6) ** alpha; alpha = 0 ranks by log-probability."""
    return ((5.0 + lengths.float()) / 6.0) ** alpha


def _banned_by_ngrams(sequences: torch.Tensor, n: int) -> torch.Tensor | None:
    """Mask (rows, vocab-independent) of (row, token) pairs that would repeat an n-gram.

    Returns a (rows, steps) tensor of token ids to ban, -1 where nothing is banned.
    """
    if n <= 0 or sequences.shape[1] < n:
        return None
    windows = sequences.unfold(1, n, 1)  # (rows, steps - n + 1, n)
    prefix = sequences[:, -(n - 1):] if n > 1 else sequences[:, :0]  # (rows, n - 1)
    matches = (windows[:, :, :-1] == prefix[:, None, :]).all(dim=-1)  # (rows, windows)
    return torch.where(matches, windows[:, :, -1], torch.full_like(windows[:, :, -1], -1))


@torch.no_grad()
def beam_search(
    decoder: Decoder,
    features: Features,
    config: DecodingConfig,
    beam_size: int = 3,
    n_best: int = 1,
    length_penalty: float = 0.0,
    no_repeat_ngram_size: int = 0,
) -> list[list[Hypothesis]]:
    """Batched beam search; ``n_best`` hypotheses per image, best first.

    Beams that emit ``<end>`` stay in the beam with their score frozen, competing with the
    live ones on length-penalised score; the search stops when every beam has ended or at
    ``max_length`` — then unfinished beams are returned as they are, so every image gets a
    caption even when ``<end>`` never wins. With ``config.retire_finished`` a beam that ends
    keeps its slot and only the live beams compete for the others (k shrinks, as the Show,
    Attend and Tell tutorial's search), and finished captions rank before unfinished ones
    (the tutorial fails when none finished; here the unfinished ones are returned).
    """
    if beam_size < 1:
        raise InvalidInputError(f"beam_size must be at least 1 (1 = greedy), got {beam_size}")
    if n_best > beam_size:
        raise InvalidInputError(f"n_best ({n_best}) cannot exceed beam_size ({beam_size})")
    batch, k = features.pooled.shape[0], beam_size
    device = features.pooled.device
    state = expand_state(decoder.init_state(features), k)
    vocab = decoder.vocab_size
    tokens = torch.full((batch * k,), config.start_id, dtype=torch.long, device=device)
    scores = torch.zeros(batch, k, device=device)
    scores[:, 1:] = float("-inf")  # all beams start identical: keep one until the first step
    finished = torch.zeros(batch * k, dtype=torch.bool, device=device)
    lengths = torch.zeros(batch * k, dtype=torch.long, device=device)
    sequences = torch.empty(batch * k, 0, dtype=torch.long, device=device)
    sequence_log_probs = torch.empty(batch * k, 0, device=device)  # each chosen word's log-prob
    attention = None
    offsets = (torch.arange(batch, device=device) * k)[:, None]  # (batch, 1)
    for step in range(config.max_length):
        log_probs, state = decoder.step(tokens, state)  # (batch*k, vocab)
        log_probs = _prepare(log_probs, config, step)
        banned = _banned_by_ngrams(sequences, no_repeat_ngram_size)
        if banned is not None:
            rows = torch.arange(banned.shape[0], device=device)[:, None].expand_as(banned)
            keep = banned >= 0
            log_probs[rows[keep], banned[keep]] = float("-inf")
        # A finished beam can only continue with <pad>, at no cost: its score is frozen.
        log_probs[finished] = float("-inf")
        log_probs[finished, config.pad_id] = 0.0
        candidate_lengths = torch.where(finished, lengths, lengths + 1)  # (batch*k,)
        raw = scores.view(-1, 1) + log_probs  # (batch*k, vocab)
        ranked = raw / _length_penalty(candidate_lengths, length_penalty)[:, None]
        if config.retire_finished:
            ranked[finished, config.pad_id] = float("inf")  # a retired beam keeps its slot
        ranked = ranked.view(batch, k * vocab)
        top_ranked, top = ranked.topk(k, dim=-1)  # (batch, k)
        beam = top // vocab  # which old beam each new beam extends
        word = top % vocab
        source = (beam + offsets).view(-1)  # (batch*k,) rows in the flat beam layout
        scores = raw.view(batch, k * vocab).gather(1, top)
        word_log_probs = log_probs.view(batch, k * vocab).gather(1, top).view(-1, 1)  # (batch*k, 1)
        was_finished = finished[source]
        lengths = torch.where(was_finished, lengths[source], lengths[source] + 1)
        tokens = word.view(-1)
        finished = was_finished | (tokens == config.end_id)
        sequences = torch.cat([sequences[source], tokens[:, None]], dim=1)
        sequence_log_probs = torch.cat([sequence_log_probs[source], word_log_probs], dim=1)
        state = reorder_state(state, source, decoder.static_state)
        step_attention = _attention_of(state)
        if step_attention is not None:
            step_attention = step_attention[:, None]  # (batch*k, 1, regions)
            attention = step_attention if attention is None else torch.cat([attention[source], step_attention], 1)
        if finished.all():
            break
    final = scores / _length_penalty(lengths, length_penalty).view(batch, k)
    order = final.argsort(dim=-1, descending=True)  # (batch, k)
    if config.retire_finished:  # finished first, each group best first (a stable sort keeps that order)
        unfinished = (~finished).view(batch, k).gather(1, order)
        order = order.gather(1, unfinished.int().argsort(dim=-1, stable=True))
    order = order[:, :n_best]  # (batch, n_best)
    sequences, scores_list, final_list = sequences.tolist(), scores.tolist(), final.tolist()
    sequence_log_probs = sequence_log_probs.tolist()
    results = []
    for i in range(batch):
        hypotheses = []
        for j in order[i].tolist():
            row = i * k + j
            words = _strip(sequences[row], config)
            att = attention[row, : len(words)].cpu() if attention is not None else None
            word_log_probs = sequence_log_probs[row][: _scored_steps(sequences[row], words, config)]
            hypotheses.append(Hypothesis(words, scores_list[i][j], final_list[i][j], att, word_log_probs))
        results.append(hypotheses)
    return results


@torch.no_grad()
def sample(
    decoder: Decoder,
    features: Features,
    config: DecodingConfig,
    temperature: float = 1.0,
    top_k: int = 0,
    generator: torch.Generator | None = None,
) -> list[list[Hypothesis]]:
    """Draw one caption per image from the model's distribution (temperature, top-k)."""

    def choose(log_probs: torch.Tensor) -> torch.Tensor:
        logits = log_probs / temperature
        if top_k > 0:
            threshold = logits.topk(top_k, dim=-1).values[:, -1:]
            logits = logits.masked_fill(logits < threshold, float("-inf"))
        return torch.multinomial(logits.softmax(-1), 1, generator=generator)[:, 0]

    return _one_per_image(decoder, features, config, choose)
