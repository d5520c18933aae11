"""torchrun support: process group from the environment, rank-0 helpers."""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def setup(device: torch.device, backend: str | None = None) -> DistInfo:
    """Join the process group torchrun describes (NCCL on CUDA, gloo on CPU, unless
    ``backend`` says); no-op alone."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return DistInfo()
    if not dist.is_initialized():
        # On CUDA, NCCL for the gradients and gloo beside it for the small CPU tensors the loop
        # reduces and broadcasts (epoch sums, the stop flag), which NCCL alone cannot carry.
        dist.init_process_group(backend or ("cpu:gloo,cuda:nccl" if device.type == "cuda" else "gloo"))
    return DistInfo(
        rank=dist.get_rank(),
        world_size=world_size,
        local_rank=int(os.environ.get("LOCAL_RANK", "0")),
        local_world_size=int(os.environ.get("LOCAL_WORLD_SIZE", str(world_size))),
    )


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def broadcast_flag(flag: bool, info: DistInfo) -> bool:
    """Rank 0's decision (e.g. stop early), shared with every rank."""
    if not info.enabled:
        return flag
    tensor = torch.tensor([int(flag)])
    dist.broadcast(tensor, 0)
    return bool(tensor.item())


def all_reduce_sum(values: list[float], info: DistInfo) -> list[float]:
    if not info.enabled:
        return values
    tensor = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(tensor)
    return tensor.tolist()


def rank_weight(weight: torch.Tensor | int, info: DistInfo, device: torch.device) -> float:
    """What to multiply this rank's mean loss by so that DDP's gradient average equals the
    gradient of the mean over the whole global batch.

    ``weight`` is how many units (target tokens, images) this rank's loss is a mean over. Ranks
    hold different numbers of them; DDP averages their gradients with equal weight, so each
    rank's loss is weighted by ``world × its units / all units``. ``device``: where the
    process group reduces (NCCL: the rank's GPU).
    """
    if not info.enabled:
        return 1.0
    total = torch.as_tensor(weight, dtype=torch.float64, device=device).detach().reshape(1).clone()
    dist.all_reduce(total)
    return float(weight) * info.world_size / float(total)


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


def cleanup(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()

