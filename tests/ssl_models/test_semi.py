"""Semi-supervised fine-tuning (``ssl_models.fixmatch``, ``ssl_models.distill``, ``ssl_models.semi``)
and the robust fine-tuning protocol of ``train_classifier`` (encoder lr scale, LP-FT): FixMatch's
mask and pseudo-labels, the strong view and its cutout, the frozen teacher, learning and determinism."""

from __future__ import annotations

import inspect

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ssl_models import fixmatch, training
from ssl_models.augment import cutout, to_float
from ssl_models.backbones import Encoder, SmallCNN
from ssl_models.classifier import (
    Classifier,
    FinetuneConfig,
    accuracy,
    classifier_schedule,
    encoder_lr_factor,
    train_classifier,
)
from ssl_models.distill import DistillConfig, distill_loss, soft_targets, train_distill
from ssl_models.fixmatch import (
    FixMatchConfig,
    fixmatch_loss,
    strong_view,
    train_fixmatch,
)
from ssl_models.semi import IndexStream, frozen_bn_statistics
from tests.fixtures import balanced_labels, separable_images

CLASSES = 4
COMMON = {"epochs": 2, "lr": 5e-3, "batch_size": 8, "min_steps": 0, "crop_scale": (0.8, 1.0), "precision": "fp32",
          "device": "cpu"}


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def separable(n: int, seed: int, side: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 (n, 1, side, side) images whose bright square's row is the class (flips keep it), and the classes."""
    rng = np.random.default_rng(seed)
    labels = balanced_labels(n, CLASSES, rng)
    images = separable_images(labels * 4, side, rng)  # square in row ``label``, first column
    return torch.from_numpy(images)[:, None], torch.from_numpy(labels).long()


def make_model(seed: int = 0, width: int = 8) -> Classifier:
    torch.manual_seed(seed)
    return Classifier(Encoder(SmallCNN(1, width), [0.3], [0.3]), CLASSES)


def fm_config(**kw) -> FixMatchConfig:
    return FixMatchConfig(**{**COMMON, "mu": 2, **kw})


def without_speed(history: list[dict[str, float]]) -> list[dict[str, float]]:
    return [{k: v for k, v in h.items() if k != "images_per_sec"} for h in history]


def same_weights(a: nn.Module, b: nn.Module) -> bool:
    return all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values(), strict=True))


# ----------------------------------------------------------------------------------- augmentation
def test_cutout_fills_one_clipped_square_per_image() -> None:
    images = torch.rand(32, 3, 16, 16, generator=gen(0)) * 0.5 + 0.5  # never 0
    out = cutout(images, size=0.5, fill=0.0, generator=gen(1))
    filled = out == 0  # (N, 3, H, W)
    assert torch.equal(filled[:, 0], filled[:, 1]) and torch.equal(filled[:, 0], filled[:, 2])  # all channels
    mask = filled[:, 0]
    rows, cols = mask.any(2), mask.any(1)  # (N, H), (N, W)
    assert torch.equal(mask, rows[:, :, None] & cols[:, None, :])  # an axis-aligned rectangle
    heights, widths = rows.sum(1), cols.sum(1)
    assert heights.max() <= 8 and widths.max() <= 8 and heights.min() >= 4 and widths.min() >= 4  # clipped at most in half
    assert (heights == 8).any() and len({tuple(r.tolist()) for r in rows}) > 5  # whole squares, in varied places
    assert torch.equal(out[~filled], images[~filled])
    assert torch.equal(out, cutout(images, size=0.5, fill=0.0, generator=gen(1)))
    assert torch.equal(cutout(images, p=0.0, generator=gen(1)), images)


@pytest.mark.parametrize("channels", [1, 3])
def test_strong_view_shape_range_and_seed(channels: int) -> None:
    images = torch.randint(0, 256, (12, channels, 16, 16), dtype=torch.uint8, generator=gen(0))
    cfg = fm_config()
    out = strong_view(images, cfg, gen(3))
    assert out.shape == images.shape and out.dtype == torch.float32
    assert out.min() >= 0 and out.max() <= 1
    assert torch.equal(out, strong_view(images, cfg, gen(3)))
    assert ((out - to_float(images)).abs().mean(dim=(1, 2, 3)) > 0.02).all()  # every image changed


