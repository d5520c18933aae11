"""The interface every decoder shares, so decoding and training are written once.

A decoder is given the image features and

- ``forward(features, tokens)`` scores a whole caption prefix at once (teacher forcing):
  ``tokens`` (batch, T) are ``<start> w1 .. w_{T-1}``; the logits at position t predict
  token t+1; attention decoders also take ``return_attention=True`` to fill
  ``DecoderOutput.attention`` (otherwise they may use fused kernels that do not expose it);
- ``init_state(features)`` → ``state`` and ``step(tokens, state)`` → ``(log_probs, state)``
  decode one token at a time. ``state`` is a dict of tensors with the batch on dim 0, so
  ``decoding.py`` can expand and reorder it for beam search without knowing the model;
  keys named in ``static_state`` hold per-image constants that need no reordering.
  A decoder with attention leaves the last step's weights under ``state["attention"]``
  (batch, regions).

A decoder that reads the captions of each image's nearest datastore images (retrieval
augmentation) says how many and how long in ``retrieved_shape`` and finds them in
``Features.retrieved``, filled by :func:`captioner.retrieval.with_retrieved` when captioning and by
the training loop when training; every other decoder has ``retrieved_shape = None`` and ignores them.
"""
from __future__ import annotations

from dataclasses import asdict
from typing import NamedTuple, Optional

import torch
from torch import nn

from ..decoding import Features, State
from ..errors import InvalidInputError
from ..registry import Registry


class DecoderOutput(NamedTuple):
    logits: torch.Tensor  # (batch, T, vocab)
    attention: Optional[torch.Tensor] = None  # (batch, T, regions)
    aux_loss: Optional[torch.Tensor] = None  # a regulariser the objective adds (scalar)


class Decoder(nn.Module):
    needs_grid: bool = False
    has_attention: bool = False
    static_state: tuple[str, ...] = ()
    # State-dict keys that hold another key's tensor (weight tying, Press & Wolf 2017): saved once,
    # under the key they name, and tied again when loaded.
    tied_weights: dict[str, str] = {}
    retrieved_shape: tuple[int, int] | None = None  # (neighbours, tokens) of Features.retrieved it reads

    def __init__(self, name: str, config, vocab_size: int, pooled_dim: int, grid_dim: int | None = None):
        super().__init__()
        if self.needs_grid and grid_dim is None:
            raise InvalidInputError(f"decoder {name!r} attends over a region grid; the encoder must provide grid_dim")
        self.name = name
        self.config = config
        self.vocab_size = vocab_size
        self.pooled_dim = pooled_dim
        self.grid_dim = grid_dim

    def forward(self, features: Features, tokens: torch.Tensor) -> DecoderOutput:
        raise NotImplementedError

    def init_state(self, features: Features) -> State:
        raise NotImplementedError

    def step(self, tokens: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        raise NotImplementedError

    def describe(self) -> dict:
        """What config.json records to rebuild this decoder."""
        return {"name": self.name, "options": asdict(self.config)}

    def tie_output_to_embedding(self) -> None:
        """Share the word embedding with the output layer (``head``): a vocabulary's rows are
        stored once, which pays for a large (multilingual, subword) vocabulary."""
        if self.head.weight.shape != self.embed.weight.shape:
            raise InvalidInputError(f"decoder {self.name!r}: tie_embeddings needs the output layer's input as wide as "
                                    f"the embedding ({tuple(self.head.weight.shape)} vs "
                                    f"{tuple(self.embed.weight.shape)}): set embed_dim equal to hidden_dim")
        self.head.weight = self.embed.weight
        self.tied_weights = {"head.weight": "embed.weight"}

    @property
    def embedding(self) -> nn.Embedding:
        """The word embedding (pretrained vectors are loaded into it)."""
        return self.embed


DECODERS: Registry[Decoder] = Registry("decoder")


def register_decoder(name: str, config_cls: type):
    """Register a decoder class ``cls(name, config, vocab_size, pooled_dim, grid_dim)``."""
    return DECODERS.register(name, config_cls)


def create_decoder(name: str, vocab_size: int, pooled_dim: int, grid_dim: int | None = None, **options) -> Decoder:
    """Build a registered decoder: ``create_decoder("show-tell", vocab_size=1000, pooled_dim=2048)``."""
    config = DECODERS.make_config(name, **options)
    return DECODERS.builder(name)(name, config, vocab_size, pooled_dim, grid_dim)


def list_decoders() -> list[str]:
    return DECODERS.names()
