"""Barlow Twins: "Self-Supervised Learning via Redundancy Reduction" (Zbontar et al., ICML 2021,
arXiv:2103.03230).

Across workers: the cross-correlation is the global batch's (``BarlowTwinsLoss`` gathers the
projections with gradients); BatchNorm is synchronised by the engine.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ssl_models.augment import ViewAugment
from ssl_models.backbones import Encoder
from ssl_models.heads import BarlowTwinsProjectionHead
from ssl_models.losses import BarlowTwinsLoss
from ssl_models.methods.base import SSLMethod, SSLOutput


class BarlowTwins(SSLMethod):
    """Two views through one encoder and projector; the cross-correlation of their standardized
    projections is pushed to the identity.

    Args:
        encoder: normalization + backbone.
        augment: the view generator.
        hidden_dim, out_dim: projector sizes (paper: 8192 / 8192).
        lambda_: off-diagonal weight (paper: 5.1e-3).
    """

    name = "barlowtwins"
    # paper: LARS lr 0.2 x batch/256; without LARS its large loss trains best with AdamW
    optim = {"optimizer": "adamw", "lr": 1e-3, "weight_decay": 1e-4}

    def __init__(
        self,
        encoder: Encoder,
        augment: ViewAugment | None = None,
        hidden_dim: int = 512,
        out_dim: int = 512,
        lambda_: float = 5.1e-3,
    ) -> None:
        super().__init__(encoder, augment)
        self.projection_head = BarlowTwinsProjectionHead(encoder.out_dim, hidden_dim, out_dim)
        self.criterion = BarlowTwinsLoss(lambda_)

    def forward(self, views: list[Tensor]) -> SSLOutput:
        x0, x1 = views
        n = x0.shape[0]
        z = self.projection_head(self.encoder(torch.cat([x0, x1])))  # (2N, out_dim)
        return SSLOutput(self.criterion(z[:n], z[n:]), embedding=z[:n].detach())
