"""A classifier on top of an encoder, and the supervised training loop used for fine-tuning,
the supervised baseline and each hyperparameter-search trial."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ssl_models.augment import random_resized_crop, to_float
from ssl_models.backbones import Encoder
from ssl_models.device import autocast, autocast_dtype, resolve_device, use_channels_last
from ssl_models.evaluation import extract_features
from ssl_models.schedules import warmup_cosine


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


def train_classifier(
    model: Classifier,
    images: Tensor,
    labels: Tensor,
    cfg: FinetuneConfig,
    val: tuple[Tensor, Tensor] | None = None,
    on_epoch: EpochHook | None = None,
) -> list[dict[str, float]]:
    """Train ``model`` with cross-entropy on ``images`` (uint8, (N, C, H, W)) and ``labels`` (N,).

    Args:
        val: optional (images, labels) scored after every epoch (``val_top1``).
        on_epoch: called with (epoch, metrics) after every epoch (e.g. ``tune.report``).

    Returns:
        Per-epoch metrics: ``train_loss`` and, with ``val``, ``val_top1``.
    """
    device = resolve_device(cfg.device)
    dtype = autocast_dtype(device, cfg.precision)
    channels_last = use_channels_last(device)
    torch.manual_seed(cfg.seed)
    model.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    for p in model.encoder.parameters():
        p.requires_grad_(not cfg.freeze_encoder)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)

    n = images.shape[0]
    batch_size = min(cfg.batch_size, n)
    steps_per_epoch = max(n // batch_size, 1)
    epochs = max(cfg.epochs, -(-cfg.min_steps // steps_per_epoch))
    total = epochs * steps_per_epoch
    generator = torch.Generator(device=device).manual_seed(cfg.seed)
    order_gen = torch.Generator().manual_seed(cfg.seed)
    labels = labels.to(device)
    history, step = [], 0
    for epoch in range(1, epochs + 1):
        model.train()
        if cfg.freeze_encoder:
            model.encoder.eval()  # frozen BatchNorm statistics too
        order = torch.randperm(n, generator=order_gen)
        losses, t0 = [], time.perf_counter()
        for i in range(steps_per_epoch):
            idx = order[i * batch_size : (i + 1) * batch_size]
            x = to_float(images[idx].to(device))
            x = random_resized_crop(x, x.shape[-1], cfg.crop_scale, generator=generator)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            for group in optimizer.param_groups:
                group["lr"] = warmup_cosine(step, total, max(total // 10, 1), cfg.lr)
            with autocast(device, dtype):
                logits = model(x)
            loss = F.cross_entropy(logits.float(), labels[idx.to(device)])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            step += 1
        record = {"epoch": epoch, "train_loss": sum(losses) / len(losses),
                  "images_per_sec": steps_per_epoch * batch_size / (time.perf_counter() - t0)}
        if val is not None:
            record["val_top1"] = accuracy(model, *val, device=device, precision=cfg.precision)
        history.append(record)
        if on_epoch:
            on_epoch(epoch, record)
    return history


@torch.no_grad()
def predict_logits(model: nn.Module, images: Tensor, device: torch.device | str = "cpu", precision: str = "auto") -> Tensor:
    """(N, num_classes) float32 logits for uint8 or [0, 1] images, batched."""
    return extract_features(model, images, device=device, precision=precision)


def accuracy(model: nn.Module, images: Tensor, labels: Tensor, device: torch.device | str = "cpu", precision: str = "auto") -> float:
    preds = predict_logits(model, images, device, precision).argmax(1)
    return (preds == labels.cpu()).float().mean().item()
