"""BYOL: "Bootstrap Your Own Latent: A New Approach to Self-Supervised Learning" (Grill et al.,
NeurIPS 2020, arXiv:2006.07733).

Across workers: a per-sample loss (each worker's local mean; their mean is the one-process loss);
nothing to gather. BatchNorm in the online and target networks is synchronised by the engine
(``ssl_models.dist.convert_sync_batchnorm``): per-worker statistics would differ from one
process's. The target's EMA is the same on every worker,
since DDP keeps the online weights equal.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ssl_models.augment import ViewAugment
from ssl_models.backbones import Encoder
from ssl_models.heads import BYOLPredictionHead, BYOLProjectionHead
from ssl_models.losses import NegativeCosineSimilarity
from ssl_models.methods.base import SSLMethod, SSLOutput
from ssl_models.methods.momentum import frozen_copy, momentum_schedule, update_momentum


class BYOL(SSLMethod):
    """An online network (encoder, projector, predictor) predicts a momentum target network's
    projection of the other view; symmetrized. The paper's loss ``2 - 2 cos`` is optimized as
    ``-cos`` (same gradient up to a factor 2).

    Args:
        encoder: normalization + backbone.
        augment: the view generator.
        hidden_dim, out_dim: projector and predictor sizes (paper: 4096 / 256).
        momentum_base: target EMA momentum at step 0, raised to 1 by a cosine (paper: 0.996 over
            ~300k ImageNet steps; 0.95 lets the target move within the few hundred to few thousand
            steps of a run here: kNN after 90 s of a bench/methods.py-style run 0.7430 at 0.99,
            0.7510 at 0.95, 0.7522 at 0.9).
    """

    name = "byol"
    # paper: LARS lr 0.2 x batch/256; SGD 0.06 for short runs
    optim = {"optimizer": "sgd", "lr": 0.06, "weight_decay": 5e-4}

    def __init__(
        self,
        encoder: Encoder,
        augment: ViewAugment | None = None,
        hidden_dim: int = 512,
        out_dim: int = 128,
        momentum_base: float = 0.95,
    ) -> None:
        super().__init__(encoder, augment)
        self.momentum_base = momentum_base
        self.projection_head = BYOLProjectionHead(encoder.out_dim, hidden_dim, out_dim)
        self.prediction_head = BYOLPredictionHead(out_dim, hidden_dim, out_dim)
        self.target_encoder = frozen_copy(self.encoder)
        self.target_projection_head = frozen_copy(self.projection_head)
        self.criterion = NegativeCosineSimilarity()

    def forward(self, views: list[Tensor]) -> SSLOutput:
        x0, x1 = views
        n = x0.shape[0]
        z = self.projection_head(self.encoder(torch.cat([x0, x1])))  # (2N, out_dim)
        p = self.prediction_head(z)
        with torch.no_grad():
            t = self.target_projection_head(self.target_encoder(torch.cat([x0, x1])))  # (2N, out_dim)
        # view 0's prediction targets view 1's projection and vice versa
        loss = 0.5 * (self.criterion(p[:n], t[n:]) + self.criterion(p[n:], t[:n]))
        return SSLOutput(loss, embedding=z[:n].detach())

    @torch.no_grad()
    def on_step_end(self, step: int, total_steps: int) -> None:
        m = momentum_schedule(step, total_steps, self.momentum_base)
        update_momentum(self.encoder, self.target_encoder, m)
        update_momentum(self.projection_head, self.target_projection_head, m)
