"""One training loop for every SSL method: mixed precision, channels_last, schedules, clipping,
atomic checkpoints with exact resume, an online monitor each epoch and a collapse warning."""

from __future__ import annotations

import hashlib
import json
import math
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from ssl_models import checkpoint
from ssl_models.device import autocast, autocast_dtype, resolve_device, use_channels_last
from ssl_models.methods.base import SSLMethod
from ssl_models.optim import LARS
from ssl_models.schedules import warmup_cosine


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
        precision: ``auto`` (bf16 where the hardware has it), ``bf16``, ``fp16`` or ``fp32``.
        channels_last: memory format for convolutions; None decides by hardware.
        compile: ``torch.compile`` the method.
        seed: fixes initial order, augmentations and everything random.
        images_per_epoch: images drawn (without replacement) per epoch; None: all of them.
        checkpoint_every: steps between checkpoints (and one at the end of every epoch).
        log_every: steps between ``on_step`` calls.
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
    steps: int
    epochs: int
    images_per_sec: float
    wall_seconds: float
    resumed_from_step: int
    history: list[dict[str, float]] = field(default_factory=list)


StepCallback = Callable[[int, dict[str, float]], None]
EpochCallback = Callable[[int, SSLMethod], dict[str, float]]


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim > 1 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    groups = _param_groups(model, cfg.weight_decay)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=True)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr)
    if cfg.optimizer == "lars":
        decay, no_decay = groups
        return LARS([decay, {**no_decay, "lars_exclude": True}], lr=cfg.lr, momentum=cfg.momentum)
    raise ValueError(f"unknown optimizer {cfg.optimizer!r}; choose sgd, adamw or lars")


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
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g)


