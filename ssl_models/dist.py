"""What a training step needs to know about the other workers, when there are any.

Outside a distributed run (``torch.distributed`` not initialised, or one worker) every function
here is the identity: one process, world size 1, rank 0, and no collective is ever called, so a
single process keeps its numbers and its speed. Inside one (Ray Train's ``TorchTrainer``
initialises the process group; gloo on CPUs, NCCL on GPUs) nothing here starts a process group:
that is the launcher's business.

The rule every method follows, so that N workers with batch B/N train exactly as one process
with batch B:

- Each worker ``r`` computes a loss ``L_r`` whose **mean over workers is the one-process loss**
  (a per-sample loss: the local mean; a loss over the whole batch: the global loss itself, the
  same on every worker).
- Every collective that carries a gradient **sums** it over workers in its backward pass
  (``gather``: all-reduce the gradient, keep this worker's slice; ``all_reduce_sum``:
  all-reduce it). Then the workers' gradients add up to the gradient of ``sum_r L_r``, and DDP's
  average divides by N: the gradient of the one-process loss. (The anchors slipped here: lightly's
  ``GatherLayer`` before PR #1531 kept only the local gradient, and its Barlow Twins loss
  all-reduced the correlation matrix without a gradient, a gradient 1/N too small, #1977.)
- Statistics without a gradient (DINO's center, Sinkhorn's sums, MoCo's keys) are all-reduced or
  gathered so every worker updates its state identically.
- BatchNorm computes statistics over the global batch (``convert_sync_batchnorm``).

Workers hold **equal batch sizes** (the engine splits the global batch evenly): ``gather`` needs
equal shapes, and the means over workers equal the global means only for equal sizes.
"""

from __future__ import annotations

import torch
import torch.distributed as torch_dist
from torch import Tensor, nn


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


def all_reduce_sum(x: Tensor) -> Tensor:
    """The sum of ``x`` over workers, with the gradient summed over workers in the backward pass
    (``torch.distributed.nn.functional.all_reduce``); ``x`` itself outside a distributed run."""
    if not is_distributed():
        return x
    from torch.distributed.nn.functional import all_reduce

    return all_reduce(x)


@torch.no_grad()
def all_reduce_mean(x: Tensor) -> Tensor:
    """The mean of ``x`` over workers (no gradient): batch statistics such as DINO's center."""
    if not is_distributed():
        return x
    x = x.clone()
    torch_dist.all_reduce(x)
    return x / torch_dist.get_world_size()


@torch.no_grad()
def all_reduce_max(x: Tensor) -> Tensor:
    """The element-wise maximum of ``x`` over workers (no gradient)."""
    if not is_distributed():
        return x
    x = x.clone()
    torch_dist.all_reduce(x, op=torch_dist.ReduceOp.MAX)
    return x


@torch.no_grad()
def all_reduce_sum_(x: Tensor) -> Tensor:
    """Sum ``x`` over workers in place (no gradient) and return it; ``x`` untouched outside."""
    if is_distributed():
        torch_dist.all_reduce(x)
    return x


@torch.no_grad()
def broadcast_(x: Tensor, src: int = 0) -> Tensor:
    """Overwrite ``x`` in place with worker ``src``'s (no gradient) and return it."""
    if is_distributed():
        torch_dist.broadcast(x, src)
    return x


@torch.no_grad()
def gather_parts(x: Tensor, sizes: list[int]) -> Tensor:
    """Concatenate every worker's ``x`` (no gradient) when worker ``r`` holds ``sizes[r]`` rows, so
    parts may differ in size (e.g. ``tensor_split`` of a pool); ``x`` itself outside.

    Args:
        x: (sizes[rank], ...) this worker's part.
        sizes: every worker's number of rows, known to all of them.
    """
    if not is_distributed():
        return x
    padded = x.new_zeros((max(sizes), *x.shape[1:]))
    padded[: x.shape[0]] = x
    parts = [torch.empty_like(padded) for _ in sizes]
    torch_dist.all_gather(parts, padded)
    return torch.cat([p[:n] for p, n in zip(parts, sizes, strict=True)])


