"""A classifier on top of an encoder, and the supervised training loop used for fine-tuning,
the supervised baseline and each hyperparameter-search trial; its set-up, learning rates and
epoch loop are also those of the semi-supervised trainers (``ssl_models.fixmatch``,
``ssl_models.distill``).

Across workers (a process group, ``ssl_models.dist``), ``train_classifier`` trains exactly as one
process: every worker draws the same order and the same crops of the whole global batch (cheap next
to the step) and steps on its slice; DDP averages the gradients and BatchNorm is synchronised.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ssl_models import dist, training
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
        encoder_lr_scale: the encoder's learning rate is ``lr * encoder_lr_scale``, the head's ``lr``.
            Below 1 the pretrained features move less than the fresh head (Kumar et al., 2022,
            "Fine-Tuning can Distort Pretrained Features", arXiv:2202.10054).
        linear_probe_epochs: LP-FT (Kumar et al., 2022): the first this many epochs train the head
            alone (encoder frozen, its BatchNorm in eval mode), then everything; the encoder's
            learning rate then warms up again over the schedule's warmup steps. Counted within
            the run's epochs (one warmup-cosine schedule for the whole run).
        batch_size: images per step.
        min_steps: at least this many steps, whatever the number of labels (tiny label sets).
        crop_scale: area range of the random-resized-crop augmentation (with flips).
        precision, device: as for pretraining.
        compile: ``torch.compile`` the model for the steps.
        seed: fixes the order and the augmentations.
    """

    epochs: int = 20
    lr: float = 1e-3
    weight_decay: float = 1e-4
    freeze_encoder: bool = False
    encoder_lr_scale: float = 1.0  # 1: today's single learning rate
    linear_probe_epochs: int = 0  # 0: no probe phase
    batch_size: int = 128
    min_steps: int = 200
    crop_scale: tuple[float, float] = (0.6, 1.0)
    precision: str = "auto"
    device: str = "auto"
    compile: bool = False
    seed: int = 0


EpochHook = Callable[[int, dict[str, float]], None]


