"""What every training loop here shares (SSL pretraining and classifier training): the set-up
(device, precision, memory format, compilation, optimizer, gradient scaler), one optimizer step,
and a running loss kept on the device and read back only when it is logged.

Nothing here keeps global state: each function gets what it needs as arguments, so that a
distributed wrapper can run the same loop in every worker (inside a process group, ``setup``
wraps the model in DDP)."""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
from torch import Tensor, nn

from ssl_models import dist
from ssl_models.device import (
    autocast,
    autocast_dtype,
    resolve_device,
    use_channels_last,
)
from ssl_models.schedules import warmup_cosine

Out = TypeVar("Out")


@dataclass
class Runtime:
    """Where and how a model trains; made by ``setup``.

    Attributes:
        device: where the model and its batches live.
        amp_dtype: the autocast dtype, or None for fp32.
        channels_last: whether inputs are converted to channels_last.
        module: the model itself (its ``state_dict`` is what a checkpoint holds).
        model: what a step calls: ``module``, wrapped in DDP inside a process group, and compiled
            if asked.
        optimizer: over ``module``'s parameters.
        scaler: loss scaling, enabled for fp16 only (bf16 has fp32's exponent range).
    """

    device: torch.device
    amp_dtype: torch.dtype | None
    channels_last: bool
    module: nn.Module
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler


def grad_scaler(device: torch.device, amp_dtype: torch.dtype | None) -> torch.amp.GradScaler:
    """A ``GradScaler`` enabled for fp16 autocast only."""
    return torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)


def synchronise_batchnorm(module: nn.Module, device: torch.device) -> None:
    """Make ``module``'s BatchNorm layers (its children, in place) compute statistics over every
    worker's batch: ``ssl_models.dist.convert_sync_batchnorm`` where it exists (it runs on CPUs
    too), else PyTorch's ``SyncBatchNorm``, which runs on GPUs only (on a CPU the layers then stay
    per worker). Both keep each layer's parameter and buffer objects."""
    convert = getattr(dist, "convert_sync_batchnorm", None)
    if convert is not None:
        convert(module)
    elif device.type == "cuda":
        nn.SyncBatchNorm.convert_sync_batchnorm(module)


def distributed_model(module: nn.Module, device: torch.device) -> nn.Module:
    """``module`` in DDP (gradients averaged over the workers after each backward; every worker
    starts from rank 0's weights, which DDP broadcasts), its BatchNorm synchronised.

    The BatchNorm layers are converted after DDP wraps the module: DDP refuses any
    ``nn.SyncBatchNorm`` (the CPU-capable one included) in a CPU module when it is built, and the
    conversion keeps the parameter and buffer objects DDP registered, so the model is the same.
    """
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else None
    ddp = DistributedDataParallel(module, device_ids=ids)
    synchronise_batchnorm(module, device)
    return ddp


def setup(
    module: nn.Module,
    make_optimizer: Callable[[nn.Module], torch.optim.Optimizer],
    *,
    device: str = "auto",
    precision: str = "auto",
    channels_last: bool | None = None,
    compile: bool = False,
    seed: int = 0,
) -> Runtime:
    """Seed the global RNG, move ``module`` to its device and memory format, and build its optimizer.
    Inside a process group of several workers (``ssl_models.dist.is_distributed``), the model a
    step calls is ``module`` in DDP, with synchronised BatchNorm.

    Args:
        module: the model to train (moved in place).
        make_optimizer: builds the optimizer on the moved module.
        device: ``auto``, ``cpu``, ``cuda``, ...
        precision: ``auto``, ``bf16``, ``fp16`` or ``fp32`` (see ``ssl_models.device.autocast_dtype``).
        channels_last: memory format for convolutions; None decides by device.
        compile: ``torch.compile`` the module for the steps.
        seed: seeds ``torch.manual_seed`` before anything random happens.
    """
    dev = resolve_device(device)
    amp_dtype = autocast_dtype(dev, precision)
    cl = use_channels_last(dev, channels_last)
    torch.manual_seed(seed)
    module.to(dev)
    if cl:
        module.to(memory_format=torch.channels_last)
    model = distributed_model(module, dev) if dist.is_distributed() else module
    model = torch.compile(model) if compile else model
    optimizer = make_optimizer(module)
    return Runtime(dev, amp_dtype, cl, module, model, optimizer, grad_scaler(dev, amp_dtype))


