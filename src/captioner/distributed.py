"""torchrun support: the process group from the environment, barriers, rank-0 decisions and
sums — what training and batch captioning both use (a leaf: it imports nothing of the package)."""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


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


def cleanup(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()

