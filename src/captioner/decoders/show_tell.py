"""Show and Tell (Vinyals et al. 2015), as the PyTorch tutorial (yunjey) builds it.

Pooled image feature → Linear → BatchNorm1d(momentum 0.01) is the LSTM's first input;
then ``<start> w1 .. wn``, each embedded; a Linear over the LSTM output scores the next word.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .base import Decoder, DecoderOutput, Features, State, register_decoder
from .layers import FeatureProjection, LSTMStack


@dataclass
class ShowTellConfig:
    embed_dim: int = 256
    hidden_dim: int = 512
    num_layers: int = 1
    dropout: float = 0.0


class ShowTell(Decoder):
    def __init__(self, name, config: ShowTellConfig, vocab_size, pooled_dim, grid_dim=None):
        super().__init__(name, config, vocab_size, pooled_dim, grid_dim)
        self.image_proj = FeatureProjection(pooled_dim, config.embed_dim)
        self.embed = nn.Embedding(vocab_size, config.embed_dim)
        self.lstm = LSTMStack(
            config.embed_dim,
            config.hidden_dim,
            config.num_layers,
            batch_first=True,
            dropout=config.dropout if config.num_layers > 1 else 0.0,
        )
        self.dropout = nn.Dropout(config.dropout)
        self.head = nn.Linear(config.hidden_dim, vocab_size)

    def forward(self, features: Features, tokens: torch.Tensor) -> DecoderOutput:
        image = self.image_proj(features.pooled)  # (batch, embed)
        inputs = torch.cat([image[:, None], self.embed(tokens)], dim=1)  # (batch, 1 + T, embed)
        outputs, _ = self.lstm.run(inputs)
        # No packing: the LSTM is causal, so padding after a caption cannot change its scores.
        return DecoderOutput(self.head(self.dropout(outputs[:, 1:])))  # (batch, T, vocab)

    def init_state(self, features: Features) -> State:
        image = self.image_proj(features.pooled)
        _, state = self.lstm.run(image[:, None])
        return state

    def step(self, tokens: torch.Tensor, state: State):
        outputs, state = self.lstm.run(self.embed(tokens)[:, None], state)  # (batch, 1, hidden)
        return F.log_softmax(self.head(outputs[:, 0]), dim=-1), state


register_decoder("show-tell", ShowTellConfig)(ShowTell)
