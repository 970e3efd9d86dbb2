"""Batched augmentation ops: (N, C, H, W) float in [0, 1] in, same range out."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def to_float(images: Tensor) -> Tensor:
    """uint8 [0, 255] (or float [0, 1]) -> float32 [0, 1]."""
    return images.float().div_(255.0) if images.dtype == torch.uint8 else images.float()


def _uniform(n: int, low: float, high: float, generator: torch.Generator | None, device: torch.device) -> Tensor:
    return torch.rand(n, generator=generator, device=device) * (high - low) + low


def _coin(n: int, p: float, generator: torch.Generator | None, device: torch.device) -> Tensor:
    return torch.rand(n, generator=generator, device=device) < p


def random_resized_crop(
    images: Tensor,
    size: int,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    flip_p: float = 0.5,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Crop a random area and aspect ratio of each image, resize it to ``size``, flip horizontally.

    Same distribution as torchvision's ``RandomResizedCrop`` + ``RandomHorizontalFlip``, but one
    ``affine_grid``/``grid_sample`` call for the whole batch. Crops are clamped inside the image.

    Args:
        images: (N, C, H, W) float.
        size: output side.
        scale: range of the crop's area as a fraction of the image's.
        ratio: range of the crop's aspect ratio (log-uniform).
        flip_p: probability of a horizontal flip.

    Returns:
        (N, C, size, size).
    """
    n, device = images.shape[0], images.device
    area = _uniform(n, *scale, generator, device)
    log_ratio = _uniform(n, math.log(ratio[0]), math.log(ratio[1]), generator, device)
    aspect = torch.exp(log_ratio)
    # crop width and height as fractions of the image side, at most the whole image
    w = torch.sqrt(area * aspect).clamp(max=1.0)
    h = torch.sqrt(area / aspect).clamp(max=1.0)
    # crop centre in normalized coordinates [-1, 1], keeping the crop inside the image
    cx = (torch.rand(n, generator=generator, device=device) * 2 - 1) * (1 - w)
    cy = (torch.rand(n, generator=generator, device=device) * 2 - 1) * (1 - h)
    flip = torch.where(_coin(n, flip_p, generator, device), -1.0, 1.0)
    theta = torch.zeros(n, 2, 3, device=device)
    theta[:, 0, 0] = w * flip
    theta[:, 0, 2] = cx
    theta[:, 1, 1] = h
    theta[:, 1, 2] = cy
    grid = F.affine_grid(theta, [n, images.shape[1], size, size], align_corners=False)
    return F.grid_sample(images, grid.to(images.dtype), mode="bilinear", padding_mode="reflection", align_corners=False)


def _gray(images: Tensor) -> Tensor:
    if images.shape[1] == 1:
        return images
    weights = images.new_tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
    return (images * weights).sum(1, keepdim=True)


