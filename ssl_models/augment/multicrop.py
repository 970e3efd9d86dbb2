"""Multi-crop: a few large "global" crops and several small "local" crops of every image, batched
(SwAV, Caron et al., NeurIPS 2020, arXiv:2006.09882; DINO, Caron et al., ICCV 2021)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import Tensor

from ssl_models.augment.ops import to_float
from ssl_models.augment.views import ViewAugment


def local_crop_size(side: int) -> int:
    """The paper's local/global side ratio (96 / 224), rounded to a multiple of 4 (so that a ViT
    with patch size 4 takes it), at least 8."""
    return max(8, 4 * round(side * 96 / 224 / 4))


@dataclass(frozen=True)
class MultiCropAugment:
    """``global_crops`` crops at ``global_size`` then ``local_crops`` crops at ``local_size``, each
    with the colour pipeline of ``base``; one batched call per crop, none per image.

    Defaults are DINO's (2 x 224 px at scale 0.4-1, 6 x 96 px at scale 0.05-0.4) with sides
    relative to the input image.

    Args:
        global_crops, local_crops: number of crops of each kind.
        global_size: side of the global crops (default: the input's).
        local_size: side of the local crops (default: ``local_crop_size(global side)``).
        global_scale, local_scale: area ranges of the random resized crops.
        base: colour/blur/solarize settings (its ``size`` and ``crop_scale`` are replaced).
    """

    global_crops: int = 2
    local_crops: int = 6
    global_size: int | None = None
    local_size: int | None = None
    global_scale: tuple[float, float] = (0.4, 1.0)
    local_scale: tuple[float, float] = (0.05, 0.4)
    base: ViewAugment = ViewAugment()

    def sizes(self, side: int) -> tuple[int, int]:
        """(global side, local side) for an input of side ``side``."""
        g = self.global_size or side
        return g, self.local_size or local_crop_size(g)

    def __call__(self, images: Tensor, generator: torch.Generator | None = None) -> list[Tensor]:
        """Args:
            images: (N, C, H, W) uint8 or float in [0, 1].

        Returns:
            ``global_crops`` tensors (N, C, G, G) then ``local_crops`` tensors (N, C, L, L), float.
        """
        x = to_float(images)
        g, l = self.sizes(x.shape[-1])
        global_aug = dataclasses.replace(self.base, size=g, crop_scale=self.global_scale)
        local_aug = dataclasses.replace(self.base, size=l, crop_scale=self.local_scale)
        return [global_aug(x, generator) for _ in range(self.global_crops)] + [
            local_aug(x, generator) for _ in range(self.local_crops)
        ]