# ---------------------------------------------------------------------------------- SyncBatchNorm
def _global_batch_stats(x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Mean and biased variance per channel of every worker's ``x`` (N_r, C, ...) together, with
    gradients, and the global count. Each worker's (count, mean, variance) are gathered and combined
    as parallel Welford does (Chan et al.): stabler than E[x^2] - E[x]^2, one collective."""
    dims = [0, *range(2, x.dim())]
    var, mean = torch.var_mean(x.float(), dims, correction=0)  # (C,) each
    count = x.new_full((1,), x.numel() // x.shape[1], dtype=torch.float32)
    stats = gather(torch.cat([count, mean, var])[None])  # (W, 1 + 2C)
    c = x.shape[1]
    counts, means, variances = stats[:, :1], stats[:, 1 : 1 + c], stats[:, 1 + c :]
    total = counts.sum()
    g_mean = (counts * means).sum(0) / total
    g_var = (counts * (variances + (means - g_mean).pow(2))).sum(0) / total
    return g_mean, g_var, total


class SyncBatchNorm(nn.SyncBatchNorm):
    """PyTorch's ``SyncBatchNorm`` (GPUs: its fused kernels) that also runs on CPUs over gloo.

    ``torch.nn.SyncBatchNorm`` raises on CPU tensors ("expected input tensor to be on GPU"), so on a
    CPU the batch statistics are computed here: mean and variance over every worker's batch with
    gradients through the collective (``gather``), normalisation, and running statistics updated as
    ``BatchNorm`` does over the global batch (momentum, unbiased variance with the global count).
    On a GPU it is PyTorch's layer; on a CPU in eval mode or outside a distributed run, BatchNorm.
    """

    def forward(self, input: Tensor) -> Tensor:
        if input.device.type != "cpu":
            return super().forward(input)
        if not (self.training and is_distributed()):  # PyTorch's layer would raise on a CPU here
            return nn.modules.batchnorm._BatchNorm.forward(self, input)
        self._check_input_dim(input)
        factor = self.momentum if self.momentum is not None else 0.0
        if self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:  # a cumulative moving average, as BatchNorm's
                factor = 1.0 / float(self.num_batches_tracked)
        mean, var, total = _global_batch_stats(input)
        if self.track_running_stats and self.running_mean is not None and self.running_var is not None:
            with torch.no_grad():
                unbiased = var.detach() * total / (total - 1).clamp(min=1)
                self.running_mean.lerp_(mean.detach().to(self.running_mean.dtype), factor)
                self.running_var.lerp_(unbiased.to(self.running_var.dtype), factor)
        shape = (1, -1) + (1,) * (input.dim() - 2)
        y = (input.float() - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.weight is not None:
            y = y * self.weight.view(shape)
        if self.bias is not None:
            y = y + self.bias.view(shape)
        return y.to(input.dtype)


def convert_sync_batchnorm(module: nn.Module) -> nn.Module:
    """``module`` with every ``BatchNorm*d`` replaced by ``SyncBatchNorm`` (same parameters, buffers
    and mode), so batch statistics are those of the global batch; in place for children, a new
    module if ``module`` itself is a BatchNorm. Call it in distributed runs before DDP wraps the
    module; before or after moving it to its device (the layer picks CPU or GPU per call)."""
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, SyncBatchNorm):
        sync = SyncBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                             module.track_running_stats, bias=module.bias is not None)
        if module.affine:
            sync.weight, sync.bias = module.weight, module.bias
        sync.running_mean, sync.running_var = module.running_mean, module.running_var
        sync.num_batches_tracked = module.num_batches_tracked
        sync.train(module.training)
        return sync
    for name, child in module.named_children():
        setattr(module, name, convert_sync_batchnorm(child))
    return module
