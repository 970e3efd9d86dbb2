"""Running a network over multi-crop views: one batched pass per crop size (DINO's
``MultiCropWrapper``, Caron et al., 2021)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor


def forward_crops(fn: Callable[[Tensor], Tensor], crops: list[Tensor]) -> list[Tensor]:
    """Apply ``fn`` to each crop, concatenating consecutive crops of the same size into one batch.

    Args:
        fn: (M, C, H, W) -> (M, D).
        crops: tensors (N, C, H_i, W_i), same-size crops adjacent (global crops first).

    Returns:
        One (N, D) output per crop, in order.
    """
    outputs: list[Tensor] = []
    start = 0
    while start < len(crops):
        end = start
        while end < len(crops) and crops[end].shape[-2:] == crops[start].shape[-2:]:
            end += 1
        group = crops[start:end]
        out = fn(torch.cat(group))  # (len(group) * N, D)
        outputs.extend(out.split([c.shape[0] for c in group]))
        start = end
    return outputs