def color_jitter(
    images: Tensor,
    brightness: float = 0.4,
    contrast: float = 0.4,
    saturation: float = 0.2,
    hue: float = 0.1,
    p: float = 0.8,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Random brightness, contrast, saturation and hue (SimCLR's colour distortion), per sample.

    Saturation and hue apply only to 3-channel images; grayscale images get brightness and
    contrast. Unlike torchvision the order is fixed (brightness, contrast, saturation, hue).

    Args:
        images: (N, C, H, W) float in [0, 1].
        brightness, contrast, saturation: factors are drawn from [1 - x, 1 + x].
        hue: shift drawn from [-hue, hue] (fraction of a turn).
        p: probability that an image is jittered at all.
    """
    n, device = images.shape[0], images.device
    apply = _coin(n, p, generator, device).view(n, 1, 1, 1)
    out = images
    if brightness > 0:
        out = out * _uniform(n, 1 - brightness, 1 + brightness, generator, device).view(n, 1, 1, 1)
    if contrast > 0:
        mean = _gray(out).mean(dim=(1, 2, 3), keepdim=True)
        factor = _uniform(n, 1 - contrast, 1 + contrast, generator, device).view(n, 1, 1, 1)
        out = (out - mean) * factor + mean
    if images.shape[1] == 3 and saturation > 0:
        gray = _gray(out)
        factor = _uniform(n, 1 - saturation, 1 + saturation, generator, device).view(n, 1, 1, 1)
        out = (out - gray) * factor + gray
    if images.shape[1] == 3 and hue > 0:
        out = _rotate_hue(out.clamp(0, 1), _uniform(n, -hue, hue, generator, device))
    return torch.where(apply, out.clamp(0, 1), images)


def _rotate_hue(images: Tensor, shift: Tensor) -> Tensor:
    """Rotate hue by ``shift`` turns: a rotation about the gray axis in RGB space (YIQ-style)."""
    angle = shift * 2 * math.pi
    cos, sin = torch.cos(angle), torch.sin(angle)
    # rotation matrix about (1, 1, 1)/sqrt(3), per sample: (N, 3, 3)
    k = 1.0 / 3.0
    s = math.sqrt(k)
    a = cos + (1 - cos) * k
    b = k * (1 - cos) - s * sin
    c = k * (1 - cos) + s * sin
    rot = torch.stack([torch.stack([a, b, c], -1), torch.stack([c, a, b], -1), torch.stack([b, c, a], -1)], -2)
    return torch.einsum("nij,njhw->nihw", rot, images)


def random_grayscale(images: Tensor, p: float = 0.2, generator: torch.Generator | None = None) -> Tensor:
    """Turn each RGB image gray with probability ``p``; grayscale images pass through."""
    if images.shape[1] == 1 or p <= 0:
        return images
    apply = _coin(images.shape[0], p, generator, images.device).view(-1, 1, 1, 1)
    return torch.where(apply, _gray(images).expand_as(images), images)


def gaussian_blur(
    images: Tensor,
    sigma: tuple[float, float] = (0.1, 2.0),
    p: float = 0.5,
    kernel_size: int | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Gaussian blur with a per-sample sigma (pixels), as a separable depthwise convolution.

    Args:
        sigma: range of the blur's standard deviation in pixels.
        p: probability that an image is blurred.
        kernel_size: odd kernel side; default about 10 % of the image side (SimCLR), at least 3.
    """
    n, c, h, w = images.shape
    device = images.device
    k = kernel_size or max(3, (int(0.1 * min(h, w)) // 2) * 2 + 1)
    s = _uniform(n, *sigma, generator, device)
    s = torch.where(_coin(n, p, generator, device), s, torch.zeros_like(s))
    x = torch.arange(k, device=device, dtype=images.dtype) - k // 2
    kernel = torch.exp(-(x[None] ** 2) / (2 * s.clamp(min=1e-3)[:, None] ** 2))  # (N, k)
    kernel = kernel / kernel.sum(1, keepdim=True)
    kernel = kernel.repeat_interleave(c, 0)  # one kernel per (image, channel): (N*C, k)
    flat = images.reshape(1, n * c, h, w)
    pad = k // 2
    flat = F.conv2d(F.pad(flat, (pad, pad, 0, 0), mode="reflect"), kernel.view(n * c, 1, 1, k), groups=n * c)
    flat = F.conv2d(F.pad(flat, (0, 0, pad, pad), mode="reflect"), kernel.view(n * c, 1, k, 1), groups=n * c)
    return flat.view(n, c, h, w)


def solarize(images: Tensor, threshold: float = 0.5, p: float = 0.2, generator: torch.Generator | None = None) -> Tensor:
    """Invert pixels above ``threshold`` with probability ``p`` per image (BYOL's solarization)."""
    apply = _coin(images.shape[0], p, generator, images.device).view(-1, 1, 1, 1)
    return torch.where(apply & (images >= threshold), 1.0 - images, images)


def cutout(images: Tensor, size: float = 0.5, fill: float = 0.5, p: float = 1.0,
           generator: torch.Generator | None = None) -> Tensor:
    """Fill a random square of each image with ``fill`` (Cutout: DeVries & Taylor, 2017,
    arXiv:1708.04552; part of FixMatch's strong augmentation, which fills with gray).

    The square's centre is uniform over the image, so a square near the border is clipped by it
    (as in the reference implementations); one mask for the whole batch, no loop over images.

    Args:
        images: (N, C, H, W) float.
        size: the square's side as a fraction of the image's shorter side.
        fill: the value written into the square (0.5: gray).
        p: probability that an image gets a square at all.

    Returns:
        (N, C, H, W), the same dtype.
    """
    n, _, h, w = images.shape
    device = images.device
    half = size * min(h, w) / 2  # in pixels
    cy = torch.rand(n, 1, generator=generator, device=device) * h  # (N, 1)
    cx = torch.rand(n, 1, generator=generator, device=device) * w
    rows = (torch.arange(h, device=device) + 0.5 - cy).abs() < half  # pixel centres inside: (N, H)
    cols = (torch.arange(w, device=device) + 0.5 - cx).abs() < half  # (N, W)
    inside = rows[:, :, None] & cols[:, None, :] & _coin(n, p, generator, device).view(n, 1, 1)  # (N, H, W)
    return torch.where(inside[:, None], torch.tensor(fill, dtype=images.dtype, device=device), images)
