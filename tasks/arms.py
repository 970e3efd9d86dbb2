"""The fine-tuning arms: every way the pipeline turns the few labels (and the unlabeled pool) into
a classifier, side by side on the same labels, budget and number of tuning trials.

| arm | starts from | learns from |
|---|---|---|
| ``ssl_finetune`` | the SSL encoder | the labels: full fine-tuning, the encoder at a smaller lr than the head |
| ``ssl_fixmatch`` | the SSL encoder | the labels and the pool: FixMatch consistency (SelfMatch's recipe) |
| ``ssl_distill`` | the SSL encoder | the pool labelled softly by the ``ssl_finetune`` model (SimCLRv2) |
| ``supervised`` | random init | the labels: the baseline with no pretraining |
| ``fixmatch`` | random init | the labels and the pool: what a team would pick instead of SSL |

Tune and finetune build and train every arm through ``new_classifier`` and ``train_arm``.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any, get_args

import torch
from torch import Tensor

from ssl_models.classifier import (
    Classifier,
    FinetuneConfig,
    classifier_schedule,
    train_classifier,
)
from ssl_models.distill import DistillConfig, train_distill
from ssl_models.fixmatch import FixMatchConfig, train_fixmatch
from tasks.config import ArmName, FinetuneParams
from tasks.models import build_encoder

TUNED_KEYS = ("lr", "weight_decay", "epochs", "encoder_lr_scale")  # what tune searches, per arm


@dataclass(frozen=True)
class Arm:
    name: str
    pretrained: bool  # starts from the SSL encoder (else from a random init)
    method: str  # "supervised", "fixmatch" or "distill"
    teacher: str | None = None  # the arm whose trained model teaches this one


ARMS: dict[str, Arm] = {a.name: a for a in (
    Arm("ssl_finetune", True, "supervised"),
    Arm("ssl_fixmatch", True, "fixmatch"),
    Arm("ssl_distill", True, "distill", teacher="ssl_finetune"),
    Arm("supervised", False, "supervised"),
    Arm("fixmatch", False, "fixmatch"),
)}
assert tuple(ARMS) == get_args(ArmName), "tasks/config.py's ArmName and ARMS must name the same arms, in order"


def new_classifier(arm: str, encoder_blob: Mapping[str, Any], num_classes: int, seed: int) -> Classifier:
    """A classifier for ``arm``: the SSL encoder's weights (``pretrained`` arms) or a seeded random
    init of the same architecture, and a fresh linear head."""
    torch.manual_seed(seed)
    encoder = build_encoder(encoder_blob["spec"])
    if ARMS[arm].pretrained:
        encoder.load_state_dict(encoder_blob["state_dict"])
    return Classifier(encoder, num_classes)


def arm_config(arm: str, tuned: Mapping[str, Any], cfg: FinetuneParams, *, batch_size: int, min_steps: int,
               seed: int) -> Any:
    """The training config of ``arm`` with a tuned configuration (``TUNED_KEYS``)."""
    common = {**{k: tuned[k] for k in TUNED_KEYS}, "batch_size": batch_size, "min_steps": min_steps, "seed": seed}
    method = ARMS[arm].method
    if method == "fixmatch":
        return FixMatchConfig(**common, **cfg.fixmatch.model_dump())
    if method == "distill":
        return DistillConfig(**common, **cfg.distill.model_dump())
    return FinetuneConfig(**common)


def recipe(arm: str, train_cfg: FinetuneConfig, init: Classifier, x: Tensor, y: Tensor, data_version: str,
           teacher: Classifier | None = None) -> str:
    """A fingerprint of one training of ``arm``: what ``train_arm`` computes from ``init`` (its
    initial weights) on labeled ``x``/``y`` and the pool of data version ``data_version``, with
    ``train_cfg`` (``min_steps`` counted as the steps it makes) and ``teacher``. Two trainings with
    the same recipe compute the same model, but for float rounding when they run on different
    thread counts: a tuning trial's model serves finetune when their recipes match."""
    cfg = asdict(train_cfg)
    cfg["min_steps"] = classifier_schedule(x.shape[0], train_cfg).total_steps  # 0 and 200 may make the same steps
    h = hashlib.sha1(repr((arm, sorted(cfg.items()), data_version)).encode())
    for tensors in (init.state_dict().values(), (x, y), teacher.state_dict().values() if teacher else ()):
        for t in tensors:
            h.update(f"{t.dtype}{tuple(t.shape)}".encode())
            h.update(_bytes(t))
    return h.hexdigest()


def _bytes(t: Tensor) -> bytes:
    return t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes()


def relative_step_cost(arm: str, cfg: FinetuneParams) -> float:
    """What a training step of ``arm`` costs beside a supervised one: ~1 + 2 mu for the arms that
    also pass ``mu`` unlabeled images per labeled one twice (FixMatch's weak and strong views; the
    teacher's and the student's passes in distillation)."""
    method = ARMS[arm].method
    mu = cfg.fixmatch.mu if method == "fixmatch" else cfg.distill.mu if method == "distill" else 0
    return 1.0 + 2.0 * mu


def train_arm(arm: str, model: Classifier, x: Tensor, y: Tensor, pool: Tensor, train_cfg: Any,
              teacher: Classifier | None = None, val: tuple[Tensor, Tensor] | None = None,
              on_epoch: Callable[[int, dict[str, float]], None] | None = None) -> list[dict[str, float]]:
    """Train ``model`` as ``arm`` on labeled ``x``/``y`` (uint8 images, labels) and the unlabeled
    ``pool`` (uint8 images; the whole train split); returns the per-epoch history."""
    method = ARMS[arm].method
    if method == "fixmatch":
        return train_fixmatch(model, x, y, pool, train_cfg, val=val, on_epoch=on_epoch)
    if method == "distill":
        if teacher is None:
            raise ValueError(f"{arm} needs its teacher, the trained {ARMS[arm].teacher} model")
        return train_distill(model, teacher, x, y, pool, train_cfg, val=val, on_epoch=on_epoch)
    return train_classifier(model, x, y, train_cfg, val=val, on_epoch=on_epoch)


def choose(arms: Mapping[str, Mapping[str, float]]) -> dict[str, Any]:
    """The arm that ships: the highest validation top-1 (never the test split's); ties go to the
    arm named first, and so does a fraction too small to hold out validation images (NaN scores). ``pretraining_paid_off`` says whether it starts from the SSL encoder (None
    when the run trained no arm of the other kind to compare with).

    Args:
        arms: ``{arm: {"val_top1": ..., ...}}``, in the arms' order.
    """
    def score(arm: str) -> float:
        value = arms[arm]["val_top1"]
        return -1.0 if math.isnan(value) else value

    selected = max(arms, key=score)
    kinds = {ARMS[arm].pretrained for arm in arms}
    best_of_kind = {kind: max((a for a in arms if ARMS[a].pretrained == kind), key=score) for kind in kinds}
    return {"selected": selected, "pretraining_paid_off": ARMS[selected].pretrained if len(kinds) == 2 else None,
            "best_ssl_arm": best_of_kind.get(True), "best_baseline_arm": best_of_kind.get(False)}
