"""A configurable view generator: the augmentation pipeline of SimCLR-style methods, batched."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ssl_models.augment.ops import (
    color_jitter,
    gaussian_blur,
    random_grayscale,
    random_resized_crop,
    solarize,
    to_float,
)


@dataclass(frozen=True)
class ViewAugment:
    """Random views of a batch: crop + flip, colour jitter, grayscale, blur, solarize.

    Defaults follow SimCLR (Chen et al., 2020, arXiv:2002.05709) except the crop scale, which for
    28x28 images is kept larger: a tiny crop of a small image holds almost no information.

    Args:
        size: output side (default: the input's).
        crop_scale: area range of the random resized crop.
        flip_p: horizontal-flip probability.
        jitter_strength: scales brightness/contrast/saturation (x0.8/0.8/0.8) and hue (x0.2).
        jitter_p: probability of colour jitter.
        grayscale_p: probability of grayscale (RGB only).
        blur_p: probability of Gaussian blur.
        solarize_p: probability of solarization.
    """

    size: int | None = None
    crop_scale: tuple[float, float] = (0.2, 1.0)
    flip_p: float = 0.5
    jitter_strength: float = 0.5
    jitter_p: float = 0.8
    grayscale_p: float = 0.2
    blur_p: float = 0.0
    solarize_p: float = 0.0

    def __call__(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """One random view of every image.

        Args:
            images: (N, C, H, W) uint8 or float in [0, 1].

        Returns:
            (N, C, size, size) float32 in [0, 1].
        """
        x = to_float(images)
        x = random_resized_crop(x, self.size or x.shape[-1], self.crop_scale, flip_p=self.flip_p, generator=generator)
        s = self.jitter_strength
        if s > 0 and self.jitter_p > 0:
            x = color_jitter(x, 0.8 * s, 0.8 * s, 0.8 * s, 0.2 * s, p=self.jitter_p, generator=generator)
        if self.grayscale_p > 0:
            x = random_grayscale(x, self.grayscale_p, generator=generator)
        if self.blur_p > 0:
            x = gaussian_blur(x, p=self.blur_p, generator=generator)
        if self.solarize_p > 0:
            x = solarize(x, p=self.solarize_p, generator=generator)
        return x
