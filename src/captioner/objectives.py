"""Training objectives, separate from models and from the loop."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .decoders.base import Features


class CaptionCrossEntropy:
    """Teacher forcing: predict token t+1 from tokens ≤ t; cross-entropy over non-pad targets
    (plus any regulariser the decoder returns, e.g. doubly stochastic attention)."""

    def __init__(self, pad_id: int = 0, label_smoothing: float = 0.0):
        self.pad_id = pad_id
        self.label_smoothing = label_smoothing

    def __call__(self, model, inputs: Features | torch.Tensor, captions: torch.Tensor):
        """captions (batch, L) = <start> w1 .. wn <end> <pad>..; returns (loss, token count)."""
        output = model(inputs, captions[:, :-1])
        targets = captions[:, 1:]  # (batch, L - 1)
        loss = F.cross_entropy(
            output.logits.flatten(0, 1).float(),
            targets.flatten(),
            ignore_index=self.pad_id,
            label_smoothing=self.label_smoothing,
        )
        tokens = (targets != self.pad_id).sum()
        if output.aux_loss is not None:
            return loss + output.aux_loss, loss.detach(), tokens
        return loss, loss.detach(), tokens