def train(
    method: SSLMethod,
    images: Tensor,
    cfg: TrainConfig,
    checkpoint_path: str | Path | None = None,
    on_step: StepCallback | None = None,
    on_epoch: EpochCallback | None = None,
    progress: bool = True,
    max_steps: int | None = None,
) -> TrainResult:
    """Train ``method`` on ``images``, resuming from ``checkpoint_path`` if it holds a checkpoint of
    the same run.

    Args:
        method: the SSL method (its ``encoder`` is what you keep).
        images: (N, C, H, W) uint8, on the CPU; batches move to the device as they are drawn.
        cfg: training config.
        checkpoint_path: where to write (and resume from) the checkpoint; None: no checkpoints.
        on_step: called every ``cfg.log_every`` steps with ``{"loss", "lr", "images_per_sec"}``.
        on_epoch: called at the end of each epoch; may return metrics (e.g. online kNN accuracy).
        progress: show a progress bar.
        max_steps: stop after this global step (to simulate a killed run in tests).

    Returns:
        Step count, throughput and per-epoch history.
    """
    device = resolve_device(cfg.device)
    amp_dtype = autocast_dtype(device, cfg.precision)
    channels_last = use_channels_last(device, cfg.channels_last)
    torch.manual_seed(cfg.seed)
    method.to(device)
    if channels_last:
        method.to(memory_format=torch.channels_last)
    model: nn.Module = torch.compile(method) if cfg.compile else method
    optimizer = build_optimizer(method, cfg)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)

    n = images.shape[0]
    per_epoch = min(cfg.images_per_epoch or n, n)
    steps_per_epoch = max(per_epoch // cfg.batch_size, 1)
    total_steps = cfg.epochs * steps_per_epoch
    warmup_steps = int(cfg.warmup_epochs * steps_per_epoch)
    peak_lr = cfg.lr * cfg.batch_size / 256
    fingerprint = _fingerprint(method, cfg, n)

    step, history = 0, []
    epoch_losses: list[float] = []  # losses of the current epoch's steps so far
    ckpt = Path(checkpoint_path) if checkpoint_path else None
    if ckpt and ckpt.exists():
        state = checkpoint.load(ckpt)
        if state.get("fingerprint") == fingerprint:
            method.load_state_dict(state["method"])
            optimizer.load_state_dict(state["optimizer"])
            scaler.load_state_dict(state["scaler"])
            torch.set_rng_state(state["rng_cpu"])
            step, history = int(state["step"]), list(state["history"])
            epoch_losses = [float(v) for v in state.get("epoch_losses", [])]
        else:
            warnings.warn(f"{ckpt}: checkpoint is from another config or data; starting afresh", stacklevel=2)
    resumed_from = step

    def save() -> None:
        if ckpt:
            checkpoint.save_atomic(
                {
                    "fingerprint": fingerprint,
                    "step": step,
                    "method": method.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scaler": scaler.state_dict(),
                    "rng_cpu": torch.get_rng_state(),
                    "history": history,
                    "epoch_losses": epoch_losses,  # so a mid-epoch resume averages the whole epoch
                },
                ckpt,
            )

    generator = torch.Generator(device=device)
    stop_at = min(total_steps, max_steps if max_steps is not None else total_steps)
    bar = tqdm(total=total_steps, initial=step, disable=not progress, unit="step", dynamic_ncols=True)
    start, timed_images, rate = time.perf_counter(), 0, 0.0
    method.train()
    order, order_epoch = None, -1
    while step < stop_at:
        epoch, i = divmod(step, steps_per_epoch)
        if epoch != order_epoch:
            order, order_epoch = _epoch_order(n, epoch, cfg.seed), epoch
            method.on_epoch_start(epoch, images)
        idx = order[i * cfg.batch_size : (i + 1) * cfg.batch_size]
        batch = images[idx].to(device, non_blocking=True)
        t0 = time.perf_counter()
        generator.manual_seed(cfg.seed * 1_000_003 + step)  # views depend on (seed, step) only
        with torch.no_grad():
            views = method.views(batch, generator)
            if channels_last:
                views = [v.contiguous(memory_format=torch.channels_last) for v in views]
        lr = warmup_cosine(step, total_steps, warmup_steps, peak_lr)
        for group in optimizer.param_groups:
            group["lr"] = lr
        with autocast(device, amp_dtype):
            out = model(views)
        loss = out.loss
        if not torch.isfinite(loss):
            raise FloatingPointError(f"loss is {loss.item()} at step {step}; lower pretrain.lr or use fp32")
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if cfg.grad_clip:
            scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(method.parameters(), cfg.grad_clip)
        scaler.step(optimizer)
        scaler.update()
        method.on_step_end(step, total_steps)
        step += 1

        loss_value = loss.item()
        epoch_losses.append(loss_value)
        dt = time.perf_counter() - t0
        timed_images += len(idx)
        rate = 0.9 * rate + 0.1 * len(idx) / dt if rate else len(idx) / dt
        bar.update(1)
        bar.set_postfix(epoch=f"{epoch + 1}/{cfg.epochs}", loss=f"{loss_value:.3f}", img_s=f"{rate:.0f}")
        if on_step and (step % cfg.log_every == 0 or step == total_steps):
            on_step(step, {"loss": loss_value, "lr": lr, "images_per_sec": rate})

        if step % steps_per_epoch == 0:  # end of an epoch
            record = {"epoch": epoch + 1, "step": step, "loss": sum(epoch_losses) / len(epoch_losses)}
            if out.embedding is not None:
                std = embedding_std(out.embedding)
                record["embedding_std"] = std
                if std < 0.1 / math.sqrt(out.embedding.shape[1]):
                    warnings.warn(
                        f"epoch {epoch + 1}: embeddings are collapsing (per-dimension std {std:.4f}, "
                        f"healthy ~{1 / math.sqrt(out.embedding.shape[1]):.3f}); check lr and augmentations",
                        stacklevel=2,
                    )
            if on_epoch:
                method.eval()
                record.update(on_epoch(epoch + 1, method))
                method.train()
            history.append(record)
            epoch_losses = []
            save()
        elif step % cfg.checkpoint_every == 0:
            save()
    bar.close()
    if step < total_steps:  # stopped early on purpose (max_steps): keep the state to resume
        save()
    wall = time.perf_counter() - start
    return TrainResult(step, step // steps_per_epoch, timed_images / max(wall, 1e-9), wall, resumed_from, history)
