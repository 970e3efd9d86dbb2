"""VICReg: "Variance-Invariance-Covariance Regularization for Self-Supervised Learning" (Bardes,
Ponce & LeCun, ICLR 2022, arXiv:2105.04906).

Across workers the variance and covariance are the global batch's: as the official code's
``FullGatherLayer``, each worker gathers both views' embeddings with gradients
(``ssl_models.dist.gather``) and computes the global loss, the same on every worker.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ssl_models import dist


def _variance(z: Tensor, eps: float) -> Tensor:
    """Hinge on the per-dimension std: mean_j max(0, 1 - sqrt(Var(z_j) + eps))."""
    return F.relu(1.0 - torch.sqrt(z.var(0) + eps)).mean()


def _covariance(z: Tensor) -> Tensor:
    """Sum of squared off-diagonal covariances, divided by the dimension."""
    n, d = z.shape
    z = z - z.mean(0)
    cov = z.T @ z / (n - 1)  # (D, D)
    return (cov.pow(2).sum() - torch.diagonal(cov).pow(2).sum()) / d


def vicreg_terms(z0: Tensor, z1: Tensor, eps: float = 1e-4) -> tuple[Tensor, Tensor, Tensor]:
    """The three terms of VICReg for (N, D) embeddings, in float32.

    Returns:
        invariance (MSE between the views), variance (averaged over both views), covariance
        (summed over both views), as in the official implementation. Across workers: the global
        batch's terms.
    """
    if dist.is_distributed():  # one collective for both views: (B, 2D)
        z0, z1 = dist.gather(torch.cat([z0, z1], dim=1)).chunk(2, dim=1)
    with torch.autocast(z0.device.type, enabled=False):  # autocast would run the matmul in bf16
        z0, z1 = z0.float(), z1.float()
        invariance = F.mse_loss(z0, z1)
        variance = (_variance(z0, eps) + _variance(z1, eps)) / 2
        covariance = _covariance(z0) + _covariance(z1)
    return invariance, variance, covariance


class VICRegLoss(nn.Module):
    """``lambda * invariance + mu * variance + nu * covariance`` (paper: 25, 25, 1).

    Args:
        sim_weight, var_weight, cov_weight: lambda, mu, nu.
        eps: added to the variance before the square root.
    """

    def __init__(
        self, sim_weight: float = 25.0, var_weight: float = 25.0, cov_weight: float = 1.0, eps: float = 1e-4
    ) -> None:
        super().__init__()
        self.sim_weight, self.var_weight, self.cov_weight, self.eps = sim_weight, var_weight, cov_weight, eps

    def forward(self, z0: Tensor, z1: Tensor) -> Tensor:
        """Args: z0, z1: (N, D). Returns: scalar loss."""
        inv, var, cov = vicreg_terms(z0, z1, self.eps)
        return self.sim_weight * inv + self.var_weight * var + self.cov_weight * cov
