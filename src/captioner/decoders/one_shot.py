"""The Keras caption-models article's "Model 1": the whole caption predicted at once from the
image, with no feedback of the generated words — the baseline that shows why the others feed
their own output back in.

An MLP maps the pooled feature to a hidden vector; a learned embedding per position is added
and a shared classifier scores the vocabulary at each of ``max_length`` positions.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InvalidInputError
from .base import Decoder, DecoderOutput, Features, State, register_decoder


@dataclass
class OneShotConfig:
    hidden_dim: int = 512
    max_length: int = 32  # positions predicted (words + <end>)
    dropout: float = 0.5


class OneShot(Decoder):
    static_state = ("log_probs",)

    def __init__(self, name, config: OneShotConfig, vocab_size, pooled_dim, grid_dim=None):
        super().__init__(name, config, vocab_size, pooled_dim, grid_dim)
        self.image_proj = nn.Sequential(
            nn.Dropout(config.dropout), nn.Linear(pooled_dim, config.hidden_dim), nn.ReLU()
        )
        self.positions = nn.Embedding(config.max_length, config.hidden_dim)
        self.head = nn.Sequential(
            nn.ReLU(),
            nn.Linear(config.hidden_dim, config.hidden_dim),
            nn.ReLU(),
            nn.Dropout(config.dropout),
            nn.Linear(config.hidden_dim, vocab_size),
        )

    @property
    def embedding(self) -> nn.Embedding:
        raise InvalidInputError(f"decoder {self.name!r} never reads words, so it has no word embedding for word vectors")

    def _logits(self, pooled: torch.Tensor, length: int) -> torch.Tensor:
        if length > self.config.max_length:
            raise InvalidInputError(
                f"one-shot predicts at most max_length={self.config.max_length} positions, asked for {length}; "
                "build it with a larger max_length"
            )
        image = self.image_proj(pooled)  # (batch, hidden)
        return self.head(image[:, None] + self.positions.weight[:length])  # (batch, length, vocab)

    def forward(self, features: Features, tokens: torch.Tensor) -> DecoderOutput:
        """Logits for positions 0..T-1; the token values are ignored."""
        return DecoderOutput(self._logits(features.pooled, tokens.shape[1]))

    def init_state(self, features: Features) -> State:
        log_probs = F.log_softmax(self._logits(features.pooled, self.config.max_length), dim=-1)
        position = torch.zeros(features.pooled.shape[0], dtype=torch.long, device=features.pooled.device)
        return {"log_probs": log_probs, "position": position}  # (batch, max_length, vocab), (batch,)

    def step(self, tokens: torch.Tensor, state: State):
        position = state["position"]
        if int(position.max()) >= self.config.max_length:
            raise InvalidInputError(
                f"one-shot predicts at most max_length={self.config.max_length} positions; decoding asked for more"
            )
        rows = torch.arange(position.shape[0], device=position.device)
        return state["log_probs"][rows, position], {**state, "position": position + 1}


register_decoder("one-shot", OneShotConfig)(OneShot)
