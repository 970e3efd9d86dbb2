"""LARS: the trust ratio, its exclusions, momentum, and the engine training and resuming with it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ssl_models import checkpoint
from ssl_models.engine import TrainConfig, build_optimizer, train
from ssl_models.optim import LARS
from tests.ssl_models.test_engine import config, images, make_simclr, params_of


def test_first_step_is_lr_times_trust_ratio_times_gradient() -> None:
    w = torch.nn.Parameter(torch.tensor([3.0, 4.0]))  # ||w|| = 5
    w.grad = torch.tensor([0.6, 0.8])  # + wd * w = [0.9, 1.2], norm 1.5
    LARS([w], lr=0.1, weight_decay=0.1, trust_coefficient=0.01).step()
    d = torch.tensor([0.9, 1.2])
    torch.testing.assert_close(w.detach(), torch.tensor([3.0, 4.0]) - 0.1 * (0.01 * 5 / 1.5) * d)


def test_momentum_accumulates_scaled_updates() -> None:
    w = torch.nn.Parameter(torch.tensor([1.0, 0.0]))
    opt = LARS([w], lr=1.0, momentum=0.5, trust_coefficient=1.0)
    w.grad = torch.tensor([0.0, 2.0])  # trust = 1 * 1 / 2: update [0, 1]
    opt.step()
    torch.testing.assert_close(w.detach(), torch.tensor([1.0, -1.0]))
    w.grad = torch.tensor([0.0, 2.0])  # ||w|| = sqrt(2): update sqrt(2)/2 * [0, 2]; buffer 0.5 * [0, 1] + that
    opt.step()
    torch.testing.assert_close(w.detach(), torch.tensor([1.0, -1.0 - (0.5 + 2**0.5)]))


def test_excluded_groups_and_zero_norms_are_plain_sgd() -> None:
    bias = torch.nn.Parameter(torch.tensor([1.0, 1.0]))
    zero = torch.nn.Parameter(torch.zeros(2))  # ||w|| = 0: trust ratio 1
    opt = LARS([{"params": [bias], "lars_exclude": True}, {"params": [zero]}], lr=0.1, trust_coefficient=0.001)
    bias.grad, zero.grad = torch.tensor([1.0, -2.0]), torch.tensor([1.0, -2.0])
    opt.step()
    torch.testing.assert_close(bias.detach(), torch.tensor([0.9, 1.2]))
    torch.testing.assert_close(zero.detach(), torch.tensor([-0.1, 0.2]))


def test_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="trust_coefficient"):
        LARS([torch.nn.Parameter(torch.ones(1))], lr=0.1, trust_coefficient=0.0)


def test_engine_builds_lars_excluding_biases_and_norms() -> None:
    method = make_simclr()
    opt = build_optimizer(method, TrainConfig(optimizer="lars", lr=0.3, weight_decay=1e-6))
    assert isinstance(opt, LARS)
    adapted, excluded = opt.param_groups
    assert not adapted["lars_exclude"] and adapted["weight_decay"] == 1e-6
    assert excluded["lars_exclude"] and excluded["weight_decay"] == 0.0
    assert all(p.ndim > 1 for p in adapted["params"]) and all(p.ndim == 1 for p in excluded["params"])
    with pytest.raises(ValueError, match="sgd, adamw or lars"):
        build_optimizer(method, TrainConfig(optimizer="lamb"))


def test_engine_trains_and_resumes_exactly_with_lars(tmp_path: Path) -> None:
    data, cfg = images(48), config(epochs=2, optimizer="lars", lr=2.0, weight_decay=1e-6)
    reference = make_simclr()
    before = params_of(reference)
    full = train(reference, data, cfg, progress=False)
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in full.history)
    after = params_of(reference)
    assert any(not torch.equal(before[k], after[k]) for k in before if before[k].is_floating_point())

    ckpt = tmp_path / "pretrain.pt"
    train(make_simclr(), data, cfg, checkpoint_path=ckpt, progress=False, max_steps=4)
    assert {g["lars_exclude"] for g in checkpoint.load(ckpt)["optimizer"]["param_groups"]} == {False, True}
    resumed = make_simclr(seed=99)
    train(resumed, data, cfg, checkpoint_path=ckpt, progress=False)
    for k, v in params_of(resumed).items():
        assert torch.equal(v, after[k]), k