# ---------------------------------------------------------------------------------- FixMatch loss
def loss_inputs(seed: int = 0, b: int = 4, n_u: int = 12):
    g = gen(seed)
    logits_l = torch.randn(b, CLASSES, generator=g, requires_grad=True)
    labels = torch.randint(0, CLASSES, (b,), generator=g)
    weak = (torch.randn(n_u, CLASSES, generator=g) * 4).requires_grad_()
    strong = torch.randn(n_u, CLASSES, generator=g, requires_grad=True)
    return logits_l, labels, weak, strong


def test_fixmatch_loss_no_confident_prediction_no_unlabeled_loss() -> None:
    logits_l, labels, weak, strong = loss_inputs()
    out = fixmatch_loss(logits_l, labels, weak, strong, threshold=1.01)
    assert out.unlabeled.item() == 0.0 and out.mask_rate.item() == 0.0 and not out.mask.any()
    assert torch.equal(out.total, F.cross_entropy(logits_l, labels))
    out.total.backward()
    assert torch.equal(strong.grad, torch.zeros_like(strong)) and weak.grad is None


def test_fixmatch_loss_full_mask_and_pseudo_labels_from_weak_only() -> None:
    logits_l, labels, weak, strong = loss_inputs()
    out = fixmatch_loss(logits_l, labels, weak, strong, threshold=0.0, lambda_u=0.5)
    assert out.mask.all() and out.mask_rate.item() == 1.0
    assert torch.equal(out.pseudo_labels, weak.argmax(1))
    expected = F.cross_entropy(strong, weak.argmax(1))
    assert torch.allclose(out.unlabeled, expected)
    assert torch.allclose(out.total, F.cross_entropy(logits_l, labels) + 0.5 * expected)
    out.total.backward()
    assert weak.grad is None and strong.grad.abs().sum() > 0  # the targets get no gradient


def test_fixmatch_loss_averages_over_the_whole_unlabeled_batch() -> None:
    logits_l, labels, weak, strong = loss_inputs()
    probs = torch.softmax(weak.detach(), 1).max(1).values
    threshold = probs.median().item()
    out = fixmatch_loss(logits_l, labels, weak, strong, threshold=threshold)
    mask = probs >= threshold
    assert 0 < mask.sum() < len(mask) and torch.equal(out.mask, mask)
    per_image = F.cross_entropy(strong, weak.argmax(1), reduction="none")
    assert torch.allclose(out.unlabeled, per_image[mask].sum() / len(mask))  # masked ones count as 0


# ---------------------------------------------------------------------------------- FixMatch loop
@pytest.mark.parametrize(("threshold", "mask_rate"), [(1.01, 0.0), (0.0, 1.0)])
def test_fixmatch_threshold_extremes(threshold: float, mask_rate: float) -> None:
    x, y = separable(16, seed=0)
    u, _ = separable(40, seed=1)
    history = train_fixmatch(make_model(), x, y, u, fm_config(threshold=threshold))
    assert len(history) == 2
    for h in history:
        assert set(h) == {"epoch", "train_loss", "labeled_loss", "unlabeled_loss", "mask_rate", "images_per_sec"}
        assert h["mask_rate"] == mask_rate
        if mask_rate == 0.0:
            assert h["unlabeled_loss"] == 0.0 and h["train_loss"] == h["labeled_loss"]
        else:
            assert h["unlabeled_loss"] > 0 and h["train_loss"] > h["labeled_loss"]


