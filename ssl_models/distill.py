"""Self-distillation on unlabeled images (SimCLRv2: Chen et al., 2020, arXiv:2006.10029, section 2):
a frozen, fine-tuned teacher labels the unlabeled images with its tempered softmax, and a student
learns to match it."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ssl_models import training
from ssl_models.classifier import (
    Classifier,
    EpochHook,
    FinetuneConfig,
    fit,
    setup_classifier,
    weak_view,
)
from ssl_models.device import autocast
from ssl_models.semi import semi_epoch, semi_random


@dataclass
class DistillConfig(FinetuneConfig):
    """``FinetuneConfig`` (optimizer, schedule, ``crop_scale``, LP-FT, ...) plus:

    Attributes:
        mu: unlabeled images per labeled image in a step (the FixMatch ratio, so that both arms
            see as many unlabeled images per step; SimCLRv2 distils on batches of unlabeled images).
        temperature: of the teacher's and the student's softmax (SimCLRv2: 0.1 for
            self-distillation, 1.0 for distilling into a smaller network).
        labeled_weight: weight of the labeled cross-entropy added to the distillation loss
            (SimCLRv2 distils with unlabeled images only: 0; its weighted form for many labels is
            ``(1 - a) * labeled + a * distillation``, i.e. ``labeled_weight = (1 - a) / a``).
    """

    mu: int = 7
    temperature: float = 0.1
    labeled_weight: float = 0.0


def soft_targets(teacher_logits: Tensor, temperature: float = 1.0) -> Tensor:
    """The teacher's tempered class probabilities: softmax(logits / T), (N, K) float32, rows sum to 1."""
    return torch.softmax(teacher_logits.float() / temperature, dim=1)


def distill_loss(student_logits: Tensor, targets: Tensor, temperature: float = 1.0) -> Tensor:
    """KL(targets || softmax(student_logits / T)), averaged over the batch: SimCLRv2's distillation
    cross-entropy minus the (constant) entropy of the targets, so the same gradient, and 0 when
    the student matches the teacher. Not scaled by T^2 (SimCLRv2's loss; Hinton's T^2 makes up
    for soft gradients at T > 1).

    Args:
        student_logits: (N, K).
        targets: (N, K) probabilities (``soft_targets``).
    """
    log_probs = F.log_softmax(student_logits.float() / temperature, dim=1)
    return F.kl_div(log_probs, targets, reduction="batchmean")


def freeze_teacher(teacher: nn.Module) -> nn.Module:
    """The teacher as distillation needs it: no gradients, eval mode (BatchNorm uses and keeps its
    running statistics), in place."""
    return teacher.requires_grad_(False).eval()


def train_distill(
    student: Classifier,
    teacher: nn.Module,
    x_labeled: Tensor,
    y_labeled: Tensor,
    x_unlabeled: Tensor,
    cfg: DistillConfig,
    val: tuple[Tensor, Tensor] | None = None,
    on_epoch: EpochHook | None = None,
) -> list[dict[str, float]]:
    """Distil ``teacher`` into ``student`` on unlabeled images (SimCLRv2's self-distillation), with
    ``train_classifier``'s set-up, optimizer (incl. ``encoder_lr_scale`` and LP-FT), schedule and step.

    An epoch is a pass over the labeled images (``cfg.min_steps`` respected); every step takes the
    next ``cfg.mu * B`` unlabeled images (cycled in a seeded random order), one weak view (crop and
    flip, as SimCLRv2) seen by both networks. The teacher's targets come from a forward under
    ``torch.no_grad`` in eval mode; with ``labeled_weight > 0`` the student's forward concatenates
    the labeled batch's weak views first.

    Args:
        student: the classifier to train (e.g. the SSL encoder with a fresh head, or a copy of the
            teacher); must not share parameters with the teacher.
        teacher: a trained classifier with the same classes; frozen and put in eval mode in place
            (``freeze_teacher``), moved to the student's device; its weights never change.
        x_labeled: (N, C, H, W) uint8; y_labeled: (N,) their classes.
        x_unlabeled: (M, C, H, W) uint8 images whose labels are never seen.
        cfg: the hyperparameters.
        val: optional (images, labels) scored after every epoch (``val_top1``).
        on_epoch: called with (epoch, record) after every epoch.

    Returns:
        Per-epoch records: ``epoch``, ``train_loss``, ``distill_loss`` (KL to the teacher),
        ``agreement`` (fraction of unlabeled images where the student's argmax is the teacher's),
        ``labeled_loss`` (with ``labeled_weight > 0``), ``images_per_sec`` (the unlabeled images, plus
        the labeled ones when used) and, with ``val``, ``val_top1``. A non-finite loss is reported,
        not raised.
    """
    if cfg.mu < 1:
        raise ValueError(f"mu={cfg.mu}: distillation needs at least one unlabeled image per labeled one")
    teacher_params = {id(p) for p in teacher.parameters()}
    if any(id(p) in teacher_params for p in student.parameters()):
        raise ValueError("the student shares parameters with the teacher; distil into a copy (copy.deepcopy)")
    freeze_teacher(teacher)
    use_labels = cfg.labeled_weight > 0
    names = ("distill_loss", "agreement") + (("labeled_loss",) if use_labels else ())
    rt, sched = setup_classifier(student, x_labeled.shape[0], cfg)
    teacher.to(rt.device)
    if rt.channels_last:
        teacher.to(memory_format=torch.channels_last)
    rng = semi_random(rt.device, x_unlabeled.shape[0], cfg.seed)
    y_labeled = y_labeled.to(rt.device)
    t = cfg.temperature

    def step(idx_l: Tensor, idx_u: Tensor) -> tuple[Tensor, list[Tensor]]:
        u = weak_view(x_unlabeled[idx_u], rt, cfg.crop_scale, rng.unlabeled)  # (mu*B, C, H, W)
        with torch.no_grad(), autocast(rt.device, rt.amp_dtype):
            teacher_logits = teacher(u)  # (mu*B, K)
        targets = soft_targets(teacher_logits, t)  # (mu*B, K), rows sum to 1
        inputs, b = u, 0
        if use_labels:
            x_l = weak_view(x_labeled[idx_l], rt, cfg.crop_scale, rng.crop)  # (B, C, H, W)
            inputs, b = training.to_memory_format(torch.cat([x_l, u]), rt.channels_last), len(idx_l)
        parts: list[Tensor] = []

        def loss_fn(logits: Tensor) -> Tensor:  # logits: (b + mu*B, K), labeled first
            kl = distill_loss(logits[b:], targets, t)
            agreement = (logits[b:].argmax(1) == teacher_logits.argmax(1)).float().mean()
            parts.extend([kl.detach(), agreement])
            if not use_labels:
                return kl
            labeled = F.cross_entropy(logits[:b].float(), y_labeled[idx_l.to(rt.device)])
            parts.append(labeled.detach())
            return kl + cfg.labeled_weight * labeled

        loss, _ = training.train_step(rt, inputs, loss_fn)
        return loss, parts

    def run_epoch(epoch: int) -> dict[str, float]:
        return semi_epoch(rt, student, cfg, sched, epoch, x_labeled.shape[0], cfg.mu, rng.order, rng.stream, step, names,
                          labeled_used=use_labels)

    return fit(student, rt, sched, cfg, run_epoch, val, on_epoch)
