"""RotNet: "Unsupervised Representation Learning by Predicting Image Rotations" (Gidaris, Singh &
Komodakis, ICLR 2018, arXiv:1803.07728).

Across workers: a per-image cross-entropy (each worker's local mean over its 4n rotated images;
their mean is the one-process loss); nothing to gather; BatchNorm synchronised by the engine, so
its statistics span the four rotations of the global batch, as in one process.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ssl_models.augment import ViewAugment
from ssl_models.backbones import Encoder
from ssl_models.heads import ProjectionHead
from ssl_models.methods.base import SSLMethod, SSLOutput


def rotate_batch(x: Tensor) -> tuple[Tensor, Tensor]:
    """All four rotations of every image (the paper feeds them together).

    Args:
        x: (N, C, H, H) square images.

    Returns:
        (4N, C, H, H) rotated images, rotation k * 90 degrees for block k, and (4N,) labels k.
    """
    if x.shape[-1] != x.shape[-2]:
        raise ValueError(f"rotation prediction needs square images, got {tuple(x.shape[-2:])}")
    rotated = torch.cat([torch.rot90(x, k, dims=(2, 3)) for k in range(4)])
    labels = torch.arange(4, device=x.device).repeat_interleave(x.shape[0])
    return rotated, labels


class RotNet(SSLMethod):
    """Classify which of 0, 90, 180, 270 degrees each image was rotated by.

    Args:
        encoder: normalization + backbone.
        augment: the view generator (one view per image).
        hidden_dim: hidden width of the MLP classifier (the paper's conv-block + linear head is
            replaced by an MLP on pooled features).
    """

    name = "rotation"
    # paper: SGD lr 0.1, wd 5e-4
    optim = {"optimizer": "sgd", "lr": 0.06, "weight_decay": 5e-4}

    def __init__(self, encoder: Encoder, augment: ViewAugment | None = None, hidden_dim: int = 256) -> None:
        super().__init__(encoder, augment)
        self.classifier = ProjectionHead(encoder.out_dim, hidden_dim, 4, num_layers=2)

    def views(self, images: Tensor, generator: torch.Generator | None = None) -> list[Tensor]:
        """One view per image; the rotations are made in ``forward``."""
        return [self.augment(images, generator)]

    def forward(self, views: list[Tensor]) -> SSLOutput:
        (x,) = views
        n = x.shape[0]
        rotated, labels = rotate_batch(x)  # (4N, C, H, W), (4N,)
        h = self.encoder(rotated)  # (4N, out_dim)
        loss = F.cross_entropy(self.classifier(h).float(), labels)
        return SSLOutput(loss, embedding=h[:n].detach())  # the unrotated images' features
