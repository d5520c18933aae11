"""Show and Tell (Vinyals et al. 2015), as the PyTorch tutorial (yunjey) builds it.

Pooled image feature → Linear → BatchNorm1d(momentum 0.01) is the LSTM's first input;
then ``<start> w1 .. wn``, each embedded; a Linear over the LSTM output scores the next word.

Decoding feeds ``<start>`` after the image. With ``first_token_from_image`` it decodes as the
tutorial's ``sample()`` does instead: the LSTM's output at the image step is the first token
(a model trained that way predicts ``<start>`` there), and ``<start>`` is never fed. Models
imported from the tutorial (``captioner import seed``) use it, so they caption as it did.
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
    first_token_from_image: bool = False  # the image step's prediction is the first token (yunjey's sample())


class ShowTell(Decoder):
    static_state = ("image",)  # with first_token_from_image: the projected image, read at the first step

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
        image = self.image_proj(features.pooled)  # (batch, embed)
        if self.config.first_token_from_image:
            # The LSTM has not run: its first step reads the image instead of the token decoding feeds.
            zeros = image.new_zeros(image.shape[0], self.config.num_layers, self.config.hidden_dim)
            # An integer flag, not bool: exported graphs carry it, and the export check subtracts values.
            at_image = torch.ones(image.shape[0], 1, dtype=torch.long, device=image.device)  # (batch, 1)
            return {"h": zeros, "c": zeros, "image": image, "at_image": at_image}
        _, state = self.lstm.run(image[:, None])
        return state

    def step(self, tokens: torch.Tensor, state: State):
        inputs = self.embed(tokens)  # (batch, embed)
        if "at_image" in state:
            inputs = torch.where(state["at_image"].bool(), state["image"], inputs)
            state = {**state, "at_image": torch.zeros_like(state["at_image"])}
        outputs, lstm_state = self.lstm.run(inputs[:, None], {"h": state["h"], "c": state["c"]})  # (batch, 1, hidden)
        return F.log_softmax(self.head(outputs[:, 0]), dim=-1), {**state, **lstm_state}


register_decoder("show-tell", ShowTellConfig)(ShowTell)
