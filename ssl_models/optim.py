"""LARS: "Large Batch Training of Convolutional Networks" (You, Gitman & Ginsburg, 2017,
arXiv:1708.03888), the optimizer SimCLR, BYOL, Barlow Twins, VICReg and SwAV train with."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

if TYPE_CHECKING:
    from ssl_models.engine import TrainConfig


class LARS(torch.optim.Optimizer):
    """SGD with momentum whose step for each parameter tensor is scaled by its trust ratio
    ``trust_coefficient * ||w|| / ||g + weight_decay * w||`` (1 where either norm is 0).

    As in SimCLR and BYOL, parameter groups with ``lars_exclude=True`` (the engine puts biases and
    normalization parameters there, with no weight decay) skip the scaling: plain SGD with momentum.

    Args:
        params: parameters or parameter groups.
        lr: learning rate (SimCLR: 0.3 x batch / 256; BYOL: 0.2 x batch / 256).
        momentum: paper 0.9.
        weight_decay: added to the gradient before the trust ratio (SimCLR 1e-6, BYOL 1.5e-6).
        trust_coefficient: paper's eta, 0.001.
        eps: keeps the ratio finite.
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        trust_coefficient: float = 0.001,
        eps: float = 1e-8,
    ) -> None:
        if lr < 0 or momentum < 0 or weight_decay < 0 or trust_coefficient <= 0:
            raise ValueError(f"LARS: invalid lr={lr}, momentum={momentum}, weight_decay={weight_decay} "
                             f"or trust_coefficient={trust_coefficient}")
        defaults = dict(lr=lr, momentum=momentum, weight_decay=weight_decay, trust_coefficient=trust_coefficient,
                        eps=eps, lars_exclude=False)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                d = p.grad.add(p, alpha=group["weight_decay"]) if group["weight_decay"] else p.grad.clone()
                if not group["lars_exclude"]:
                    w_norm, d_norm = torch.linalg.vector_norm(p), torch.linalg.vector_norm(d)
                    trust = torch.where(
                        (w_norm > 0) & (d_norm > 0), group["trust_coefficient"] * w_norm / (d_norm + group["eps"]), 1.0
                    )
                    d.mul_(trust)
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = d
                else:
                    state["momentum_buffer"].mul_(group["momentum"]).add_(d)
                p.add_(state["momentum_buffer"], alpha=-group["lr"])
        return loss


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Trainable weights (decayed) and biases/norm parameters (not decayed), in that order."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim > 1 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """The optimizer ``cfg.optimizer`` over ``_param_groups(model)`` (lr set by the schedule)."""
    groups = _param_groups(model, cfg.weight_decay)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=True)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr)
    if cfg.optimizer == "lars":
        decay, no_decay = groups
        return LARS([decay, {**no_decay, "lars_exclude": True}], lr=cfg.lr, momentum=cfg.momentum)
    raise ValueError(f"unknown optimizer {cfg.optimizer!r}; choose sgd, adamw or lars")
