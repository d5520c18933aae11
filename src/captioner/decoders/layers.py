"""Building blocks shared by several decoders."""
from __future__ import annotations

import math

import torch
from torch import nn

from ..errors import InvalidInputError


class FeatureProjection(nn.Sequential):
    """Image embedding of Show and Tell (Vinyals et al. 2015): Linear → BatchNorm1d(momentum 0.01)."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__(nn.Linear(in_dim, out_dim), nn.BatchNorm1d(out_dim, momentum=0.01))


class LSTMStack(nn.LSTM):
    """A batch-first LSTM whose recurrent state travels batch-first, as decoding needs."""

    def run(self, inputs: torch.Tensor, state: dict | None = None):
        """inputs (batch, T, in) → outputs (batch, T, hidden), state {"h","c": (batch, layers, hidden)}."""
        hx = None
        if state is not None:
            hx = (state["h"].transpose(0, 1).contiguous(), state["c"].transpose(0, 1).contiguous())
        if torch.is_autocast_enabled("cpu") and inputs.device.type == "cpu":
            # CPU autocast hands oneDNN's LSTM bf16 operands even on CPUs whose oneDNN has no bf16
            # LSTM (AVX2: "could not create a primitive descriptor"), so on the CPU the recurrence
            # runs in fp32. Not for precision: with the whole recurrence in bf16, as cuDNN runs it
            # under CUDA autocast, the tiny set's losses matched fp32's to 0.002 over 12 epochs.
            with torch.autocast("cpu", enabled=False):
                outputs, (h, c) = self(inputs.float(), hx)
        else:
            outputs, (h, c) = self(inputs, hx)
        return outputs, {"h": h.transpose(0, 1), "c": c.transpose(0, 1)}


# The nonlinearity between the summed projections and the score: Bahdanau's tanh, or the ReLU
# of the Show, Attend and Tell PyTorch tutorial (sgrvinod), whose trained models need it.
ATTENTION_ACTIVATIONS = {"tanh": torch.tanh, "relu": torch.relu}


class AdditiveAttention(nn.Module):
    """Bahdanau-style soft attention over image regions (Xu et al. 2015, eq. 4-6).

    The region projection does not depend on the decoder state, so it is computed once per
    image (``project_regions``) and reused at every step. ``activation`` names one of
    ``ATTENTION_ACTIVATIONS``.
    """

    def __init__(self, region_dim: int, query_dim: int, attention_dim: int, activation: str = "tanh"):
        super().__init__()
        if activation not in ATTENTION_ACTIVATIONS:
            raise InvalidInputError(
                f"attention activation must be one of {', '.join(ATTENTION_ACTIVATIONS)}, got {activation!r}"
            )
        self.activation = ATTENTION_ACTIVATIONS[activation]
        self.region_proj = nn.Linear(region_dim, attention_dim)
        self.query_proj = nn.Linear(query_dim, attention_dim)
        self.score = nn.Linear(attention_dim, 1)

    def project_regions(self, regions: torch.Tensor) -> torch.Tensor:
        return self.region_proj(regions)  # (batch, regions, attention)

    def forward(self, regions: torch.Tensor, projected: torch.Tensor, query: torch.Tensor):
        """regions (batch, R, region_dim), projected (batch, R, attention), query (batch, query_dim)
        → context (batch, region_dim), weights (batch, R)."""
        energy = self.activation(projected + self.query_proj(query)[:, None])  # (batch, R, attention)
        weights = self.score(energy).squeeze(-1).softmax(dim=-1)  # (batch, R)
        context = torch.bmm(weights[:, None], regions).squeeze(1)  # (batch, region_dim)
        return context, weights


def sinusoidal_positions(length: int, dim: int) -> torch.Tensor:
    """The fixed sin/cos position table of Vaswani et al. 2017: (length, dim)."""
    position = torch.arange(length, dtype=torch.float32)[:, None]
    frequency = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    table = torch.zeros(length, dim)
    table[:, 0::2] = torch.sin(position * frequency)
    table[:, 1::2] = torch.cos(position * frequency[: dim // 2])
    return table
