"""Show, Attend and Tell (Xu et al. 2015), soft attention, as the popular PyTorch tutorial builds it.

At every step an LSTM cell reads the previous word and a gated, attention-weighted sum of the
image regions; h and c start from the mean region feature. Training adds the doubly stochastic
regulariser, which pushes every region to be attended about once over the caption.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..data.vocab import Vocabulary
from .base import Decoder, DecoderOutput, Features, State, register_decoder
from .layers import AdditiveAttention


@dataclass
class ShowAttendTellConfig:
    embed_dim: int = 512
    hidden_dim: int = 512
    attention_dim: int = 512
    dropout: float = 0.5  # on the LSTM output, before the vocabulary projection
    gate: bool = True  # sigmoid gating scalar beta_t on the context (paper section 4.2.1)
    doubly_stochastic_weight: float = 1.0  # lambda of the (1 - sum_t alpha)^2 penalty; 0 = off
    tie_embeddings: bool = False  # the output layer shares the embedding's weights (embed_dim == hidden_dim)
    attention_activation: str = "tanh"  # or "relu", as the PyTorch tutorial's Attention (its imported models)


class ShowAttendTell(Decoder):
    needs_grid = True
    has_attention = True
    static_state = ("regions", "projected")

    def __init__(self, name, config: ShowAttendTellConfig, vocab_size, pooled_dim, grid_dim=None):
        super().__init__(name, config, vocab_size, pooled_dim, grid_dim)
        self.attention = AdditiveAttention(grid_dim, config.hidden_dim, config.attention_dim,
                                           config.attention_activation)
        self.embed = nn.Embedding(vocab_size, config.embed_dim)
        self.init_h = nn.Linear(grid_dim, config.hidden_dim)
        self.init_c = nn.Linear(grid_dim, config.hidden_dim)
        self.gate = nn.Linear(config.hidden_dim, grid_dim) if config.gate else None
        self.cell = nn.LSTMCell(config.embed_dim + grid_dim, config.hidden_dim)
        self.dropout = nn.Dropout(config.dropout)
        self.head = nn.Linear(config.hidden_dim, vocab_size)
        if config.tie_embeddings:
            self.tie_output_to_embedding()

    def init_state(self, features: Features) -> State:
        regions = features.grid
        if regions is None:
            raise ValueError(f"decoder {self.name!r} needs the region grid (Features.grid), got None")
        mean = regions.mean(dim=1)  # (batch, grid_dim)
        return {
            "regions": regions,  # (batch, R, grid_dim)
            "projected": self.attention.project_regions(regions),  # (batch, R, attention)
            "h": self.init_h(mean),  # (batch, hidden)
            "c": self.init_c(mean),
        }

    def _advance(self, embedded: torch.Tensor, state: State) -> State:
        """One LSTM step from an embedded word (batch, embed); the new state holds this step's attention."""
        context, weights = self.attention(state["regions"], state["projected"], state["h"])
        if self.gate is not None:
            context = torch.sigmoid(self.gate(state["h"])) * context  # (batch, grid_dim)
        h, c = self.cell(torch.cat([embedded, context], dim=-1), (state["h"], state["c"]))
        return {**state, "h": h, "c": c, "attention": weights}

    def forward(self, features: Features, tokens: torch.Tensor, return_attention: bool = True) -> DecoderOutput:
        """Teacher forcing; the attention weights are always returned (they cost nothing extra)."""
        state = self.init_state(features)
        embedded = self.embed(tokens)  # (batch, T, embed)
        outputs, weights = [], []
        for t in range(tokens.shape[1]):
            state = self._advance(embedded[:, t], state)
            outputs.append(state["h"])
            weights.append(state["attention"])
        hidden = torch.stack(outputs, dim=1)  # (batch, T, hidden)
        attention = torch.stack(weights, dim=1)  # (batch, T, R)
        return DecoderOutput(self.head(self.dropout(hidden)), attention, self._doubly_stochastic(attention, tokens))

    def _doubly_stochastic(self, attention: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor | None:
        weight = self.config.doubly_stochastic_weight
        if weight <= 0:
            return None
        # Only steps that predict a word or <end> count: not the padding after a short caption.
        valid = (tokens != Vocabulary.pad_id) & (tokens != Vocabulary.end_id)  # (batch, T)
        coverage = (attention * valid[..., None]).sum(dim=1)  # (batch, R)
        return weight * ((1.0 - coverage) ** 2).mean()

    def step(self, tokens: torch.Tensor, state: State):
        state = self._advance(self.embed(tokens), state)
        return F.log_softmax(self.head(self.dropout(state["h"])), dim=-1), state


register_decoder("show-attend-tell", ShowAttendTellConfig)(ShowAttendTell)
