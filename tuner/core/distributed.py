"""Data-parallel training over an already initialized `torch.distributed` process group.

Whoever launches the workers (Ray Train's TorchTrainer, torchrun, or a test with gloo) sets up
the process group; the training loop only asks for its rank and uses the helpers below. With
no process group, everything here is the single-process identity.

The model every worker holds is kept equal to rank 0's: gradients are averaged by
DistributedDataParallel, and before each evaluation rank 0's parameters and buffers (BatchNorm
running statistics drift apart between workers) are broadcast, so the metrics describe exactly
the model rank 0 checkpoints. On GPUs BatchNorm is synchronized (SyncBatchNorm), so a batch is
normalized over the global batch whatever the number of workers; on CPUs (gloo), where PyTorch
has no SyncBatchNorm, each worker normalizes over its own share of the batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel


@dataclass(frozen=True)
class Workers:
    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def current() -> Workers:
    """This process's place among the workers (rank 0 of 1 without a process group)."""
    if dist.is_available() and dist.is_initialized():
        return Workers(dist.get_rank(), dist.get_world_size())
    return Workers()


def for_training(model: nn.Module, device: torch.device) -> nn.Module:
    """The model the loss is computed with: wrapped in DDP when there are several workers.

    On CUDA the BatchNorm layers of `model` are replaced in place by SyncBatchNorm layers that
    share their parameters and buffers (the state dict keeps its keys).
    """
    if current().world_size == 1:
        return model
    if device.type == "cuda":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        return DistributedDataParallel(model, device_ids=[device.index])
    return DistributedDataParallel(model)


def bare(model: nn.Module) -> nn.Module:
    """The module inside a DDP wrapper (attacks run on it: no gradient sync, no buffer broadcast)."""
    return model.module if isinstance(model, DistributedDataParallel) else model


def all_sum(tensor: torch.Tensor) -> torch.Tensor:
    """`tensor` summed over all workers (every worker gets the sum)."""
    if current().world_size > 1:
        tensor = tensor.clone()
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def check_same(value: int, what: str, device: torch.device) -> None:
    """Raise on every worker at once if the workers disagree on `value` (they would deadlock later)."""
    if current().world_size == 1:
        return
    extremes = torch.tensor([value, -value], dtype=torch.float64, device=device)  # NCCL reduces on the GPU
    dist.all_reduce(extremes, op=dist.ReduceOp.MAX)
    if extremes[0] != -extremes[1]:
        raise RuntimeError(f"workers disagree on {what} ({-extremes[1]:g} to {extremes[0]:g}): "
                           f"give every worker the same checkpoint")


def sync_from_main(model: nn.Module) -> None:
    """Make every worker's parameters and buffers equal to rank 0's."""
    if current().world_size == 1:
        return
    with torch.no_grad():
        for tensor in [*model.parameters(), *model.buffers()]:
            dist.broadcast(tensor.data, src=0)