class MarkerEncoder(nn.Module):
    """Features (10, 0) for an all-ones image (the marker), else (0, 10)."""

    out_dim = 2

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(10.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        marked = (x.amin(dim=(1, 2, 3)) > 0.99).float()
        return torch.stack([marked, 1 - marked], 1) * self.scale


@pytest.mark.parametrize("joint_forward", [False, True])
def test_pseudo_labels_come_from_the_weak_view(monkeypatch: pytest.MonkeyPatch, joint_forward: bool) -> None:
    """Only the strong views carry the marker: the model calls them class 0, every weak view class 1
    (confidently). Pseudo-labels from the weak views make the unlabeled loss ~10; had they come from
    the strong views, it would be ~0."""
    monkeypatch.setattr(fixmatch, "strong_view", lambda images, cfg, generator=None: torch.ones_like(to_float(images)))
    model = Classifier(MarkerEncoder(), 2)
    with torch.no_grad():
        model.head.weight.copy_(torch.eye(2))
        model.head.bias.zero_()
    x = torch.randint(0, 200, (8, 1, 8, 8), dtype=torch.uint8, generator=gen(0))
    y = torch.tensor([0, 1] * 4)
    u = torch.randint(0, 200, (20, 1, 8, 8), dtype=torch.uint8, generator=gen(1))
    cfg = fm_config(lr=0.0, weight_decay=0.0, epochs=1, joint_forward=joint_forward)
    (h,) = train_fixmatch(model, x, y, u, cfg)
    assert h["mask_rate"] == 1.0
    assert h["unlabeled_loss"] == pytest.approx(10.0, abs=1e-3)


def test_fixmatch_sees_no_unlabeled_labels() -> None:
    params = list(inspect.signature(train_fixmatch).parameters)
    assert params == ["model", "x_labeled", "y_labeled", "x_unlabeled", "cfg", "val", "on_epoch"]
    assert list(inspect.signature(train_distill).parameters)[:6] == [
        "student", "teacher", "x_labeled", "y_labeled", "x_unlabeled", "cfg"]


@pytest.mark.parametrize("joint_forward", [False, True])
def test_fixmatch_deterministic_and_learns(joint_forward: bool) -> None:
    x, y = separable(16, seed=0)
    u, _ = separable(48, seed=1)
    val = separable(32, seed=2)
    cfg = fm_config(epochs=15, lr=1e-2, threshold=0.6, joint_forward=joint_forward)
    a, b = make_model(), make_model()
    ha = train_fixmatch(a, x, y, u, cfg, val=val)
    hb = train_fixmatch(b, x, y, u, cfg, val=val)
    assert without_speed(ha) == without_speed(hb) and same_weights(a, b)
    assert all("val_top1" in h and h["images_per_sec"] > 0 for h in ha)
    assert ha[-1]["labeled_loss"] < 0.5 * ha[0]["labeled_loss"] and ha[-1]["val_top1"] >= 0.9
    assert ha[0]["mask_rate"] == 0 and ha[-1]["mask_rate"] > 0.2  # pseudo-labels in use by the end


def test_frozen_bn_statistics_normalizes_with_the_batch_and_restores() -> None:
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4)).train()
    x = torch.randn(6, 1, 8, 8, generator=gen(0)) * 3 + 2
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad(), frozen_bn_statistics(model):
        inside = model(x)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    with torch.no_grad():
        assert torch.equal(inside, model(x))  # batch statistics, as in train mode
    assert not torch.equal(model[1].running_mean, before["1.running_mean"])  # that one counted


def test_index_stream_cycles_through_the_pool_in_seeded_orders() -> None:
    stream = IndexStream(10, gen(0))
    first = torch.cat([stream.take(4), stream.take(4), stream.take(2)])
    assert sorted(first.tolist()) == list(range(10))  # one pass: every image once
    big = stream.take(25)  # more than the pool: whole passes plus a part
    assert sorted(big[:10].tolist()) == list(range(10)) and sorted(big[10:20].tolist()) == list(range(10))
    again = IndexStream(10, gen(0))
    assert torch.equal(torch.cat([again.take(10), again.take(25)]), torch.cat([first, big]))
    with pytest.raises(ValueError, match="empty"):
        IndexStream(0, gen(0))


# ---------------------------------------------------------------------------------- distillation
def test_soft_targets_are_probability_vectors() -> None:
    logits = torch.randn(16, CLASSES, generator=gen(0)) * 3
    for t in (0.1, 1.0, 4.0):
        p = soft_targets(logits, t)
        assert p.shape == logits.shape and p.dtype == torch.float32
        assert (p >= 0).all() and torch.allclose(p.sum(1), torch.ones(16))
        assert torch.equal(p.argmax(1), logits.argmax(1))
    assert torch.allclose(soft_targets(logits, 1.0), torch.softmax(logits, 1))
    entropy = [-(soft_targets(logits, t) * soft_targets(logits, t).clamp_min(1e-30).log()).sum(1).mean() for t in (0.1, 1, 4)]
    assert entropy[0] < entropy[1] < entropy[2]  # a lower temperature sharpens
    assert torch.allclose(soft_targets(logits.bfloat16(), 1.0).sum(1), torch.ones(16))


