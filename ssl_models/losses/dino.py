"""DINO's self-distillation loss: "Emerging Properties in Self-Supervised Vision Transformers"
(Caron et al., ICCV 2021, arXiv:2104.14294).

Across workers the loss is per sample (each worker's local mean; their mean is the one-process
loss) and the center moves by the global batch's mean teacher output: all-reduced, as the
official ``update_center``, so every worker keeps the same center.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ssl_models import dist


def dino_teacher_temperature(step: int, warmup_steps: int, start: float = 0.04, end: float = 0.07) -> float:
    """The teacher temperature: linear warmup from ``start`` to ``end`` over ``warmup_steps``, then
    constant (paper: 0.04 -> 0.07 over the first 30 epochs)."""
    if step >= warmup_steps:
        return end
    return start + (end - start) * max(step, 0) / warmup_steps


class DINOLoss(nn.Module):
    """Cross-entropy between the centred, sharpened teacher distribution on the global crops and the
    student distribution on every other crop.

    Args:
        out_dim: dimension of the head's output (the number of "prototypes").
        student_temp: student softmax temperature (paper: 0.1).
        center_momentum: EMA momentum of the teacher-output center (paper: 0.9).
    """

    def __init__(self, out_dim: int, student_temp: float = 0.1, center_momentum: float = 0.9) -> None:
        super().__init__()
        self.student_temp = student_temp
        self.center_momentum = center_momentum
        self.register_buffer("center", torch.zeros(1, out_dim))

    def forward(self, student_out: list[Tensor], teacher_out: list[Tensor], teacher_temp: float | Tensor) -> Tensor:
        """Args:
            student_out: one (N, out_dim) tensor per crop, global crops first.
            teacher_out: one (N, out_dim) tensor per global crop (no gradient).
            teacher_temp: the teacher's softmax temperature.

        Returns:
            Scalar loss; updates the center when training.
        """
        teacher_probs = [F.softmax((t.float() - self.center) / teacher_temp, dim=-1) for t in teacher_out]
        student_logp = [F.log_softmax(s.float() / self.student_temp, dim=-1) for s in student_out]
        total, n_terms = student_logp[0].new_zeros(()), 0
        for iq, q in enumerate(teacher_probs):
            for v, logp in enumerate(student_logp):
                if v == iq:
                    continue  # we skip cases where student and teacher operate on the same view
                total = total + (-(q * logp).sum(-1)).mean()
                n_terms += 1
        if self.training:
            self.update_center(torch.cat(teacher_out))
        return total / n_terms

    @torch.no_grad()
    def update_center(self, teacher_out: Tensor) -> None:
        """``center = m * center + (1 - m) * mean(teacher_out)``; teacher_out: (M, out_dim), the mean
        over every worker's (equal-sized) batch."""
        batch_center = dist.all_reduce_mean(teacher_out.float().mean(0, keepdim=True))
        self.center.mul_(self.center_momentum).add_(batch_center, alpha=1.0 - self.center_momentum)
