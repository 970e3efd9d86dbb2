"""VICReg: "Variance-Invariance-Covariance Regularization for Self-Supervised Learning" (Bardes,
Ponce & LeCun, ICLR 2022, arXiv:2105.04906).

Across workers: variance and covariance are the global batch's (``vicreg_terms`` gathers the
embeddings with gradients); BatchNorm is synchronised by the engine.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ssl_models.augment import ViewAugment
from ssl_models.backbones import Encoder
from ssl_models.heads import VICRegProjectionHead
from ssl_models.losses import VICRegLoss
from ssl_models.methods.base import SSLMethod, SSLOutput


class VICReg(SSLMethod):
    """Two views through one encoder and expander; invariance between the views, a variance floor
    and decorrelation within each view.

    Args:
        encoder: normalization + backbone.
        augment: the view generator.
        hidden_dim, out_dim: expander sizes (paper: 8192 / 8192).
        sim_weight, var_weight, cov_weight: loss weights (paper: 25 / 25 / 1).
    """

    name = "vicreg"
    # paper: LARS lr 0.2 x batch/256; its large loss diverges with SGD 0.3
    optim = {"optimizer": "sgd", "lr": 0.06, "weight_decay": 5e-4}

    def __init__(
        self,
        encoder: Encoder,
        augment: ViewAugment | None = None,
        hidden_dim: int = 512,
        out_dim: int = 512,
        sim_weight: float = 25.0,
        var_weight: float = 25.0,
        cov_weight: float = 1.0,
    ) -> None:
        super().__init__(encoder, augment)
        self.projection_head = VICRegProjectionHead(encoder.out_dim, hidden_dim, out_dim)
        self.criterion = VICRegLoss(sim_weight, var_weight, cov_weight)

    def forward(self, views: list[Tensor]) -> SSLOutput:
        x0, x1 = views
        n = x0.shape[0]
        z = self.projection_head(self.encoder(torch.cat([x0, x1])))  # (2N, out_dim)
        return SSLOutput(self.criterion(z[:n], z[n:]), embedding=z[:n].detach())
