"""FixMatch (Sohn et al., 2020, arXiv:2001.07685): cross-entropy on the labeled batch plus, on the
unlabeled batch, cross-entropy of the model on a strongly augmented view against its own confident
prediction (the pseudo-label) on a weakly augmented view. From an SSL encoder it is the
consistency fine-tuning of SelfMatch (Kim et al., 2021, arXiv:2101.06480); from scratch, the
semi-supervised baseline."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ssl_models import training
from ssl_models.augment import (
    color_jitter,
    cutout,
    random_resized_crop,
    solarize,
    to_float,
)
from ssl_models.classifier import (
    Classifier,
    EpochHook,
    FinetuneConfig,
    fit,
    setup_classifier,
    weak_view,
)
from ssl_models.device import autocast
from ssl_models.semi import frozen_bn_statistics, semi_epoch, semi_random

METRICS = ("labeled_loss", "unlabeled_loss", "mask_rate")


@dataclass
class FixMatchConfig(FinetuneConfig):
    """``FinetuneConfig`` (optimizer, schedule, weak augmentation ``crop_scale``, LP-FT, ...) plus:

    Attributes:
        mu: unlabeled images per labeled image in a step (FixMatch: 7). A step costs about
            ``1 + 2 * mu`` labeled steps: lower it on a small CPU.
        threshold: confidence (max softmax probability) a pseudo-label needs (FixMatch: 0.95).
        lambda_u: weight of the unlabeled loss (FixMatch: 1).
        joint_forward: pseudo-labels from one forward of [labeled weak, unlabeled weak, unlabeled
            strong], as the reference implementation (BatchNorm statistics over all three; the
            backward then also runs through the weak views: ~1.5x the step's time on a CPU); False: from a
            separate ``no_grad`` forward of the weak views (BatchNorm on their own batch statistics,
            running statistics left as they were, as USB's ``freeze_bn`` does), then one
            forward-backward of [labeled weak, unlabeled strong].
        strong_crop_scale: area range of the strong view's random resized crop (with flips).
        strong_jitter: brightness, contrast (and saturation, RGB) factors drawn from
            [1 - x, 1 + x] for the strong view.
        strong_solarize_p: probability of solarizing a strong view.
        cutout: side of the strong view's gray square, as a fraction of the image side
            (the reference implementation: 16 of 32 pixels).
    """

    mu: int = 7
    threshold: float = 0.95
    lambda_u: float = 1.0
    joint_forward: bool = False  # False: the cheaper separate pseudo-label forward
    # Strong view (stands in for RandAugment + Cutout): a wider crop, strong colour, solarize, cutout
    strong_crop_scale: tuple[float, float] = (0.2, 1.0)
    strong_jitter: float = 0.8
    strong_solarize_p: float = 0.2
    cutout: float = 0.5


def strong_view(images: Tensor, cfg: FixMatchConfig, generator: torch.Generator | None = None) -> Tensor:
    """FixMatch's strongly augmented view, batched on tensors.

    The paper applies RandAugment (two random ops of 14 at random magnitudes) and then Cutout; here,
    per image: a random resized crop of ``strong_crop_scale`` with a flip (geometry), brightness,
    contrast and saturation jitter of ``strong_jitter`` (p 0.8; grayscale images get brightness and
    contrast), solarization (``strong_solarize_p``), then a gray Cutout square of side ``cutout``.

    Args:
        images: (N, C, H, W) uint8 or float in [0, 1]; C = 1 or 3.

    Returns:
        (N, C, H, W) float32 in [0, 1], on the images' device.
    """
    x = to_float(images)
    x = random_resized_crop(x, x.shape[-1], cfg.strong_crop_scale, generator=generator)
    s = cfg.strong_jitter
    if s > 0:
        x = color_jitter(x, s, s, s, 0.0, p=0.8, generator=generator)
    if cfg.strong_solarize_p > 0:
        x = solarize(x, p=cfg.strong_solarize_p, generator=generator)
    if cfg.cutout > 0:
        x = cutout(x, cfg.cutout, fill=0.5, generator=generator)
    return x


@dataclass(frozen=True)
class FixMatchLoss:
    """The parts of a FixMatch loss (all detached but ``total``).

    Attributes:
        total: labeled + lambda_u * unlabeled, the loss to minimize.
        labeled: mean cross-entropy of the labeled batch.
        unlabeled: masked cross-entropy of the strong views against the pseudo-labels, averaged over
            the whole unlabeled batch (masked ones count as 0, as in the paper).
        mask_rate: fraction of the unlabeled batch whose pseudo-label passed the threshold.
        pseudo_labels: (mu*B,) argmax of the weak views' softmax.
        mask: (mu*B,) bool, confidence >= threshold.
    """

    total: Tensor
    labeled: Tensor
    unlabeled: Tensor
    mask_rate: Tensor
    pseudo_labels: Tensor
    mask: Tensor


def fixmatch_loss(logits_labeled: Tensor, labels: Tensor, logits_weak: Tensor, logits_strong: Tensor,
                  threshold: float = 0.95, lambda_u: float = 1.0) -> FixMatchLoss:
    """FixMatch's loss (Sohn et al., 2020, eq. 2 and 4).

    Args:
        logits_labeled: (B, K) of the labeled weak views; labels: (B,) their classes.
        logits_weak: (mu*B, K) of the unlabeled weak views (only read: no gradient flows into them).
        logits_strong: (mu*B, K) of the strong views of the same images, in the same order.
        threshold: the pseudo-labels' confidence threshold tau.
        lambda_u: the unlabeled loss's weight.
    """
    labeled = F.cross_entropy(logits_labeled.float(), labels)
    probs = torch.softmax(logits_weak.detach().float(), dim=1)  # (mu*B, K)
    confidence, pseudo = probs.max(dim=1)  # (mu*B,), (mu*B,)
    mask = confidence >= threshold
    unlabeled = (F.cross_entropy(logits_strong.float(), pseudo, reduction="none") * mask).mean()
    total = labeled + lambda_u * unlabeled
    return FixMatchLoss(total, labeled.detach(), unlabeled.detach(), mask.float().mean(), pseudo, mask)


def train_fixmatch(
    model: Classifier,
    x_labeled: Tensor,
    y_labeled: Tensor,
    x_unlabeled: Tensor,
    cfg: FixMatchConfig,
    val: tuple[Tensor, Tensor] | None = None,
    on_epoch: EpochHook | None = None,
) -> list[dict[str, float]]:
    """Train ``model`` with FixMatch (Sohn et al., 2020), with ``train_classifier``'s set-up,
    optimizer (incl. ``encoder_lr_scale`` and LP-FT), schedule and step.

    An epoch is a pass over the labeled images (``cfg.min_steps`` respected, as in
    ``train_classifier``); every step also takes the next ``cfg.mu * B`` images of the unlabeled
    pool, cycled through in a seeded random order. The pseudo-labels come from the weak views, in
    the same train mode, without gradient (``cfg.joint_forward`` says in which forward); BatchNorm's
    running statistics are updated once per step.

    Args:
        model: the classifier to train (from an SSL encoder, or from scratch).
        x_labeled: (N, C, H, W) uint8 labeled images; y_labeled: (N,) their classes.
        x_unlabeled: (M, C, H, W) uint8 images whose labels are never seen (the labeled images may
            be among them, as in the paper).
        cfg: the hyperparameters.
        val: optional (images, labels) scored after every epoch (``val_top1``).
        on_epoch: called with (epoch, record) after every epoch.

    Returns:
        Per-epoch records: ``epoch``, ``train_loss``, ``labeled_loss``, ``unlabeled_loss``,
        ``mask_rate``, ``images_per_sec`` (labeled + unlabeled images) and, with ``val``,
        ``val_top1``. A non-finite loss is reported, not raised.
    """
    if cfg.mu < 1:
        raise ValueError(f"mu={cfg.mu}: FixMatch needs at least one unlabeled image per labeled one")
    rt, sched = setup_classifier(model, x_labeled.shape[0], cfg)
    rng = semi_random(rt.device, x_unlabeled.shape[0], cfg.seed)
    y_labeled = y_labeled.to(rt.device)

    def step(idx_l: Tensor, idx_u: Tensor) -> tuple[Tensor, list[Tensor]]:
        x_l = weak_view(x_labeled[idx_l], rt, cfg.crop_scale, rng.crop)  # (B, C, H, W)
        u = x_unlabeled[idx_u].to(rt.device)  # (mu*B, C, H, W) uint8
        u_weak = weak_view(u, rt, cfg.crop_scale, rng.unlabeled)
        u_strong = strong_view(u, cfg, rng.unlabeled)
        b, n_u = len(idx_l), len(idx_u)
        weak_logits = None
        if cfg.joint_forward:
            views = [x_l, u_weak, u_strong]  # logits split below: (B | mu*B weak | mu*B strong, K)
        else:
            with torch.no_grad(), frozen_bn_statistics(model), autocast(rt.device, rt.amp_dtype):
                weak_logits = rt.model(u_weak)  # (mu*B, K)
            views = [x_l, u_strong]  # (B | mu*B strong, K)
        inputs = training.to_memory_format(torch.cat(views), rt.channels_last)
        labels = y_labeled[idx_l.to(rt.device)]
        parts: list[FixMatchLoss] = []

        def loss_fn(logits: Tensor) -> Tensor:
            weak = logits[b : b + n_u] if weak_logits is None else weak_logits
            parts.append(fixmatch_loss(logits[:b], labels, weak, logits[-n_u:], cfg.threshold, cfg.lambda_u))
            return parts[0].total

        loss, _ = training.train_step(rt, inputs, loss_fn)
        return loss, [parts[0].labeled, parts[0].unlabeled, parts[0].mask_rate]

    def run_epoch(epoch: int) -> dict[str, float]:
        return semi_epoch(rt, model, cfg, sched, epoch, x_labeled.shape[0], cfg.mu, rng.order, rng.stream, step, METRICS)

    return fit(model, rt, sched, cfg, run_epoch, val, on_epoch)