def classifier_schedule(n: int, cfg: FinetuneConfig, world: int = 1) -> Schedule:
    """Steps of training on ``n`` images: ``cfg.epochs``, more if needed for ``cfg.min_steps``;
    10 % warmup, then cosine decay from ``cfg.lr``. The global batch is a multiple of ``world``
    (the workers), so that it splits evenly."""
    batch = max(min(cfg.batch_size, n) // world * world, world)
    steps_per_epoch = max(n // batch, 1)
    epochs = max(cfg.epochs, -(-cfg.min_steps // steps_per_epoch))
    total = epochs * steps_per_epoch
    return Schedule(batch, steps_per_epoch, total, max(total // 10, 1), cfg.lr)


def weak_view(images: Tensor, rt: Runtime, crop_scale: tuple[float, float], generator: torch.Generator) -> Tensor:
    """uint8 (or [0, 1] float) images -> float [0, 1] random-resized crops (with flips) on the device,
    in the run's memory format: the training augmentation of every classifier loop here."""
    x = to_float(images.to(rt.device))
    x = random_resized_crop(x, x.shape[-1], crop_scale, generator=generator)
    return training.to_memory_format(x, rt.channels_last)


def classifier_optimizer(model: Classifier, cfg: FinetuneConfig) -> torch.optim.Optimizer:
    """AdamW with a parameter group ``encoder`` (absent when frozen; its lr is scaled by
    ``cfg.encoder_lr_scale``, see ``set_step_lr``) and a group ``head``."""
    groups = [{"params": list(model.head.parameters()), "name": "head"}]
    if not cfg.freeze_encoder:
        groups.insert(0, {"params": list(model.encoder.parameters()), "name": "encoder"})
    return torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)


def encoder_lr_factor(step: int, sched: Schedule, cfg: FinetuneConfig) -> float:
    """The encoder's learning rate over the head's at global step ``step``: ``encoder_lr_scale``,
    0 during an LP-FT probe, then a linear re-warmup over ``sched.warmup_steps``."""
    start = cfg.linear_probe_epochs * sched.steps_per_epoch
    if start == 0:
        return cfg.encoder_lr_scale
    if step < start:
        return 0.0
    return cfg.encoder_lr_scale * min(1.0, (step - start + 1) / sched.warmup_steps)


def set_step_lr(optimizer: torch.optim.Optimizer, sched: Schedule, cfg: FinetuneConfig, step: int) -> None:
    """Set the learning rates of global step ``step``: the schedule's for the head, times
    ``encoder_lr_factor`` for the encoder."""
    lr = sched.lr(step)
    encoder_lr = lr * encoder_lr_factor(step, sched, cfg)
    for group in optimizer.param_groups:
        group["lr"] = encoder_lr if group.get("name") == "encoder" else lr


def start_epoch(model: Classifier, cfg: FinetuneConfig, epoch: int) -> None:
    """Train mode for epoch ``epoch`` (1-based); an encoder that does not train in it (frozen, or
    in an LP-FT probe) gets no gradients (AdamW then skips it, weight decay too) and keeps its
    BatchNorm statistics (eval mode)."""
    trains = not cfg.freeze_encoder and epoch > cfg.linear_probe_epochs
    model.train()
    model.encoder.requires_grad_(trains)
    if not trains:
        model.encoder.eval()


def setup_classifier(model: Classifier, n: int, cfg: FinetuneConfig) -> tuple[Runtime, Schedule]:
    """The runtime (``training.setup`` with ``classifier_optimizer``) and schedule of training
    ``model`` on ``n`` labeled images."""
    if cfg.linear_probe_epochs and dist.is_distributed():  # DDP needs the same trainable parameters every step
        raise ValueError("linear_probe_epochs (LP-FT) freezes the encoder mid-run, which DDP cannot follow: "
                         "set it to 0 or train in one process")
    model.encoder.requires_grad_(not cfg.freeze_encoder)
    rt = training.setup(model, lambda m: classifier_optimizer(m, cfg), device=cfg.device, precision=cfg.precision,
                        compile=cfg.compile, seed=cfg.seed)
    return rt, classifier_schedule(n, cfg, dist.world_size())


def fit(model: Classifier, rt: Runtime, sched: Schedule, cfg: FinetuneConfig, run_epoch: Callable[[int], dict[str, float]],
        val: tuple[Tensor, Tensor] | None = None, on_epoch: EpochHook | None = None) -> list[dict[str, float]]:
    """Run ``run_epoch(epoch)`` for every epoch of ``sched``, add ``val_top1`` with ``val``, call
    ``on_epoch``; return the records."""
    history = []
    for epoch in range(1, sched.total_steps // sched.steps_per_epoch + 1):
        record = run_epoch(epoch)
        if val is not None:
            record["val_top1"] = accuracy(model, *val, device=rt.device, precision=cfg.precision)
        history.append(record)
        if on_epoch:
            on_epoch(epoch, record)
    return history


def _cross_entropy(logits: Tensor, labels: Tensor) -> Tensor:
    return F.cross_entropy(logits.float(), labels)


def train_epoch(rt: Runtime, model: Classifier, images: Tensor, labels: Tensor, cfg: FinetuneConfig,
                sched: Schedule, epoch: int, generators: tuple[torch.Generator, torch.Generator]) -> dict[str, float]:
    """One epoch (1-based ``epoch``) of cross-entropy steps with ``training.train_step``. Across
    workers, each crops the whole global batch (the same crops as one process) and steps on its
    slice; the logged loss is the global batch's (the mean over workers of equal slices).

    Args:
        labels: (N,) on ``rt.device``.
        generators: the CPU generator of the image order and the device one of the crops.

    Returns:
        The epoch's record: ``epoch``, ``train_loss`` (its mean; read back once) and ``images_per_sec``.
    """
    order_gen, crop_gen = generators
    start_epoch(model, cfg, epoch)
    order = torch.randperm(images.shape[0], generator=order_gen)
    meter, clock = LossMeter(rt.device), Throughput()
    local = sched.batch // dist.world_size()
    mine = slice(dist.rank() * local, (dist.rank() + 1) * local)  # this worker's part of each global batch
    for i in range(sched.steps_per_epoch):
        step = (epoch - 1) * sched.steps_per_epoch + i
        idx = order[i * sched.batch : (i + 1) * sched.batch]
        x = weak_view(images[idx], rt, cfg.crop_scale, crop_gen)[mine]
        set_step_lr(rt.optimizer, sched, cfg, step)
        loss_fn = partial(_cross_entropy, labels=labels[idx[mine].to(rt.device)])
        loss, _ = training.train_step(rt, x, loss_fn)
        meter.add(dist.all_reduce_mean(loss.detach()), step)  # the identity in one process
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
    rt, sched = setup_classifier(model, images.shape[0], cfg)
    generators = (torch.Generator().manual_seed(cfg.seed), torch.Generator(device=rt.device).manual_seed(cfg.seed))
    labels = labels.to(rt.device)
    return fit(model, rt, sched, cfg, lambda epoch: train_epoch(rt, model, images, labels, cfg, sched, epoch, generators),
               val, on_epoch)


@torch.no_grad()
def predict_logits(model: nn.Module, images: Tensor, device: torch.device | str = "cpu", precision: str = "auto") -> Tensor:
    """(N, num_classes) float32 logits for uint8 or [0, 1] images, batched."""
    return extract_features(model, images, device=device, precision=precision)


def accuracy(model: nn.Module, images: Tensor, labels: Tensor, device: torch.device | str = "cpu", precision: str = "auto") -> float:
    """Top-1 accuracy of ``model``'s logits on ``images`` against ``labels``."""
    preds = predict_logits(model, images, device, precision).argmax(1)
    return (preds == labels.cpu()).float().mean().item()
