from __future__ import annotations

import torch
from torch import Tensor, nn

from ssl_models.augment import to_float
from ssl_models.device import autocast, autocast_dtype


@torch.no_grad()
def extract_features(
    model: nn.Module,
    images: Tensor,
    batch_size: int = 1024,
    device: torch.device | str = "cpu",
    precision: str = "auto",
) -> Tensor:
    """Run ``model`` in eval mode over uint8 (or [0, 1] float) images.

    Returns:
        (N, D) float32 features on the CPU.
    """
    device = torch.device(device)
    dtype = autocast_dtype(device, precision)
    was_training = model.training
    model.eval().to(device)
    out = []
    for start in range(0, images.shape[0], batch_size):
        x = to_float(images[start : start + batch_size].to(device))
        with autocast(device, dtype):
            out.append(model(x).float().cpu())
    model.train(was_training)
    return torch.cat(out) if out else torch.empty(0)
