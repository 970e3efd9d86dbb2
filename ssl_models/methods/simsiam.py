"""SimSiam: "Exploring Simple Siamese Representation Learning" (Chen & He, CVPR 2021,
arXiv:2011.10566).

Across workers: a per-sample loss (each worker's local mean; their mean is the one-process loss);
nothing to gather. The projector's BatchNorm layers are synchronised by the engine
(``ssl_models.dist.convert_sync_batchnorm``), so their statistics are the global batch's.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ssl_models.augment import ViewAugment
from ssl_models.backbones import Encoder
from ssl_models.heads import SimSiamPredictionHead, SimSiamProjectionHead
from ssl_models.losses import NegativeCosineSimilarity
from ssl_models.methods.base import SSLMethod, SSLOutput


class SimSiam(SSLMethod):
    """BYOL without the momentum encoder: the stop-gradient alone prevents collapse.
    ``L = D(p0, sg(z1)) / 2 + D(p1, sg(z0)) / 2`` with D the negative cosine similarity.

    Args:
        encoder: normalization + backbone.
        augment: the view generator.
        hidden_dim, out_dim: projector sizes (paper: 2048 / 2048).
        pred_hidden_dim: predictor bottleneck (paper: 512, a quarter of ``out_dim``).
    """

    name = "simsiam"
    # paper: SGD lr 0.05 x batch/256, wd 1e-4; AdamW learns faster in short runs
    optim = {"optimizer": "adamw", "lr": 1e-3, "weight_decay": 1e-4}

    def __init__(
        self,
        encoder: Encoder,
        augment: ViewAugment | None = None,
        hidden_dim: int = 512,
        out_dim: int = 512,
        pred_hidden_dim: int = 128,
    ) -> None:
        super().__init__(encoder, augment)
        self.projection_head = SimSiamProjectionHead(encoder.out_dim, hidden_dim, out_dim)
        self.prediction_head = SimSiamPredictionHead(out_dim, pred_hidden_dim, out_dim)
        self.criterion = NegativeCosineSimilarity()

    def forward(self, views: list[Tensor]) -> SSLOutput:
        x0, x1 = views
        n = x0.shape[0]
        z = self.projection_head(self.encoder(torch.cat([x0, x1])))  # (2N, out_dim)
        p = self.prediction_head(z)
        z = z.detach()  # stop-gradient on the targets
        loss = 0.5 * (self.criterion(p[:n], z[n:]) + self.criterion(p[n:], z[:n]))
        return SSLOutput(loss, embedding=z[:n])
