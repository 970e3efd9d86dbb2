"""The encoder: input normalization + backbone, so callers always feed [0, 1] images."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn


class Encoder(nn.Module):
    """Normalizes images with the training pool's per-channel mean and std, then applies the backbone.

    Args:
        backbone: a module with ``out_dim``.
        mean, std: per-channel statistics of the training images in [0, 1].

    Shapes:
        (N, C, H, W) float in [0, 1] -> (N, out_dim)
    """

    def __init__(self, backbone: nn.Module, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.backbone = backbone
        self.out_dim: int = backbone.out_dim
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        return self.backbone((x - self.mean) / self.std)
