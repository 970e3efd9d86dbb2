"""SwAV: "Unsupervised Learning of Visual Features by Contrasting Cluster Assignments" (Caron et al.,
NeurIPS 2020, arXiv:2006.09882).

Across workers: the Sinkhorn codes are equipartitioned over the global batch (``sinkhorn``
all-reduces its sums), the loss is per sample, BatchNorm is synchronised by the engine, and the
prototypes are renormalised identically on every worker after each step.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ssl_models.augment import ViewAugment
from ssl_models.augment.multicrop import MultiCropAugment
from ssl_models.backbones import Encoder
from ssl_models.heads import SwAVProjectionHead, SwAVPrototypes
from ssl_models.losses import SwAVLoss
from ssl_models.methods.base import SSLMethod, SSLOutput
from ssl_models.methods.crops import forward_crops


class SwAV(SSLMethod):
    """Online clustering: each global crop's Sinkhorn code over learnable prototypes is predicted
    from every other crop. Multi-crop as in the paper; no queue (the paper adds one only for small
    batches) and no prototype freezing in the first epoch.

    Args:
        encoder: normalization + backbone.
        augment: colour settings of the crops.
        hidden_dim, out_dim: projector sizes (paper: 2048 / 128).
        n_prototypes: K (paper: 3000 on ImageNet; 300 suits 10-class pools).
        temperature: paper 0.1.
        epsilon, sinkhorn_iterations: paper 0.05 and 3.
        local_crops: paper 6 (2 x 160 + 6 x 96 px on ImageNet).
        global_crop_scale, local_crop_scale: paper 0.14-1 and 0.05-0.14.
    """

    name = "swav"
    # paper: LARS lr 0.6 x batch/256; SGD 0.06 for short runs
    optim = {"optimizer": "sgd", "lr": 0.06, "weight_decay": 5e-4}

    def __init__(
        self,
        encoder: Encoder,
        augment: ViewAugment | None = None,
        hidden_dim: int = 512,
        out_dim: int = 128,
        n_prototypes: int = 300,
        temperature: float = 0.1,
        epsilon: float = 0.05,
        sinkhorn_iterations: int = 3,
        local_crops: int = 6,
        global_crop_scale: tuple[float, float] = (0.14, 1.0),
        local_crop_scale: tuple[float, float] = (0.05, 0.14),
    ) -> None:
        super().__init__(encoder, augment)
        self.multicrop = MultiCropAugment(
            global_crops=2,
            local_crops=local_crops,
            global_scale=tuple(global_crop_scale),
            local_scale=tuple(local_crop_scale),
            base=self.augment,
        )
        self.projection_head = SwAVProjectionHead(encoder.out_dim, hidden_dim, out_dim)
        self.prototypes = SwAVPrototypes(out_dim, n_prototypes)
        self.criterion = SwAVLoss(temperature, epsilon, sinkhorn_iterations)

    def views(self, images: Tensor, generator: torch.Generator | None = None) -> list[Tensor]:
        """2 global crops then ``local_crops`` local crops (smaller) of each image."""
        return self.multicrop(images, generator)

    def forward(self, views: list[Tensor]) -> SSLOutput:
        # one (N, out_dim) embedding on the unit sphere per crop
        z = forward_crops(lambda x: F.normalize(self.projection_head(self.encoder(x)), dim=1), views)
        scores = [self.prototypes(zi) for zi in z]  # (N, K) each
        return SSLOutput(self.criterion(scores, n_global=2), embedding=z[0].detach())

    @torch.no_grad()
    def on_step_end(self, step: int, total_steps: int) -> None:
        self.prototypes.normalize()