@dataclass(frozen=True)
class Schedule:
    """Step counts and the learning-rate schedule (linear warmup, cosine decay to 0) of a run."""

    batch: int  # images per step
    steps_per_epoch: int
    total_steps: int
    warmup_steps: int
    peak_lr: float

    def lr(self, step: int) -> float:
        """The learning rate of global step ``step`` (0-based)."""
        return warmup_cosine(step, self.total_steps, self.warmup_steps, self.peak_lr)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set the learning rate of every parameter group."""
    for group in optimizer.param_groups:
        group["lr"] = lr


def to_memory_format(x: Tensor, channels_last: bool) -> Tensor:
    """``x`` in channels_last if asked, else unchanged."""
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def train_step(
    rt: Runtime, inputs: Any, loss_fn: Callable[[Out], Tensor], grad_clip: float | None = None
) -> tuple[Tensor, Out]:
    """One optimizer step: forward under autocast, scaled backward, optional clipping, step.

    Adds no synchronisation with the device (the loss comes back as a tensor); an enabled (fp16)
    scaler checks the gradients for infs on the host in ``scaler.step``, as it must.

    Args:
        rt: the runtime from ``setup``.
        inputs: what ``rt.model`` is called with.
        loss_fn: the scalar loss of the model's output (called outside autocast).
        grad_clip: max gradient norm (of ``rt.module``'s parameters), or None.

    Returns:
        The detached loss and the model's output.
    """
    with autocast(rt.device, rt.amp_dtype):
        out = rt.model(inputs)
    loss = loss_fn(out)
    rt.optimizer.zero_grad(set_to_none=True)
    rt.scaler.scale(loss).backward()
    if grad_clip:
        rt.scaler.unscale_(rt.optimizer)
        nn.utils.clip_grad_norm_(rt.module.parameters(), grad_clip)
    rt.scaler.step(rt.optimizer)
    rt.scaler.update()
    return loss.detach(), out


@dataclass(frozen=True)
class LossReading:
    """The loss meter's values, read back from the device.

    Attributes:
        last: the latest step's loss.
        total: the sum of the losses since the last reset.
        count: how many losses ``total`` sums.
        bad_step: the first step whose loss was not finite, or -1.
        bad_loss: that loss (nan or inf).
    """

    last: float
    total: float
    count: int
    bad_step: int
    bad_loss: float

    @property
    def mean(self) -> float:
        """The mean loss since the last reset (nan before any step)."""
        return self.total / self.count if self.count else math.nan


class LossMeter:
    """A running sum of per-step losses, kept on the device: ``add`` never synchronises, ``read``
    copies everything back in one transfer (and reuses it until the next ``add``).

    Sums in float64 (float32 on MPS), so the epoch mean equals the sum of the ``.item()`` values.

    Args:
        device: where the losses are.
        advice: if given, ``read`` raises ``FloatingPointError`` on a non-finite loss with this hint;
            None: non-finite losses are only reported.
        total, count: a sum to continue (a resumed epoch).
    """

    def __init__(self, device: torch.device, advice: str | None = None, total: float = 0.0, count: int = 0) -> None:
        dtype = torch.float32 if device.type == "mps" else torch.float64
        self.advice = advice
        self.count = count
        self.total = torch.tensor(total, dtype=dtype, device=device)
        self.last = torch.zeros((), dtype=dtype, device=device)
        self.bad_step = torch.full((), -1.0, dtype=dtype, device=device)
        self.bad_loss = torch.zeros((), dtype=dtype, device=device)
        self._reading: LossReading | None = None

    def add(self, loss: Tensor, step: int) -> None:
        """Add step ``step``'s (scalar) loss, remembering the first non-finite one."""
        loss = loss.detach().to(self.total.dtype)
        self.total += loss
        self.count += 1
        self.last = loss
        first_bad = ~torch.isfinite(loss) & (self.bad_step < 0)
        self.bad_step = torch.where(first_bad, step, self.bad_step)
        self.bad_loss = torch.where(first_bad, loss, self.bad_loss)
        self._reading = None

    def read(self) -> LossReading:
        """Copy the values back (the one synchronisation); raise on a non-finite loss if ``advice``."""
        if self._reading is None:
            values = torch.stack([self.last, self.total, self.bad_step, self.bad_loss])
            last, total, bad_step, bad_loss = values.tolist()
            self._reading = LossReading(last, total, self.count, int(bad_step), bad_loss)
        r = self._reading
        if self.advice is not None and r.bad_step >= 0:
            raise FloatingPointError(f"loss is {r.bad_loss} at step {r.bad_step}; {self.advice}")
        return r

    def reset(self) -> None:
        """Start a new sum (a new epoch)."""
        self.total.zero_()
        self.count = 0
        self._reading = None

    def state_dict(self) -> dict[str, float | int]:
        """The sum and count, for a checkpoint (reads back unless empty)."""
        return {"total": self.read().total if self.count else 0.0, "count": self.count}


class Throughput:
    """Images per second between two calls of ``rate`` (call it where the device is in sync), not
    counting the time spent ``paused``."""

    def __init__(self) -> None:
        self.images, self.t0 = 0, time.perf_counter()

    def add(self, images: int) -> None:
        """Count a step's images."""
        self.images += images

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Leave the time spent in this block (work between steps) out of the rate."""
        t = time.perf_counter()
        try:
            yield
        finally:
            self.t0 += time.perf_counter() - t

    def rate(self) -> float:
        """Images per second since the last ``rate`` (or since construction); starts a new window."""
        now = time.perf_counter()
        rate = self.images / max(now - self.t0, 1e-9)
        self.images, self.t0 = 0, now
        return rate