def test_distill_loss_is_zero_at_the_teacher_and_has_soft_cross_entropy_gradients() -> None:
    teacher = torch.randn(8, CLASSES, generator=gen(0))
    targets = soft_targets(teacher, 0.5)
    assert distill_loss(teacher, targets, 0.5).abs() < 1e-6
    student = torch.randn(8, CLASSES, generator=gen(1), requires_grad=True)
    distill_loss(student, targets, 0.5).backward()
    ce_student = student.detach().clone().requires_grad_()
    (-(targets * F.log_softmax(ce_student / 0.5, 1)).sum(1).mean()).backward()
    assert torch.allclose(student.grad, ce_student.grad, atol=1e-6)


def trained_teacher() -> tuple[Classifier, tuple[torch.Tensor, torch.Tensor]]:
    x, y = separable(64, seed=3)
    teacher = make_model(seed=5)
    train_classifier(teacher, x, y, FinetuneConfig(**{**COMMON, "epochs": 8, "batch_size": 16}))
    return teacher, separable(48, seed=4)


def test_distill_teacher_frozen_and_student_learns() -> None:
    teacher, val = trained_teacher()
    teacher.train().requires_grad_(True)  # as a caller might hand it over
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    teacher_acc = accuracy(teacher, *val, precision="fp32")
    x, y = separable(8, seed=0)
    u, _ = separable(64, seed=1)
    student = make_model(seed=9)
    cfg = DistillConfig(**{**COMMON, "epochs": 24, "mu": 4})  # SimCLRv2's temperature 0.1
    history = train_distill(student, teacher, x, y, u, cfg, val=val)
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    assert all(torch.equal(v, before[k]) for k, v in teacher.state_dict().items())  # weights and BN statistics
    assert set(history[0]) == {"epoch", "train_loss", "distill_loss", "agreement", "images_per_sec", "val_top1"}
    assert history[-1]["distill_loss"] < 0.1 * history[0]["distill_loss"]
    assert history[-1]["agreement"] > max(0.9, history[0]["agreement"] + 0.3)
    assert teacher_acc == 1.0 and history[-1]["val_top1"] > 0.6  # chance: 0.25; 8 labels, the rest from the teacher


def test_distill_deterministic_with_labels() -> None:
    teacher = make_model(seed=5)
    x, y = separable(16, seed=0)
    u, _ = separable(32, seed=1)
    cfg = DistillConfig(**{**COMMON, "labeled_weight": 0.5})
    a, b = make_model(seed=1), make_model(seed=1)
    ha, hb = train_distill(a, teacher, x, y, u, cfg), train_distill(b, teacher, x, y, u, cfg)
    assert without_speed(ha) == without_speed(hb) and same_weights(a, b)
    assert all(h["labeled_loss"] > 0 for h in ha)
    assert ha[0]["train_loss"] == pytest.approx(ha[0]["distill_loss"] + 0.5 * ha[0]["labeled_loss"])


def test_distill_refuses_a_student_sharing_the_teacher() -> None:
    model = make_model()
    x, y = separable(8, seed=0)
    with pytest.raises(ValueError, match="shares parameters"):
        train_distill(model, model, x, y, x, DistillConfig(**COMMON))


# ------------------------------------------------------------------- robust fine-tuning protocol
def spy_lrs(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, float]]:
    """The learning rate of every parameter group at every ``training.train_step``."""
    seen: list[dict[str, float]] = []
    real = training.train_step

    def spy(rt, *args, **kwargs):
        seen.append({g["name"]: g["lr"] for g in rt.optimizer.param_groups})
        return real(rt, *args, **kwargs)

    monkeypatch.setattr(training, "train_step", spy)
    return seen


