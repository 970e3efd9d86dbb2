"""One training loop for every SSL method: mixed precision, channels_last, schedules, clipping,
atomic checkpoints with exact resume, an online monitor each epoch and a collapse warning. The
pieces it shares with classifier training (set-up, the step, the loss meter) are in ``training``.

The same loop runs in every worker of a distributed run (a launcher such as Ray Train's
``TorchTrainer`` starts the process group; see ``ssl_models.dist``): each worker takes its equal
slice of the global batch, the module is wrapped in DDP with synchronised BatchNorm, the logged
loss is the global batch's, and only rank 0 writes checkpoints."""

from __future__ import annotations

import hashlib
import json
import math
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from ssl_models import dist, training
from ssl_models.methods.base import SSLMethod, SSLOutput
from ssl_models.optim import _param_groups, build_optimizer  # noqa: F401  (part of the engine's API)
from ssl_models.run_state import RunState, resume, save_checkpoint
from ssl_models.training import Runtime, Schedule, Throughput


@dataclass
class TrainConfig:
    """How to train (the method's own hyperparameters live on the method).

    Attributes:
        epochs: passes over ``images_per_epoch`` images.
        batch_size: images per step (each gives several views).
        optimizer: ``sgd`` (momentum, nesterov), ``adamw`` or ``lars`` (``ssl_models.optim.LARS``;
            biases and normalization parameters skip its trust ratio).
        lr: peak learning rate for ``batch_size`` 256; scaled linearly with the batch size.
        weight_decay: on weights only (not biases or norm parameters).
        warmup_epochs: linear warmup before the cosine decay.
        grad_clip: max gradient norm, or None.
        precision: ``auto`` (bf16 where the hardware has it), ``bf16``, ``fp16`` (with loss
            scaling) or ``fp32``.
        channels_last: memory format for convolutions; None decides by hardware.
        compile: ``torch.compile`` the method.
        seed: fixes initial order, augmentations and everything random.
        images_per_epoch: images drawn (without replacement) per epoch; None: all of them.
        checkpoint_every: steps between checkpoints (and one at the end of every epoch).
        log_every: steps between ``on_step`` calls. The loss is read back from the device (a
            synchronisation) only then, at epoch ends and at checkpoints; 1 syncs every step.
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:1`` ...
    """

    epochs: int = 10
    batch_size: int = 256
    optimizer: str = "sgd"
    lr: float = 0.3
    weight_decay: float = 5e-4
    momentum: float = 0.9
    warmup_epochs: float = 0.5
    grad_clip: float | None = None
    precision: str = "auto"
    channels_last: bool | None = None
    compile: bool = False
    seed: int = 0
    images_per_epoch: int | None = None
    checkpoint_every: int = 100
    log_every: int = 10
    device: str = "auto"


@dataclass
class TrainResult:
    """What ``train`` returns: global steps and epochs done, throughput, per-epoch history."""

    steps: int
    epochs: int
    images_per_sec: float
    wall_seconds: float
    resumed_from_step: int
    history: list[dict[str, float]] = field(default_factory=list)


StepCallback = Callable[[int, dict[str, float]], None]
EpochCallback = Callable[[int, SSLMethod], dict[str, float]]
CheckpointCallback = Callable[[int], None]


def embedding_std(z: Tensor) -> float:
    """Mean per-dimension std of L2-normalized embeddings: about 1/sqrt(D) when healthy, 0 at
    collapse (SimSiam, Chen & He 2021, section 4.1)."""
    return F.normalize(z.float(), dim=1).std(0).mean().item()


