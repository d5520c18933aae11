"""BatchNorm over the global batch under torchrun, for the CPU (gloo) as for CUDA (NCCL)."""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn


class _SumOverRanks(torch.autograd.Function):
    """All-reduce (sum) that gradients flow through: each rank's input feeds every rank's
    output, so its gradient is the sum of every rank's output gradient."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        total = tensor.clone()
        dist.all_reduce(total)
        return total

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


class GlobalBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm that, in training under a process group, normalises with the statistics of
    the whole global batch (all ranks) — ``nn.SyncBatchNorm`` for CPU/gloo, which that class
    does not support. Gradients flow through the shared statistics."""

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (batch, channels, ...), got {input.dim()}D")

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized()):
            return super().forward(input)
        self._check_input_dim(input)
        dims = [0, *range(2, input.dim())]  # every dim but the channels
        shape = [1, -1] + [1] * (input.dim() - 2)  # broadcast per channel
        count = torch.tensor([input.numel() / input.shape[1]], dtype=input.dtype, device=input.device)
        sums = _SumOverRanks.apply(torch.cat([input.sum(dims), count]))  # (channels + 1,)
        n = sums[-1]
        mean = sums[:-1] / n
        centred = input - mean.view(shape)
        var = _SumOverRanks.apply(centred.pow(2).sum(dims)) / n  # biased, as BatchNorm normalises
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                momentum = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.lerp_(mean.detach(), momentum)
                self.running_var.lerp_(var.detach() * n / max(float(n) - 1, 1.0), momentum)  # unbiased
        out = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        return out


def sync_batchnorm(model: nn.Module, device: torch.device) -> nn.Module:
    """Make the trainable BatchNorm layers of ``model`` (in place) normalise over the global batch.

    Without this, each rank normalises with its own share of the batch, so DDP with world × B
    trains a different model from one process with world·B. Only plain ``BatchNorm1d/2d/3d``
    with trainable parameters are converted: frozen encoder layers run in eval mode anyway, and
    subclasses (timm's ``BatchNormAct2d``) would lose what they add.
    """
    plain = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
    for name, child in list(model.named_children()):
        trainable = any(p.requires_grad for p in child.parameters(recurse=False))
        if type(child) in plain and trainable:
            replacement = (nn.SyncBatchNorm if device.type == "cuda" else GlobalBatchNorm)(
                child.num_features, child.eps, child.momentum, child.affine, child.track_running_stats
            )
            replacement.weight, replacement.bias = child.weight, child.bias  # the same Parameters
            for buffer in ("running_mean", "running_var", "num_batches_tracked"):
                setattr(replacement, buffer, getattr(child, buffer))
            replacement.train(child.training)
            setattr(model, name, replacement)
        else:
            sync_batchnorm(child, device)
    return model
