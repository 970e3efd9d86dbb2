"""Barlow Twins: "Self-Supervised Learning via Redundancy Reduction" (Zbontar et al., ICML 2021,
arXiv:2103.03230).

Across workers the standardisation and the cross-correlation are the global batch's: each
worker gathers both views' embeddings with gradients (``ssl_models.dist.gather``) and computes the
global loss, the same on every worker. Gathering the (B, D) embeddings rather than all-reducing the
(D, D) matrix keeps the gradient right without care: the official code all-reduces ``c`` without a
gradient, which leaves each worker's gradient 1/world_size of the true one (lightly #1977).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ssl_models import dist


def _standardize(z: Tensor, eps: float = 1e-5) -> Tensor:
    """Per-dimension zero mean, unit (biased) variance over the batch: a BatchNorm without affine."""
    return (z - z.mean(0)) / torch.sqrt(z.var(0, unbiased=False) + eps)


class BarlowTwinsLoss(nn.Module):
    """Push the cross-correlation matrix of the two views' embeddings to the identity:
    ``sum_i (1 - C_ii)^2 + lambda * sum_{i != j} C_ij^2``.

    Args:
        lambda_: weight of the redundancy-reduction (off-diagonal) term (paper: 5.1e-3).
    """

    def __init__(self, lambda_: float = 5.1e-3) -> None:
        super().__init__()
        self.lambda_ = lambda_

    def forward(self, z0: Tensor, z1: Tensor) -> Tensor:
        """Args: z0, z1: (N, D). Returns: scalar loss, 0 for identical whitened embeddings."""
        if dist.is_distributed():  # one collective for both views: (B, 2D)
            z0, z1 = dist.gather(torch.cat([z0, z1], dim=1)).chunk(2, dim=1)
        n = z0.shape[0]
        with torch.autocast(z0.device.type, enabled=False):  # autocast would run the matmul in bf16
            c = _standardize(z0.float()).T @ _standardize(z1.float()) / n  # (D, D) cross-correlation
        on_diag = (torch.diagonal(c) - 1).pow(2).sum()
        off_diag = c.pow(2).sum() - torch.diagonal(c).pow(2).sum()
        return on_diag + self.lambda_ * off_diag
