"""What a training step needs to know about the other workers, when there are any.

Outside a distributed run (``torch.distributed`` not initialised) every function here is the
identity: one process, world size 1, rank 0. Inside one (Ray Train's ``TorchTrainer`` initialises
the process group; gloo on CPUs, NCCL on GPUs) losses that need the whole batch gather it with
``gather``, whose backward pass all-reduces the gradient and keeps this worker's slice, so that
every worker's gradient is that of the global-batch loss (lightly's ``GatherLayer``, SimCLR's
reference code). Nothing here starts a process group: that is the launcher's business.
"""

from __future__ import annotations

import torch
import torch.distributed as torch_dist
from torch import Tensor


def is_distributed() -> bool:
    """True inside an initialised process group of more than one worker."""
    return torch_dist.is_available() and torch_dist.is_initialized() and torch_dist.get_world_size() > 1


def world_size() -> int:
    return torch_dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    return torch_dist.get_rank() if is_distributed() else 0


def is_main_process() -> bool:
    """Rank 0: the one worker that writes checkpoints, logs and outputs."""
    return rank() == 0


class _Gather(torch.autograd.Function):
    """all_gather forward; backward: all-reduce (sum) the gradient of the gathered tensor and keep
    this worker's slice. The sum, not the mean: DDP then averages the parameter gradients."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        parts = [torch.empty_like(x) for _ in range(torch_dist.get_world_size())]
        torch_dist.all_gather(parts, x.contiguous())
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        grad = grad.contiguous()
        torch_dist.all_reduce(grad)
        n = grad.shape[0] // torch_dist.get_world_size()
        return grad[rank() * n : (rank() + 1) * n]


def gather(x: Tensor) -> Tensor:
    """Every worker's ``x`` concatenated along dim 0 in rank order, with gradients flowing back to
    each worker's own part; ``x`` itself outside a distributed run. Workers must hold equal sizes."""
    return _Gather.apply(x) if is_distributed() else x


@torch.no_grad()
def all_reduce_mean(x: Tensor) -> Tensor:
    """The mean of ``x`` over workers (no gradient): batch statistics such as DINO's center."""
    if not is_distributed():
        return x
    x = x.clone()
    torch_dist.all_reduce(x)
    return x / torch_dist.get_world_size()