def test_encoder_lr_scale_sets_the_encoder_group(monkeypatch: pytest.MonkeyPatch) -> None:
    seen = spy_lrs(monkeypatch)
    x, y = separable(16, seed=0)
    train_classifier(make_model(), x, y, FinetuneConfig(**{**COMMON, "encoder_lr_scale": 0.1}))
    assert len(seen) == 4 and all(set(s) == {"encoder", "head"} for s in seen)
    assert all(s["head"] > 0 and s["encoder"] == pytest.approx(0.1 * s["head"]) for s in seen)
    seen.clear()
    train_fixmatch(make_model(), x, y, x, fm_config(encoder_lr_scale=0.25))  # the semi trainers share it
    assert len(seen) == 4 and all(s["encoder"] == pytest.approx(0.25 * s["head"]) for s in seen)
    seen.clear()
    train_classifier(make_model(), x, y, FinetuneConfig(**{**COMMON, "freeze_encoder": True}))
    assert all(set(s) == {"head"} for s in seen)


def test_linear_probe_then_fine_tune(monkeypatch: pytest.MonkeyPatch) -> None:
    """LP-FT: the first epochs leave the encoder (weights and BatchNorm statistics) untouched while the
    head learns; then the encoder trains, its learning rate warming up again."""
    seen = spy_lrs(monkeypatch)
    x, y = separable(32, seed=0)
    model = make_model()
    start = {k: v.clone() for k, v in model.state_dict().items()}
    snapshots: list[dict[str, torch.Tensor]] = []
    cfg = FinetuneConfig(**{**COMMON, "epochs": 4, "batch_size": 4, "linear_probe_epochs": 2, "encoder_lr_scale": 0.5})
    train_classifier(model, x, y, cfg, on_epoch=lambda e, m: snapshots.append(
        {k: v.clone() for k, v in model.state_dict().items()}))
    encoder_keys = [k for k in start if k.startswith("encoder.")]
    for snap in snapshots[:2]:  # the probe
        assert all(torch.equal(snap[k], start[k]) for k in encoder_keys)
        assert not torch.equal(snap["head.weight"], start["head.weight"])
    assert any(not torch.equal(snapshots[-1][k], start[k]) for k in encoder_keys)
    steps_per_epoch = 8  # 32 steps, 3 of warmup
    assert len(seen) == 32 and all(s["encoder"] == 0.0 for s in seen[: 2 * steps_per_epoch])
    sched = classifier_schedule(32, cfg)
    for step, s in enumerate(seen):
        assert s["encoder"] == pytest.approx(s["head"] * encoder_lr_factor(step, sched, cfg))
    assert 0 < seen[2 * steps_per_epoch]["encoder"] < 0.5 * seen[2 * steps_per_epoch]["head"]  # re-warming


def test_encoder_lr_factor() -> None:
    cfg = FinetuneConfig(epochs=10, batch_size=10, min_steps=0, encoder_lr_scale=0.1)
    sched = classifier_schedule(100, cfg)  # 10 steps per epoch, 100 steps, 10 warmup
    assert [encoder_lr_factor(s, sched, cfg) for s in (0, 50, 99)] == [0.1, 0.1, 0.1]
    lp = FinetuneConfig(epochs=10, batch_size=10, min_steps=0, encoder_lr_scale=0.1, linear_probe_epochs=3)
    assert encoder_lr_factor(29, sched, lp) == 0.0
    assert encoder_lr_factor(30, sched, lp) == pytest.approx(0.01)
    assert encoder_lr_factor(39, sched, lp) == pytest.approx(0.1) and encoder_lr_factor(80, sched, lp) == pytest.approx(0.1)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_cuda_fixmatch_and_distill(precision: str) -> None:
    x, y = separable(16, seed=0)
    u, _ = separable(40, seed=1)
    val = separable(16, seed=2)
    for joint in (False, True):
        history = train_fixmatch(make_model(), x, y, u, fm_config(precision=precision, device="cuda", threshold=0.5,
                                                                  joint_forward=joint), val=val)
        assert all(np.isfinite(h["train_loss"]) and 0 <= h["mask_rate"] <= 1 for h in history)
    teacher = make_model(seed=5)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    cfg = DistillConfig(**{**COMMON, "precision": precision, "device": "cuda", "labeled_weight": 1.0})
    history = train_distill(make_model(seed=1), teacher, x, y, u, cfg, val=val)
    assert all(np.isfinite(h["train_loss"]) for h in history)
    assert all(torch.equal(v.cpu(), before[k]) for k, v in teacher.state_dict().items())
