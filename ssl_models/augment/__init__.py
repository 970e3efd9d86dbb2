"""Batched image augmentation on tensors, on the model's device, with per-sample random parameters.

Every op takes float images in [0, 1] shaped (N, C, H, W) and a ``torch.Generator`` so that a seed
fixes every view; none loops over images in Python.
"""

from ssl_models.augment.ops import (
    color_jitter,
    cutout,
    gaussian_blur,
    random_grayscale,
    random_resized_crop,
    solarize,
    to_float,
)
from ssl_models.augment.views import ViewAugment

__all__ = [
    "ViewAugment",
    "color_jitter",
    "cutout",
    "gaussian_blur",
    "random_grayscale",
    "random_resized_crop",
    "solarize",
    "to_float",
]
