"""Building blocks shared by several decoders."""
from __future__ import annotations

import torch
from torch import nn


class FeatureProjection(nn.Sequential):
    """The seed's image embedding: Linear → BatchNorm1d(momentum 0.01)."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__(nn.Linear(in_dim, out_dim), nn.BatchNorm1d(out_dim, momentum=0.01))


class LSTMStack(nn.LSTM):
    """A batch-first LSTM whose recurrent state travels batch-first, as decoding needs."""

    def run(self, inputs: torch.Tensor, state: dict | None = None):
        """inputs (batch, T, in) → outputs (batch, T, hidden), state {"h","c": (batch, layers, hidden)}."""
        hx = None
        if state is not None:
            hx = (state["h"].transpose(0, 1).contiguous(), state["c"].transpose(0, 1).contiguous())
        outputs, (h, c) = self(inputs, hx)
        return outputs, {"h": h.transpose(0, 1), "c": c.transpose(0, 1)}
