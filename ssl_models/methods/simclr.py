"""SimCLR: "A Simple Framework for Contrastive Learning of Visual Representations"
(Chen et al., ICML 2020, arXiv:2002.05709).

Across workers: the negatives are the global batch's (``NTXentLoss`` gathers the projections with
gradients) and BatchNorm is synchronised by the engine, as the paper's global BN.
"""

from __future__ import annotations

import torch

from ssl_models.augment import ViewAugment
from ssl_models.backbones import Encoder
from ssl_models.heads import SimCLRProjectionHead
from ssl_models.losses import NTXentLoss
from ssl_models.methods.base import SSLMethod, SSLOutput


class SimCLR(SSLMethod):
    """Two augmented views, a shared encoder and MLP head, NT-Xent between the projections.

    Args:
        encoder: normalization + backbone.
        augment: the view generator.
        hidden_dim, out_dim: projection head sizes (paper: 2048 / 128; smaller suits small CNNs).
        temperature: NT-Xent temperature.
    """

    name = "simclr"

    def __init__(
        self,
        encoder: Encoder,
        augment: ViewAugment | None = None,
        hidden_dim: int = 512,
        out_dim: int = 128,
        temperature: float = 0.2,
    ) -> None:
        super().__init__(encoder, augment)
        self.projection_head = SimCLRProjectionHead(encoder.out_dim, hidden_dim, out_dim)
        self.criterion = NTXentLoss(temperature)

    def forward(self, views: list[torch.Tensor]) -> SSLOutput:
        x0, x1 = views
        n = x0.shape[0]
        # one pass over both views: better batched, and BatchNorm sees all 2N images
        z = self.projection_head(self.encoder(torch.cat([x0, x1])))  # (2N, out_dim)
        return SSLOutput(self.criterion(z[:n], z[n:]), embedding=z[:n].detach())
