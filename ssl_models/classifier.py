"""A classifier on top of an encoder, and the supervised training loop used for fine-tuning,
the supervised baseline and each hyperparameter-search trial."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ssl_models import training
from ssl_models.augment import random_resized_crop, to_float
from ssl_models.backbones import Encoder
from ssl_models.evaluation import extract_features
from ssl_models.training import LossMeter, Runtime, Schedule, Throughput


class Classifier(nn.Module):
    """Encoder + linear head. Input (N, C, H, W) float in [0, 1]; output (N, num_classes) logits."""

    def __init__(self, encoder: Encoder, num_classes: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(encoder.out_dim, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.encoder(x))


@dataclass
class FinetuneConfig:
    """Attributes:
        epochs: passes over the labeled images.
        lr: peak AdamW learning rate (warmup 10 %, cosine decay).
        weight_decay: AdamW weight decay.
        freeze_encoder: train the head only (a linear probe with augmentation) or everything.
        batch_size: images per step.
        min_steps: at least this many steps, whatever the number of labels (tiny label sets).
        crop_scale: area range of the random-resized-crop augmentation (with flips).
        precision, device: as for pretraining.
        seed: fixes the order and the augmentations.
    """

    epochs: int = 20
    lr: float = 1e-3
    weight_decay: float = 1e-4
    freeze_encoder: bool = False
    batch_size: int = 128
    min_steps: int = 200
    crop_scale: tuple[float, float] = (0.6, 1.0)
    precision: str = "auto"
    device: str = "auto"
    seed: int = 0


EpochHook = Callable[[int, dict[str, float]], None]


def classifier_schedule(n: int, cfg: FinetuneConfig) -> Schedule:
    """Steps of training on ``n`` images: ``cfg.epochs``, more if needed for ``cfg.min_steps``;
    10 % warmup, then cosine decay from ``cfg.lr``."""
    batch = min(cfg.batch_size, n)
    steps_per_epoch = max(n // batch, 1)
    epochs = max(cfg.epochs, -(-cfg.min_steps // steps_per_epoch))
    total = epochs * steps_per_epoch
    return Schedule(batch, steps_per_epoch, total, max(total // 10, 1), cfg.lr)


def _augment(images: Tensor, rt: Runtime, cfg: FinetuneConfig, generator: torch.Generator) -> Tensor:
    """uint8 images -> float [0, 1] random-resized crops (with flips) on the device."""
    x = to_float(images.to(rt.device))
    x = random_resized_crop(x, x.shape[-1], cfg.crop_scale, generator=generator)
    return training.to_memory_format(x, rt.channels_last)


def _cross_entropy(logits: Tensor, labels: Tensor) -> Tensor:
    return F.cross_entropy(logits.float(), labels)


def train_epoch(rt: Runtime, model: Classifier, images: Tensor, labels: Tensor, cfg: FinetuneConfig,
                sched: Schedule, epoch: int, generators: tuple[torch.Generator, torch.Generator]) -> dict[str, float]:
    """One epoch (1-based ``epoch``) of cross-entropy steps with ``training.train_step``.

    Args:
        labels: (N,) on ``rt.device``.
        generators: the CPU generator of the image order and the device one of the crops.

    Returns:
        The epoch's record: ``epoch``, ``train_loss`` (its mean; read back once) and ``images_per_sec``.
    """
    order_gen, crop_gen = generators
    model.train()
    if cfg.freeze_encoder:
        model.encoder.eval()  # frozen BatchNorm statistics too
    order = torch.randperm(images.shape[0], generator=order_gen)
    meter, clock = LossMeter(rt.device), Throughput()
    for i in range(sched.steps_per_epoch):
        step = (epoch - 1) * sched.steps_per_epoch + i
        idx = order[i * sched.batch : (i + 1) * sched.batch]
        x = _augment(images[idx], rt, cfg, crop_gen)
        training.set_lr(rt.optimizer, sched.lr(step))
        loss_fn = partial(_cross_entropy, labels=labels[idx.to(rt.device)])
        loss, _ = training.train_step(rt, x, loss_fn)
        meter.add(loss, step)
        clock.add(len(idx))
    train_loss = meter.read().mean  # the sync: the throughput below is measured after it
    return {"epoch": epoch, "train_loss": train_loss, "images_per_sec": clock.rate()}


def train_classifier(
    model: Classifier,
    images: Tensor,
    labels: Tensor,
    cfg: FinetuneConfig,
    val: tuple[Tensor, Tensor] | None = None,
    on_epoch: EpochHook | None = None,
) -> list[dict[str, float]]:
    """Train ``model`` with cross-entropy on ``images`` (uint8, (N, C, H, W)) and ``labels`` (N,),
    with the same set-up and step as pretraining (``ssl_models.training``: fp16 gets loss scaling).

    Args:
        val: optional (images, labels) scored after every epoch (``val_top1``).
        on_epoch: called with (epoch, metrics) after every epoch (e.g. ``tune.report``).

    Returns:
        Per-epoch metrics: ``epoch``, ``train_loss``, ``images_per_sec`` and, with ``val``,
        ``val_top1``. A non-finite loss is reported as such (a trial at a bad lr), not raised.
    """
    for p in model.encoder.parameters():
        p.requires_grad_(not cfg.freeze_encoder)
    rt = training.setup(model, lambda m: _adamw(m, cfg), device=cfg.device, precision=cfg.precision, seed=cfg.seed)
    sched = classifier_schedule(images.shape[0], cfg)
    generators = (torch.Generator().manual_seed(cfg.seed), torch.Generator(device=rt.device).manual_seed(cfg.seed))
    labels = labels.to(rt.device)
    history = []
    for epoch in range(1, sched.total_steps // sched.steps_per_epoch + 1):
        record = train_epoch(rt, model, images, labels, cfg, sched, epoch, generators)
        if val is not None:
            record["val_top1"] = accuracy(model, *val, device=rt.device, precision=cfg.precision)
        history.append(record)
        if on_epoch:
            on_epoch(epoch, record)
    return history


def _adamw(model: nn.Module, cfg: FinetuneConfig) -> torch.optim.Optimizer:
    """AdamW over the trainable parameters (the encoder's too unless frozen)."""
    return torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.lr,
                             weight_decay=cfg.weight_decay)


@torch.no_grad()
def predict_logits(model: nn.Module, images: Tensor, device: torch.device | str = "cpu", precision: str = "auto") -> Tensor:
    """(N, num_classes) float32 logits for uint8 or [0, 1] images, batched."""
    return extract_features(model, images, device=device, precision=precision)


def accuracy(model: nn.Module, images: Tensor, labels: Tensor, device: torch.device | str = "cpu", precision: str = "auto") -> float:
    """Top-1 accuracy of ``model``'s logits on ``images`` against ``labels``."""
    preds = predict_logits(model, images, device, precision).argmax(1)
    return (preds == labels.cpu()).float().mean().item()
