"""Greedy, beam search and sampling, written once over the decoder ``init_state`` / ``step``
interface, batched over images (and beams), for every decoder — and for both engines.

The arrays are torch tensors when a :class:`~captioner.model.Captioner` decodes, numpy arrays
when an exported model does (:mod:`captioner.exported`, whose decoder steps are ONNX graphs).
The search is written over the Python array API standard (``array-api-compat`` gives torch
and numpy one namespace), plus the three operations the standard lacks (top-k, put along an
axis, a categorical draw) in :class:`_Engine`; so an exported model ranks its captions
exactly as the torch model does. Nothing here imports torch.

What the search does, for every decoder and engine: ``<pad>``/``<start>``/``<unk>`` are never
generated, ``<end>`` not before ``min_length`` words; a beam that emits ``<end>`` stays with
its score frozen, competing on length-penalised score (GNMT penalty); when no beam ends the
unfinished ones are returned as they are, so every image gets a caption. The loops check
whether every caption has ended only every few steps on an accelerator (a check is a host
sync); the extra steps leave ended captions unchanged.
"""
from __future__ import annotations

import functools
import math
from contextlib import nullcontext
from dataclasses import dataclass, field, fields, replace
from typing import Any, NamedTuple, Optional, Protocol, Sequence

import numpy as np
from array_api_compat import array_namespace, device as array_device, is_torch_array

from .errors import InvalidInputError

# A caption longer than this is no caption: it bounds decoding time and memory whatever a
# user, a request or a model folder asks for.
MAX_DECODE_LENGTH = 512
# On an accelerator, "has every caption ended?" is asked this often (each answer waits for the
# device); on the CPU at every step.
DEVICE_CHECK_EVERY = 4


class Features(NamedTuple):
    """What a decoder reads: the pooled image feature, the region grid for attention and, for a
    decoder that reads them (``retrieved_shape``), the captions of each image's nearest datastore
    images (:func:`captioner.retrieval.with_retrieved`); decoders ignore what they do not read."""

    pooled: Any  # (batch, pooled_dim)
    grid: Any = None  # (batch, regions, grid_dim), when the decoder needs it
    grid_shape: Optional[tuple[int, int]] = None  # (h, w) with h * w == regions, when known
    retrieved: Any = None  # (batch, neighbours, length) int64 token ids, <pad> after each caption's <end>
    untuned: Any = None  # (batch, untuned_dim): for the confidence, not decoders (``EncoderOutput.untuned``)


State = dict  # name → array with the batch on dim 0 (or a list of them, or a non-array constant)


class StepDecoder(Protocol):
    """What decoding needs of a decoder: a torch ``Decoder`` or an exported one."""

    vocab_size: int
    static_state: tuple[str, ...] | frozenset  # state keys holding per-image constants (never reordered)

    def init_state(self, features: Features) -> State: ...

    def step(self, tokens, state: State) -> tuple[Any, State]: ...


