"""Momentum (EMA) encoders: the update and its schedule as small pure functions, shared by MoCo
(He et al., 2020), BYOL (Grill et al., 2020) and DINO (Caron et al., 2021)."""

from __future__ import annotations

import copy

import torch
from torch import nn

from ssl_models.schedules import cosine_schedule


def frozen_copy(module: nn.Module) -> nn.Module:
    """A deep copy of ``module`` whose parameters take no gradient (a momentum encoder's start)."""
    ema = copy.deepcopy(module)
    ema.requires_grad_(False)
    return ema


@torch.no_grad()
def update_momentum(model: nn.Module, ema_model: nn.Module, m: float) -> None:
    """Exponential moving average of parameters, in place: ``ema = m * ema + (1 - m) * model``.

    Buffers (BatchNorm statistics) are left alone: each network keeps its own.

    Args:
        model: the online network (trained by gradient).
        ema_model: the momentum network, same architecture.
        m: momentum in [0, 1]; 1 keeps ``ema_model`` unchanged.
    """
    for p, p_ema in zip(model.parameters(), ema_model.parameters(), strict=True):
        p_ema.mul_(m).add_(p.detach(), alpha=1.0 - m)


def momentum_schedule(step: int, total_steps: int, base: float = 0.996, end: float = 1.0) -> float:
    """BYOL's momentum schedule, ``1 - (1 - base) * (cos(pi * step / total_steps) + 1) / 2``: from
    ``base`` at step 0 up to ``end`` at the last step (Grill et al., 2020, section 3.2)."""
    return cosine_schedule(step, total_steps, base, end)
