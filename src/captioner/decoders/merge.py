"""The "merge" model of the Keras photo-caption tutorial (Brownlee 2017; Tanti et al. 2017).

The image never enters the LSTM: the LSTM encodes only the caption prefix, and its output is
merged by addition with a dense image embedding just before the word classifier.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .base import Decoder, DecoderOutput, Features, State, register_decoder
from .layers import LSTMStack


@dataclass
class MergeConfig:
    embed_dim: int = 256
    hidden_dim: int = 256
    dropout: float = 0.5  # on the image feature and on the word embeddings, as the tutorial


class Merge(Decoder):
    static_state = ("image",)

    def __init__(self, name, config: MergeConfig, vocab_size, pooled_dim, grid_dim=None):
        super().__init__(name, config, vocab_size, pooled_dim, grid_dim)
        self.image_proj = nn.Sequential(
            nn.Dropout(config.dropout), nn.Linear(pooled_dim, config.hidden_dim), nn.ReLU()
        )
        self.embed = nn.Embedding(vocab_size, config.embed_dim)
        self.word_dropout = nn.Dropout(config.dropout)
        self.lstm = LSTMStack(config.embed_dim, config.hidden_dim, 1, batch_first=True)
        self.head = nn.Sequential(
            nn.Linear(config.hidden_dim, config.hidden_dim), nn.ReLU(), nn.Linear(config.hidden_dim, vocab_size)
        )

    def forward(self, features: Features, tokens: torch.Tensor) -> DecoderOutput:
        image = self.image_proj(features.pooled)  # (batch, hidden)
        prefix, _ = self.lstm.run(self.word_dropout(self.embed(tokens)))  # (batch, T, hidden)
        return DecoderOutput(self.head(prefix + image[:, None]))  # (batch, T, vocab)

    def init_state(self, features: Features) -> State:
        image = self.image_proj(features.pooled)
        zeros = image.new_zeros(image.shape[0], 1, self.config.hidden_dim)  # (batch, layers, hidden)
        return {"image": image, "h": zeros, "c": zeros}

    def step(self, tokens: torch.Tensor, state: State):
        prefix, lstm_state = self.lstm.run(
            self.word_dropout(self.embed(tokens))[:, None], {"h": state["h"], "c": state["c"]}
        )  # (batch, 1, hidden)
        log_probs = F.log_softmax(self.head(prefix[:, 0] + state["image"]), dim=-1)
        return log_probs, {**state, **lstm_state}


register_decoder("merge", MergeConfig)(Merge)
