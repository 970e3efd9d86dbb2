from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor, nn

from ssl_models.augment import to_float
from ssl_models.data.shards import ShardedImages
from ssl_models.device import autocast, autocast_dtype


@torch.no_grad()
def extract_features(
    model: nn.Module,
    images: Tensor | ShardedImages,
    batch_size: int = 1024,
    device: torch.device | str = "cpu",
    precision: str = "auto",
) -> Tensor:
    """Run ``model`` in eval mode over uint8 (or [0, 1] float) images, ``batch_size`` at a time (a
    ``ShardedImages`` pool is read a batch at a time, so only the features grow with N).

    Returns:
        (N, D) float32 features on the CPU.
    """
    device = torch.device(device)
    dtype = autocast_dtype(device, precision)
    was_training = model.training
    model.eval().to(device)
    n = images.shape[0]
    out = torch.empty(0)
    for start in range(0, n, batch_size):
        x = to_float(images[start : start + batch_size].to(device))
        with autocast(device, dtype):
            z = model(x).float().cpu()
        if start == 0:  # filled in place: a list of batches and their cat would hold the features twice
            out = torch.empty(n, *z.shape[1:])
        out[start : start + len(z)] = z
    model.train(was_training)
    return out


class FlatPixels:
    """The images of a pool as float rows (n, C*H*W), ``chunk`` images at a time: the features of a
    raw-pixel kNN (``knn_predict`` takes them as either side) without holding N x C*H*W floats, which
    for 60k 32x32 RGB images would be 740 MB. Re-iterable: each pass reads the pool again. As both
    sides of a kNN, ``chunk`` x ``chunk`` similarities are held at once (16 MB at 2048).

    Args:
        images: uint8 (N, C, H, W), a tensor or a ``ShardedImages`` pool.
    """

    def __init__(self, images: Tensor | ShardedImages, chunk: int = 2048):
        self.images = images
        self.chunk = chunk

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __iter__(self) -> Iterator[Tensor]:
        return (part.flatten(1).float() for part in self.images.split(self.chunk))