@dataclass(frozen=True)
class DecodeOptions:
    """How to decode, defined once: the CLI, the server, batch captioning, the Python API and
    the exported runtime all take this value (and its defaults).

    ``beam_size`` 1 with ``n_best`` 1 and no beam options is greedy search. ``length_penalty``
    is the GNMT alpha (0 ranks by log-probability); ``no_repeat_ngram_size`` n bans any n-gram
    a caption already holds; ``max_length`` caps the words (``None``: the model's own limit).
    ``sample=True`` draws one caption per image from the model's distribution instead
    (``temperature``, ``top_k``: 0 = the whole vocabulary). ``language``: which of the
    model's languages to caption in — its vocabulary's, or one its datastore translates into
    (:func:`captioner.captions.model_languages`; ``None``: its first; a model of one language
    needs none). ``retrieval``: rerank with the model's datastore when it has one
    (:mod:`captioner.retrieval`).
    """

    beam_size: int = 3
    n_best: int = 1
    length_penalty: float = 0.0
    no_repeat_ngram_size: int = 0
    max_length: Optional[int] = None
    sample: bool = False
    temperature: float = 1.0
    top_k: int = 0
    language: Optional[str] = None
    retrieval: bool = True

    def __post_init__(self):
        for name in ("beam_size", "n_best", "no_repeat_ngram_size", "top_k"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise InvalidInputError(f"{name} must be a whole number, got {value!r}")
        if self.beam_size < 1:
            raise InvalidInputError(f"beam_size must be at least 1 (1 = greedy), got {self.beam_size}")
        if not 1 <= self.n_best <= self.beam_size:
            raise InvalidInputError(f"n_best ({self.n_best}) must be between 1 and beam_size ({self.beam_size})")
        if self.no_repeat_ngram_size < 0 or self.top_k < 0:
            raise InvalidInputError("no_repeat_ngram_size and top_k must not be negative")
        if self.max_length is not None and (
            isinstance(self.max_length, bool) or not isinstance(self.max_length, int)
            or not 1 <= self.max_length <= MAX_DECODE_LENGTH
        ):
            raise InvalidInputError(f"max_length must be a whole number of words from 1 to {MAX_DECODE_LENGTH}, "
                                    f"got {self.max_length!r}")
        for name in ("length_penalty", "temperature"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise InvalidInputError(f"{name} must be a finite number, got {value!r}")
        if self.temperature <= 0:
            raise InvalidInputError(f"temperature must be positive, got {self.temperature}")
        for name in ("sample", "retrieval"):
            if not isinstance(getattr(self, name), bool):
                raise InvalidInputError(f"{name} must be true or false, got {getattr(self, name)!r}")
        if self.sample and self.n_best > 1:
            raise InvalidInputError("sampling draws one caption per image: n_best must be 1")
        if self.language is not None and not isinstance(self.language, str):
            raise InvalidInputError(f"language must be a language code such as 'de', got {self.language!r}")

    @classmethod
    def of(cls, options: Optional["DecodeOptions"] = None, **changes) -> "DecodeOptions":
        """``options`` (default: the defaults) with ``changes``; an unknown name is an error."""
        unknown = sorted(set(changes) - {f.name for f in fields(cls)})
        if unknown:
            known = ", ".join(f.name for f in fields(cls))
            raise InvalidInputError(f"unknown decoding option(s) {', '.join(unknown)}; known: {known}")
        return replace(options or cls(), **changes)

    @property
    def is_greedy(self) -> bool:
        return (not self.sample and self.beam_size == 1 and self.n_best == 1 and self.length_penalty == 0
                and self.no_repeat_ngram_size == 0)


@dataclass
class Hypothesis:
    """One generated caption: word ids (no markers), its summed log-probability, the ranking
    score (log-probability after the length penalty), per-word attention (on the host), and
    the log-probability of each chosen word (``<end>`` last, when the caption ended)."""

    tokens: list[int]
    log_prob: float
    score: float
    attention: Any = None  # (words, regions)
    token_log_probs: list[float] = field(default_factory=list)


@dataclass
class DecodingConfig:
    """A model's vocabulary ids and length limits, which decoding obeys."""

    start_id: int
    end_id: int
    pad_id: int = 0
    banned_ids: tuple[int, ...] = ()  # never generated (<pad>, <start>, optionally <unk>, language tokens)
    max_length: int = 20
    min_length: int = 1  # words before <end> may be chosen: no empty captions
    prefix_ids: tuple[int, ...] = ()  # fed after <start>, unscored and uncounted: a language token
    # Per id, whether the token starts a word (a subword vocabulary); None: every token is a word.
    # No-repeat counts words, so a repeated word of several pieces is caught too.
    word_starts: Optional[tuple[bool, ...]] = None
    # Beam search: a beam that emits <end> retires with its caption and the beam shrinks, the
    # finished captions ranking before unfinished ones (the Show, Attend and Tell tutorial's
    # search), instead of staying to compete for a slot with its score frozen.
    retire_finished: bool = False

    def __post_init__(self):
        if not 1 <= self.max_length <= MAX_DECODE_LENGTH:
            raise InvalidInputError(f"max_length must be at least 1 word (at most {MAX_DECODE_LENGTH}), "
                                    f"got {self.max_length}")


@dataclass(frozen=True)
class DecodingRules:
    """What decoding may generate for a model, recorded in its config.json (``"decoding"``).

    The defaults are captioner's own: ``<pad>``, ``<start>`` and ``<unk>`` are never
    generated and a caption has at least one word (``min_length``); a beam that ends competes
    on. A model imported from other code (``captioner.importers``) records that code's rules,
    so it captions as it did there: the seed's greedy ``sample()`` bans nothing, and the Show,
    Attend and Tell tutorial's beam search also retires finished beams (``retire_finished``,
    see ``decoding.DecodingConfig``).
    """

    banned_tokens: tuple[str, ...] = ("<pad>", "<start>", "<unk>")
    min_length: int = 1
    retire_finished: bool = False

    def __post_init__(self):
        if not isinstance(self.banned_tokens, (list, tuple)) or not all(isinstance(t, str) for t in self.banned_tokens):
            raise InvalidInputError(f"decoding.banned_tokens must be a list of tokens, got {self.banned_tokens!r}")
        object.__setattr__(self, "banned_tokens", tuple(self.banned_tokens))
        if isinstance(self.min_length, bool) or not isinstance(self.min_length, int) or self.min_length < 0:
            raise InvalidInputError(f"decoding.min_length must be a whole number of words, got {self.min_length!r}")
        if not isinstance(self.retire_finished, bool):
            raise InvalidInputError(f"decoding.retire_finished must be true or false, got {self.retire_finished!r}")



def decoding_config_of(vocab, max_length: int, language: Optional[str] = None,
                       rules: Optional[DecodingRules] = None) -> DecodingConfig:
    """The decoding ids and limits of a model with this vocabulary, captioning in ``language``
    under its ``rules``: the rules' banned tokens (captioner's: ``<pad>``, ``<start>``,
    ``<unk>``) and every language token are never generated; the language's token (a
    multilingual vocabulary's) is fed first; word boundaries of a subword vocabulary let
    no-repeat count words. Raises for a language the vocabulary does not know."""
    rules = rules or DecodingRules()
    language_token = vocab.language_token_id(language)
    starts = tuple(vocab.word_starts)
    return DecodingConfig(
        start_id=vocab.start_id, end_id=vocab.end_id, pad_id=vocab.pad_id,
        banned_ids=(*(vocab.stoi[t] for t in rules.banned_tokens), *vocab.language_ids.values()),
        max_length=max_length, min_length=rules.min_length, retire_finished=rules.retire_finished,
        prefix_ids=() if language_token is None else (language_token,),
        word_starts=None if all(starts) else starts,
    )


def host_array(values) -> np.ndarray:
    """Features (a torch tensor on any device, or a numpy array) as a float32 numpy array."""
    if hasattr(values, "detach"):  # torch: leave the graph and the device
        values = values.detach().float().cpu().numpy()
    return np.asarray(values, dtype=np.float32)


# --- the engine-specific operations --------------------------------------------------------
class _Engine:
    """The array namespace of one decoding call, its device, and the operations the array API
    standard lacks, for torch tensors and numpy arrays."""

    def __init__(self, like):
        self.xp = array_namespace(like)
        self.device = array_device(like)
        self.torch = is_torch_array(like)
        self.check_every = DEVICE_CHECK_EVERY if self.torch and like.device.type != "cpu" else 1

    def constant(self, values: np.ndarray):
        """A host array as an array of this engine, on its device."""
        return self.xp.asarray(values, device=self.device)

    def topk(self, values, k: int):
        """The ``k`` largest entries of each row, largest first: (values, indices)."""
        if self.torch:
            return values.topk(k, dim=-1)
        order = np.argsort(-values, axis=-1, kind="stable")[:, :k]  # ties: the lower index first
        return np.take_along_axis(values, order, axis=-1), order

    def put_along_rows(self, values, indices, value):
        """A copy of ``values`` (rows, columns) with ``value`` (a number, or an array shaped like
        ``indices``) at each row's ``indices``."""
        if self.torch:
            return values.scatter(1, indices, value)
        out = values.copy()
        np.put_along_axis(out, indices, value, axis=1)
        return out

    def draw(self, probabilities, generator):
        """One index per row, drawn from each row's categorical distribution."""
        if self.torch:
            import torch

            return torch.multinomial(probabilities, 1, generator=generator)[:, 0]
        rng = generator if generator is not None else np.random.default_rng()
        cumulative = np.cumsum(probabilities, axis=-1)
        threshold = rng.random((len(probabilities), 1)) * cumulative[:, -1:]
        return (cumulative > threshold).argmax(axis=-1)

    def to_host(self, value):
        return value.cpu() if self.torch else value


class _Masks:
    """Per-call additive masks over the vocabulary: the banned ids, ``<end>`` before
    ``min_length``, and the one continuation of an ended beam (``<pad>``, at no cost)."""

    def __init__(self, engine: _Engine, config: DecodingConfig, vocab_size: int):
        banned = np.zeros(vocab_size, dtype=np.float32)
        banned[list(config.banned_ids)] = -np.inf
        early_end = banned.copy()
        early_end[config.end_id] = -np.inf
        ended = np.full(vocab_size, -np.inf, dtype=np.float32)
        ended[config.pad_id] = 0.0
        self.banned, self.early_end, self.ended = (engine.constant(a) for a in (banned, early_end, ended))
        self.xp, self.min_length = engine.xp, config.min_length

    def prepare(self, log_probs, step: int):
        """Step log-probs in float32 with banned tokens (and <end> before ``min_length`` words) at -inf."""
        return self.xp.astype(log_probs, self.xp.float32) + (self.early_end if step < self.min_length else self.banned)


def _feed_prefix(decoder: StepDecoder, state: State, engine: "_Engine", rows: int, config: DecodingConfig):
    """Feed ``<start>`` and the forced ``prefix_ids`` (unscored); returns the state and the
    tokens the search starts from."""
    xp = engine.xp
    tokens = xp.full((rows,), config.start_id, dtype=xp.int64, device=engine.device)
    for forced in config.prefix_ids:
        _, state = decoder.step(tokens, state)
        tokens = xp.full((rows,), forced, dtype=xp.int64, device=engine.device)
    return state, tokens


def _map_state(state: State, fn, skip=()) -> State:
    def apply(value):
        if isinstance(value, (list, tuple)):
            return type(value)(apply(v) for v in value)
        if isinstance(value, dict):
            return {k: apply(v) for k, v in value.items()}
        return fn(value) if hasattr(value, "shape") else value  # constants (a step counter) stay

    return {k: (v if k in skip else apply(v)) for k, v in state.items()}


def expand_state(state: State, times: int) -> State:
    """Repeat each image's state ``times`` times along dim 0 (image-major)."""
    return _map_state(state, lambda a: array_namespace(a).repeat(a, times, axis=0))


def reorder_state(state: State, index, static=()) -> State:
    """The state rows ``index`` picks, except the ``static`` keys (per-image constants)."""
    return _map_state(state, lambda a: array_namespace(a).take(a, index, axis=0), skip=static)


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


def _without_gradients(search):
    """Run ``search`` under ``torch.no_grad()`` when it decodes torch tensors."""

    @functools.wraps(search)
    def run(decoder, features, *args, **kwargs):
        if is_torch_array(features.pooled):
            import torch

            context = torch.no_grad()
        else:
            context = nullcontext()
        with context:
            return search(decoder, features, *args, **kwargs)

    return run


# --- one caption per image: greedy and sampling ------------------------------------------
@_without_gradients
def _one_per_image(decoder: StepDecoder, features: Features, config: DecodingConfig, choose) -> list[list[Hypothesis]]:
    """The left-to-right loop greedy search and sampling share: ``choose(engine, log_probs)``
    picks one token per image at each step."""
    engine = _Engine(features.pooled)
    xp = engine.xp
    masks = _Masks(engine, config, decoder.vocab_size)
    batch = features.pooled.shape[0]
    state, tokens = _feed_prefix(decoder, decoder.init_state(features), engine, batch, config)
    finished = xp.zeros((batch,), dtype=xp.bool, device=engine.device)
    total = xp.zeros((batch,), dtype=xp.float32, device=engine.device)
    words, attentions, chosen_log_probs = [], [], []
    for step in range(config.max_length):
        log_probs, state = decoder.step(tokens, state)  # (batch, vocab)
        log_probs = masks.prepare(log_probs, step)
        tokens = choose(engine, log_probs)  # (batch,)
        chosen = xp.take_along_axis(log_probs, tokens[:, None], axis=1)[:, 0]
        total = total + xp.where(finished, xp.zeros_like(chosen), chosen)
        chosen_log_probs.append(chosen)
        words.append(xp.where(finished, xp.full_like(tokens, config.pad_id), tokens))
        if state.get("attention") is not None:
            attentions.append(state["attention"])
        finished = finished | (tokens == config.end_id)
        if (step + 1) % engine.check_every == 0 and xp.all(finished):
            break
    sequences = xp.stack(words, axis=1).tolist()  # (batch, steps)
    chosen_log_probs = xp.stack(chosen_log_probs, axis=1).tolist()  # (batch, steps)
    totals = total.tolist()
    attention = xp.stack(attentions, axis=1) if attentions else None  # (batch, steps, regions)
    results = []
    for i in range(batch):
        sequence = _strip(sequences[i], config)
        att = engine.to_host(attention[i, : len(sequence)]) if attention is not None else None
        word_log_probs = chosen_log_probs[i][: _scored_steps(sequences[i], sequence, config)]
        results.append([Hypothesis(sequence, totals[i], totals[i], att, word_log_probs)])
    return results


def greedy(decoder: StepDecoder, features: Features, config: DecodingConfig) -> list[list[Hypothesis]]:
    """Pick the most likely word at each step; one hypothesis per image."""
    return _one_per_image(decoder, features, config, lambda engine, log_probs: engine.xp.argmax(log_probs, axis=-1))


def sample(decoder: StepDecoder, features: Features, config: DecodingConfig, temperature: float = 1.0,
           top_k: int = 0, generator=None) -> list[list[Hypothesis]]:
    """Draw one caption per image from the model's distribution (``temperature``, ``top_k``:
    0 = every word). ``generator``: a ``torch.Generator`` (torch) or ``numpy.random.Generator``."""

    def choose(engine: _Engine, log_probs):
        xp = engine.xp
        logits = log_probs / temperature
        if top_k > 0:
            threshold = engine.topk(logits, top_k)[0][:, -1:]
            logits = xp.where(logits < threshold, xp.full_like(logits, -math.inf), logits)
        probabilities = xp.exp(logits - xp.max(logits, axis=-1, keepdims=True))
        return engine.draw(probabilities / xp.sum(probabilities, axis=-1, keepdims=True), generator)

    return _one_per_image(decoder, features, config, choose)


# --- beam search ---------------------------------------------------------------------------
def _length_penalty(xp, lengths, alpha: float):
    """GNMT length penalty ((5 + length) / 6) ** alpha; alpha = 0 ranks by log-probability."""
    return ((5.0 + xp.astype(lengths, xp.float32)) / 6.0) ** alpha


def _ban_repeated_ngrams(engine: _Engine, log_probs, sequences, n: int):
    """``log_probs`` with -inf where a token would repeat an n-gram already in its row."""
    xp, length = engine.xp, sequences.shape[1]
    if n <= 0 or length < n:
        return log_probs
    rows, vocab = log_probs.shape
    windows = xp.stack([sequences[:, i : length - n + 1 + i] for i in range(n)], axis=-1)  # (rows, windows, n)
    prefix = sequences[:, length - n + 1 :]  # (rows, n - 1): what the next token would complete
    matches = xp.all(windows[:, :, :-1] == prefix[:, None, :], axis=-1)  # (rows, windows)
    # Banned token per window, or a spare column past the vocabulary where nothing is banned.
    banned = xp.where(matches, windows[:, :, -1], xp.full_like(windows[:, :, -1], vocab))
    spare = xp.zeros((rows, 1), dtype=log_probs.dtype, device=engine.device)
    return engine.put_along_rows(xp.concat([log_probs, spare], axis=1), banned, -math.inf)[:, :vocab]


class _Words:
    """The words of each beam of a subword vocabulary, as hashes: the completed ones (``done``,
    ``count`` per row) and the one being written (``current``). No-repeat checks whole words:
    ending the current word — a token that starts a word, or ``<end>`` — is banned when it
    would complete an n-gram of words the caption already holds."""

    PRIME = 1_000_003

    def __init__(self, engine: _Engine, config: DecodingConfig, rows: int):
        self.engine, xp = engine, engine.xp
        self.starts = engine.constant(np.asarray(config.word_starts, dtype=bool))  # (vocab,)
        self.ends_word = self.starts | engine.constant(np.arange(len(config.word_starts)) == config.end_id)
        self.end_id, self.pad_id = config.end_id, config.pad_id
        self.done = xp.zeros((rows, config.max_length + 1), dtype=xp.int64, device=engine.device)
        self.count = xp.zeros((rows,), dtype=xp.int64, device=engine.device)
        self.current = xp.zeros((rows,), dtype=xp.int64, device=engine.device)  # 0: no word begun

    def ban_repeats(self, log_probs, n: int):
        xp = self.engine.xp
        width = self.done.shape[1]
        if n - 1 > width:
            return log_probs
        # The n-gram that ending the current word would complete: the last n-1 done words + it.
        offsets = xp.reshape(self.count, (-1, 1)) - (n - 1) + xp.reshape(
            self.engine.constant(np.arange(n - 1, dtype=np.int64)), (1, -1))  # (rows, n-1)
        earlier = xp.take_along_axis(self.done, xp.clip(offsets, 0, width - 1), axis=1)
        gram = xp.concat([earlier, self.current[:, None]], axis=1)  # (rows, n)
        # Every n-gram of done words, valid where it lies within each row's count.
        windows = xp.stack([self.done[:, i : width - n + 1 + i] for i in range(n)], axis=-1)  # (rows, W, n)
        starts = self.engine.constant(np.arange(width - n + 1, dtype=np.int64))
        valid = starts[None, :] + n <= self.count[:, None]
        repeat = xp.any(xp.all(windows == gram[:, None, :], axis=-1) & valid, axis=-1)
        repeat = repeat & (self.count >= n - 1) & (self.current != 0)
        return xp.where(repeat[:, None] & self.ends_word[None, :], xp.full_like(log_probs, -math.inf), log_probs)

    def advance(self, source, tokens):
        """After a step: the rows follow their beams (``source``), then take ``tokens``."""
        xp = self.engine.xp
        self.done, self.count, self.current = (xp.take(a, source, axis=0) for a in (self.done, self.count,
                                                                                     self.current))
        # <end> ends the caption's last word; the <pad> of an ended beam changes nothing.
        ending = xp.take(self.ends_word, tokens, axis=0) & (self.current != 0) & (tokens != self.pad_id)
        slot = xp.clip(self.count, 0, self.done.shape[1] - 1)[:, None]
        written = xp.where(ending, self.current, xp.take_along_axis(self.done, slot, axis=1)[:, 0])
        self.done = self.engine.put_along_rows(self.done, slot, written[:, None])
        self.count = self.count + xp.astype(ending, xp.int64)
        begins = xp.take(self.starts, tokens, axis=0)
        closed = (tokens == self.end_id) | (tokens == self.pad_id)
        self.current = xp.where(closed, xp.zeros_like(self.current),
                                xp.where(begins, tokens + 1, self.current * self.PRIME + tokens + 1))


@_without_gradients
def beam_search(decoder: StepDecoder, features: Features, config: DecodingConfig, beam_size: int, n_best: int = 1,
                length_penalty: float = 0.0, no_repeat_ngram_size: int = 0) -> list[list[Hypothesis]]:
    """Batched beam search; ``n_best`` hypotheses per image, best first (see the module docstring)."""
    DecodeOptions(beam_size=beam_size, n_best=n_best, length_penalty=length_penalty,
                  no_repeat_ngram_size=no_repeat_ngram_size)  # validates
    engine = _Engine(features.pooled)
    xp = engine.xp
    masks = _Masks(engine, config, decoder.vocab_size)
    batch, k, vocab = features.pooled.shape[0], beam_size, decoder.vocab_size
    state, tokens = _feed_prefix(decoder, expand_state(decoder.init_state(features), k), engine, batch * k, config)
    words = _Words(engine, config, batch * k) if no_repeat_ngram_size and config.word_starts is not None else None
    # All beams start identical: keep one until the first step.
    first = np.where(np.arange(k) == 0, np.float32(0.0), np.float32(-np.inf))
    scores = xp.broadcast_to(engine.constant(first)[None, :], (batch, k))
    finished = xp.zeros((batch * k,), dtype=xp.bool, device=engine.device)
    lengths = xp.zeros((batch * k,), dtype=xp.int64, device=engine.device)
    sequences = xp.zeros((batch * k, 0), dtype=xp.int64, device=engine.device)
    sequence_log_probs = xp.zeros((batch * k, 0), dtype=xp.float32, device=engine.device)
    attention = None
    offsets = engine.constant(np.arange(batch, dtype=np.int64)[:, None] * k)  # (batch, 1)
    for step in range(config.max_length):
        log_probs, state = decoder.step(tokens, state)  # (batch*k, vocab)
        log_probs = masks.prepare(log_probs, step)
        if words is not None:
            log_probs = words.ban_repeats(log_probs, no_repeat_ngram_size)
        else:
            log_probs = _ban_repeated_ngrams(engine, log_probs, sequences, no_repeat_ngram_size)
        # An ended beam can only continue with <pad>, at no cost: its score is frozen.
        log_probs = xp.where(finished[:, None], masks.ended[None, :], log_probs)
        candidate_lengths = xp.where(finished, lengths, lengths + 1)  # (batch*k,)
        raw = xp.reshape(scores, (-1, 1)) + log_probs  # (batch*k, vocab)
        ranked = raw / _length_penalty(xp, candidate_lengths, length_penalty)[:, None]
        if config.retire_finished:  # a retired beam keeps its slot: only the live ones compete
            ranked = xp.where(finished[:, None] & (masks.ended[None, :] == 0), xp.full_like(ranked, math.inf), ranked)
        _, top = engine.topk(xp.reshape(ranked, (batch, k * vocab)), k)  # (batch, k)
        source = xp.reshape(top // vocab + offsets, (-1,))  # the old beam each new beam extends, flat
        scores = xp.take_along_axis(xp.reshape(raw, (batch, k * vocab)), top, axis=1)
        word_log_probs = xp.take_along_axis(xp.reshape(log_probs, (batch, k * vocab)), top, axis=1)
        was_finished = xp.take(finished, source, axis=0)
        previous_lengths = xp.take(lengths, source, axis=0)
        lengths = xp.where(was_finished, previous_lengths, previous_lengths + 1)
        tokens = xp.reshape(top % vocab, (-1,))
        finished = was_finished | (tokens == config.end_id)
        sequences = xp.concat([xp.take(sequences, source, axis=0), tokens[:, None]], axis=1)
        sequence_log_probs = xp.concat([xp.take(sequence_log_probs, source, axis=0),
                                        xp.reshape(word_log_probs, (-1, 1))], axis=1)
        state = reorder_state(state, source, decoder.static_state)
        if words is not None:
            words.advance(source, tokens)
        if state.get("attention") is not None:
            step_attention = state["attention"][:, None]  # (batch*k, 1, regions)
            attention = step_attention if attention is None else xp.concat(
                [xp.take(attention, source, axis=0), step_attention], axis=1)
        if (step + 1) % engine.check_every == 0 and xp.all(finished):
            break
    final = scores / xp.reshape(_length_penalty(xp, lengths, length_penalty), (batch, k))
    if config.retire_finished:  # finished captions first, each group best first
        ended, ranking = xp.reshape(finished, (batch, k)).tolist(), final.tolist()
        order = [sorted(range(k), key=lambda j: (not ended[i][j], -ranking[i][j]))[:n_best] for i in range(batch)]
    else:
        order = engine.topk(final, n_best)[1].tolist()  # (batch, n_best)
    sequences, scores, final = sequences.tolist(), scores.tolist(), final.tolist()
    sequence_log_probs = sequence_log_probs.tolist()
    results = []
    for i in range(batch):
        hypotheses = []
        for j in order[i]:
            row = i * k + j
            words = _strip(sequences[row], config)
            att = engine.to_host(attention[row, : len(words)]) if attention is not None else None
            word_log_probs = sequence_log_probs[row][: _scored_steps(sequences[row], words, config)]
            hypotheses.append(Hypothesis(words, scores[i][j], final[i][j], att, word_log_probs))
        results.append(hypotheses)
    return results


@_without_gradients
def score_captions(decoder: StepDecoder, features: Features, config: DecodingConfig,
                   captions: Sequence[Sequence[Sequence[int]]],
                   floors: Optional[Sequence[Sequence[float]]] = None) -> list[list[Hypothesis]]:
    """How likely the model finds given captions: ``captions[i]`` are word-id lists (no markers)
    for image ``i``; each comes back as a :class:`Hypothesis` with the log-probability of its words
    and ``<end>``, teacher-forced through ``init_state`` / ``step`` under the search's rules (a
    banned id, such as ``<unk>``, or an empty caption scores -inf). Captions longer than
    ``config.max_length`` cannot be generated and score -inf too.

    ``floors`` (one per caption, or None): a caption whose length-normalised log-probability
    is sure to end below its floor (its running sum over its length already is: later tokens
    only lower it) stops being scored and comes back at -inf, and the loop ends once every
    caption has ended or been dropped — a reranker that needs only the captions that can beat
    its candidates skips the rest of the steps."""
    engine = _Engine(features.pooled)
    xp = engine.xp
    flat = [(i, list(c)) for i, image_captions in enumerate(captions) for c in image_captions]
    results: list[list[Hypothesis]] = [[] for _ in captions]
    if not flat:
        return results
    image = engine.constant(np.asarray([i for i, _ in flat], dtype=np.int64))
    state = _map_state(decoder.init_state(features), lambda a: array_namespace(a).take(a, image, axis=0))
    state, tokens = _feed_prefix(decoder, state, engine, len(flat), config)
    steps = min(max(len(c) for _, c in flat) + 1, config.max_length + 1)
    targets = np.full((len(flat), steps), config.pad_id, dtype=np.int64)
    for row, (_, caption) in enumerate(flat):
        ids = caption[: steps - 1] + [config.end_id]
        targets[row, : len(ids)] = ids
    targets = engine.constant(targets)
    masks = _Masks(engine, config, decoder.vocab_size)
    lengths = np.asarray([len(c) + 1 for _, c in flat], dtype=np.float64)  # the words and <end>
    floor = (np.asarray([f for image_floors in floors for f in image_floors], dtype=np.float64)
             if floors is not None else None)
    dropped = np.zeros(len(flat), dtype=bool)
    chosen, running = [], None
    for step in range(steps):
        log_probs, state = decoder.step(tokens, state)
        tokens = targets[:, step]
        chosen.append(xp.take_along_axis(masks.prepare(log_probs, step), tokens[:, None], axis=1)[:, 0])
        if floor is None or step + 1 == steps:
            continue
        scored = xp.where(engine.constant(step < lengths), chosen[-1], xp.zeros_like(chosen[-1]))
        running = scored if running is None else running + scored  # each caption's sum over its length
        if (step + 1) % engine.check_every == 0:
            dropped |= np.asarray(engine.to_host(running), dtype=np.float64) / lengths < floor
            if np.all(dropped | (lengths <= step + 1)):
                break
    chosen = xp.stack(chosen, axis=1).tolist()  # (captions, steps scored)
    for row, (i, caption) in enumerate(flat):
        used = chosen[row][: len(caption) + 1]  # the words and <end>
        total = sum(used) if len(caption) <= config.max_length and not dropped[row] else -math.inf
        results[i].append(Hypothesis(caption, total, total, None, used))
    return results


def decode(decoder: StepDecoder, features: Features, config: DecodingConfig, options: DecodeOptions,
           generator=None) -> list[list[Hypothesis]]:
    """Decode as ``options`` say: greedy, beam search or sampling; ``options.max_length``
    (when set) replaces ``config.max_length``."""
    if options.max_length is not None:
        config = replace(config, max_length=options.max_length)
    if options.sample:
        return sample(decoder, features, config, options.temperature, options.top_k, generator)
    if options.is_greedy:
        return greedy(decoder, features, config)
    return beam_search(decoder, features, config, options.beam_size, options.n_best, options.length_penalty,
                       options.no_repeat_ngram_size)


__all__ = ["DecodeOptions", "DecodingConfig", "DecodingRules", "Features", "Hypothesis", "StepDecoder", "beam_search",
           "decode", "decoding_config_of", "expand_state", "greedy", "reorder_state", "sample", "score_captions"]