def _fingerprint(method: SSLMethod, cfg: TrainConfig, n_images: int) -> str:
    """What must match for a checkpoint to be resumed: config, method, architecture (the module tree,
    strides and kernels included, and every state shape), data size."""
    shapes = [list(p.shape) for p in method.state_dict().values()]
    blob = json.dumps([asdict(cfg), method.name, repr(method), shapes, n_images], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _epoch_order(n: int, epoch: int, seed: int) -> Tensor:
    """The image order of ``epoch``: a function of (seed, epoch) only, so a resumed run draws it again."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g)


def view_seed(seed: int, step: int, rank: int = 0) -> int:
    """The seed of a worker's views at ``step``: a function of (seed, step, rank) only, so a resumed
    run draws the same views; rank 0's (and a single process's) is the same as before workers."""
    return seed * 1_000_003 + step + (rank << 40)


def shard(idx: Tensor, rank: int, world: int) -> Tensor:
    """Worker ``rank``'s equal slice of a global batch's indices (ranks in order cover the batch)."""
    n = idx.shape[0] // world
    return idx[rank * n : (rank + 1) * n]


def pretrain_schedule(n: int, cfg: TrainConfig) -> Schedule:
    """The schedule of pretraining on ``n`` images (lr scaled linearly from batch size 256)."""
    per_epoch = min(cfg.images_per_epoch or n, n)
    steps_per_epoch = max(per_epoch // cfg.batch_size, 1)
    return Schedule(min(cfg.batch_size, n), steps_per_epoch, cfg.epochs * steps_per_epoch,
                    int(cfg.warmup_epochs * steps_per_epoch), cfg.lr * cfg.batch_size / 256)


def ssl_step(rt: Runtime, method: SSLMethod, batch: Tensor, state: RunState, sched: Schedule, cfg: TrainConfig,
             generator: torch.Generator) -> SSLOutput:
    """One pretraining step on a uint8 ``batch`` (this worker's slice of the global batch): the
    method's views (seeded by (seed, step, rank) only), the scheduled lr, ``training.train_step``,
    the method's ``on_step_end``; the loss (averaged over workers: the global batch's) goes to
    ``state.meter`` without a sync and ``state.step`` advances."""
    step = state.step
    batch = batch.to(rt.device, non_blocking=True)
    generator.manual_seed(view_seed(cfg.seed, step, dist.rank()))
    with torch.no_grad():
        views = [training.to_memory_format(v, rt.channels_last) for v in method.views(batch, generator)]
    training.set_lr(rt.optimizer, sched.lr(step))
    loss, out = training.train_step(rt, views, lambda out: out.loss, cfg.grad_clip)
    method.on_step_end(step, sched.total_steps)
    loss = dist.all_reduce_mean(loss)  # the identity in one process
    state.meter.add(loss, step)
    state.step += 1
    return out


@dataclass
class StepLog:
    """Where per-step metrics go every ``log_every`` steps: the progress bar and ``on_step``; its
    clock is paused for the work between steps (epoch hooks, checkpoints)."""

    on_step: StepCallback | None
    bar: tqdm
    sched: Schedule
    clock: Throughput = field(default_factory=Throughput)

    def __call__(self, state: RunState, rt: Runtime) -> None:
        """Read the loss back (the sync; raises if a loss was not finite) and report it with the lr
        and the images per second since the last log."""
        reading, rate = state.meter.read(), self.clock.rate()
        per_epoch = self.sched.steps_per_epoch
        epoch = f"{(state.step - 1) // per_epoch + 1}/{self.sched.total_steps // per_epoch}"
        self.bar.set_postfix(epoch=epoch, loss=f"{reading.last:.3f}", img_s=f"{rate:.0f}")
        if self.on_step:
            lr = rt.optimizer.param_groups[0]["lr"]
            self.on_step(state.step, {"loss": reading.last, "lr": lr, "images_per_sec": rate})


def train_one_epoch(rt: Runtime, method: SSLMethod, images: Tensor, state: RunState, sched: Schedule,
                    cfg: TrainConfig, log: StepLog, stop_at: int) -> SSLOutput:
    """The steps from ``state.step`` to the end of its epoch (or to ``stop_at``), logging every
    ``cfg.log_every`` steps and checkpointing every ``cfg.checkpoint_every`` within the epoch.

    Returns:
        The last step's output (its embedding feeds the collapse check).
    """
    epoch, first = divmod(state.step, sched.steps_per_epoch)
    order = _epoch_order(images.shape[0], epoch, cfg.seed)  # the same in every worker
    rank, world = dist.rank(), dist.world_size()
    with log.clock.paused():
        method.on_epoch_start(epoch, images)
    generator = torch.Generator(device=rt.device)
    out: SSLOutput | None = None
    for i in range(first, min(sched.steps_per_epoch, stop_at - epoch * sched.steps_per_epoch)):
        idx = order[i * cfg.batch_size : (i + 1) * cfg.batch_size]
        out = ssl_step(rt, method, images[shard(idx, rank, world)], state, sched, cfg, generator)
        log.clock.add(len(idx))
        log.bar.update(1)
        if state.step % cfg.log_every == 0 or state.step == sched.total_steps:
            log(state, rt)
        if state.step % cfg.checkpoint_every == 0 and state.step % sched.steps_per_epoch:
            with log.clock.paused():  # an epoch's last step is checkpointed by end_of_epoch
                save_checkpoint(state, rt)
    assert out is not None, "train_one_epoch called with no step left"
    return out


def check_collapse(embedding: Tensor, epoch: int) -> float:
    """``embedding_std`` of ``embedding``, with a warning when it is under a tenth of healthy."""
    std, healthy = embedding_std(embedding), 1 / math.sqrt(embedding.shape[1])
    if std < 0.1 * healthy:
        warnings.warn(
            f"epoch {epoch}: embeddings are collapsing (per-dimension std {std:.4f}, healthy ~{healthy:.3f}); "
            "check lr and augmentations",
            stacklevel=4,  # train's caller
        )
    return std


def end_of_epoch(state: RunState, rt: Runtime, method: SSLMethod, out: SSLOutput, epoch: int,
                 on_epoch: EpochCallback | None) -> None:
    """Append epoch ``epoch``'s (1-based) record to ``state.history`` (mean loss, ``embedding_std``
    of the last step's embedding, the monitor's metrics computed in eval mode), start a new loss
    sum and write a checkpoint."""
    record = {"epoch": epoch, "step": state.step, "loss": state.meter.read().mean}
    if out.embedding is not None:
        record["embedding_std"] = check_collapse(out.embedding, epoch)
    if on_epoch:
        method.eval()
        record.update(on_epoch(epoch, method))
        method.train()
    state.history.append(record)
    state.meter.reset()
    save_checkpoint(state, rt)


def train(
    method: SSLMethod,
    images: Tensor,
    cfg: TrainConfig,
    checkpoint_path: str | Path | None = None,
    on_step: StepCallback | None = None,
    on_epoch: EpochCallback | None = None,
    progress: bool = True,
    max_steps: int | None = None,
    on_checkpoint: CheckpointCallback | None = None,
) -> TrainResult:
    """Train ``method`` on ``images``, resuming from ``checkpoint_path`` if it holds a checkpoint of
    the same run.

    In a process group of several workers (``ssl_models.dist``) every worker calls this with the
    same arguments: each trains on its slice of every global batch of ``cfg.batch_size`` images,
    and rank 0 alone writes the checkpoint.

    Args:
        method: the SSL method (its ``encoder`` is what you keep).
        images: (N, C, H, W) uint8, on the CPU; batches move to the device as they are drawn.
        cfg: training config.
        checkpoint_path: where to write (and resume from) the checkpoint; None: no checkpoints.
        on_step: called every ``cfg.log_every`` steps (and at the last) with ``{"loss", "lr",
            "images_per_sec"}``: the step's loss, read back from the device there and only there
            (besides epoch ends and checkpoints), so a small ``log_every`` costs a sync per log.
        on_epoch: called at the end of each epoch; may return metrics (e.g. online kNN accuracy).
        progress: show a progress bar.
        max_steps: stop after this global step (to simulate a killed run in tests).
        on_checkpoint: called with the step after each checkpoint is written, in every worker (a
            launcher hands rank 0's file to its storage there).

    Returns:
        Step count, throughput and per-epoch history.

    Raises:
        FloatingPointError: a loss was nan or inf (found when the loss is next read back).
        ValueError: ``cfg.batch_size`` does not split evenly over the workers.
    """
    if cfg.batch_size % dist.world_size():
        raise ValueError(f"batch_size {cfg.batch_size} does not split over {dist.world_size()} workers")
    fingerprint = _fingerprint(method, cfg, images.shape[0])  # before setup changes the modules (SyncBatchNorm)
    rt = training.setup(method, lambda m: build_optimizer(m, cfg), device=cfg.device, precision=cfg.precision,
                        channels_last=cfg.channels_last, compile=cfg.compile, seed=cfg.seed)
    sched = pretrain_schedule(images.shape[0], cfg)
    state = resume(Path(checkpoint_path) if checkpoint_path else None, rt, fingerprint)
    state.on_saved = on_checkpoint
    resumed_from = state.step
    stop_at = sched.total_steps if max_steps is None else min(sched.total_steps, max_steps)
    bar = tqdm(total=sched.total_steps, initial=state.step, disable=not progress, unit="step", dynamic_ncols=True)
    log, start = StepLog(on_step, bar, sched), time.perf_counter()
    method.train()
    while state.step < stop_at:
        out = train_one_epoch(rt, method, images, state, sched, cfg, log, stop_at)
        if state.step % sched.steps_per_epoch == 0:
            with log.clock.paused():
                end_of_epoch(state, rt, method, out, state.step // sched.steps_per_epoch, on_epoch)
    bar.close()
    if state.step < sched.total_steps:  # stopped early on purpose (max_steps): keep the state to resume
        save_checkpoint(state, rt)
    wall = time.perf_counter() - start
    images_per_sec = (state.step - resumed_from) * sched.batch / max(wall, 1e-9)
    epochs = state.step // sched.steps_per_epoch
    return TrainResult(state.step, epochs, images_per_sec, wall, resumed_from, state.history)
