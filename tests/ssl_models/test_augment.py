"""Batched augmentation: shapes, dtypes and range kept; seeds fix every view; each op does what
its name says (crop area, flip rate, jitter, solarize, blur) for 1 and 3 channels."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from ssl_models.augment import (
    ViewAugment,
    color_jitter,
    gaussian_blur,
    random_grayscale,
    random_resized_crop,
    solarize,
    to_float,
)
from ssl_models.augment.ops import _rotate_hue


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def rand_images(n: int = 8, c: int = 3, side: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, c, side, side, generator=gen(seed))


def ramps(n: int, side: int) -> torch.Tensor:
    """(n, 2, side, side): channel 0 rises with x, channel 1 with y; the value of the pixel whose
    centre is at normalized coordinate u in (-1, 1) is (u + 1) / 2."""
    u = (2 * torch.arange(side, dtype=torch.float32) + 1) / side - 1
    ramp = (u + 1) / 2
    x = ramp.view(1, side).expand(side, side)
    return torch.stack([x, x.T]).expand(n, 2, side, side).contiguous()


def crop_sides(out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The crop's width and height as fractions of the image side, read off the ramps' slopes
    between the second and second-to-last output pixels (away from the border)."""
    s = out.shape[-1]
    mid = s // 2
    w = (out[:, 0, mid, s - 2] - out[:, 0, mid, 1]).abs() * s / (s - 3)
    h = (out[:, 1, s - 2, mid] - out[:, 1, 1, mid]).abs() * s / (s - 3)
    return w, h


OPS = {
    "crop": lambda x, g: random_resized_crop(x, x.shape[-1], generator=g),
    "crop_resize": lambda x, g: random_resized_crop(x, 10, generator=g),
    "jitter": lambda x, g: color_jitter(x, p=1.0, generator=g),
    "grayscale": lambda x, g: random_grayscale(x, p=0.5, generator=g),
    "blur": lambda x, g: gaussian_blur(x, p=1.0, generator=g),
    "solarize": lambda x, g: solarize(x, p=0.5, generator=g),
    "views": lambda x, g: ViewAugment(blur_p=0.5, solarize_p=0.5)(x, g),
}


# ------------------------------------------------------------------------- shared properties
@pytest.mark.parametrize("op", sorted(OPS))
@pytest.mark.parametrize("channels", [1, 3])
def test_op_keeps_shape_dtype_range(op: str, channels: int) -> None:
    x = rand_images(c=channels, side=16)
    out = OPS[op](x, gen(1))
    side = 10 if op == "crop_resize" else 16
    assert out.shape == (8, channels, side, side)
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()
    assert out.min() >= 0 and out.max() <= 1


@pytest.mark.parametrize("op", sorted(OPS))
def test_op_seeded(op: str) -> None:
    x = rand_images(c=3)
    a, b, c = OPS[op](x, gen(5)), OPS[op](x, gen(5)), OPS[op](x, gen(6))
    assert torch.equal(a, b)
    if op != "grayscale" and op != "solarize":
        assert not torch.equal(a, c)


def test_seed_changes_grayscale_and_solarize_choices() -> None:
    x = rand_images(n=64, c=3)
    outs = [random_grayscale(x, p=0.5, generator=gen(s)) for s in (1, 2)]
    assert not torch.equal(*outs)
    outs = [solarize(x, p=0.5, generator=gen(s)) for s in (1, 2)]
    assert not torch.equal(*outs)


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("size", [None, 12])
def test_view_augment_uint8_and_float(channels: int, size: int | None) -> None:
    images = torch.randint(0, 256, (6, channels, 16, 16), dtype=torch.uint8, generator=gen(0))
    aug = ViewAugment(size=size, blur_p=0.5, solarize_p=0.2)
    out = aug(images, gen(3))
    side = size or 16
    assert out.shape == (6, channels, side, side) and out.dtype == torch.float32
    assert out.min() >= 0 and out.max() <= 1
    # uint8 in means the same as its [0, 1] float version
    assert torch.allclose(out, aug(to_float(images), gen(3)), atol=1e-6)
    assert images.dtype == torch.uint8 and images.max() > 1  # input untouched


def test_view_augment_views_differ_within_a_batch_and_across_calls() -> None:
    x = rand_images(n=4).repeat(2, 1, 1, 1)  # each image twice
    g = gen(0)
    v0, v1 = ViewAugment()(x, g), ViewAugment()(x, g)
    assert not torch.equal(v0, v1)  # the generator advances
    assert not torch.equal(v0[:4], v0[4:])  # per-sample randomness, not per-batch


def test_to_float() -> None:
    u = torch.tensor([0, 128, 255], dtype=torch.uint8)
    assert torch.allclose(to_float(u), torch.tensor([0.0, 128 / 255, 1.0]))
    f = torch.tensor([0.25], dtype=torch.float64)
    assert to_float(f).dtype == torch.float32


# -------------------------------------------------------------------------- random resized crop
@pytest.mark.parametrize("channels", [1, 3])
def test_crop_full_scale_no_flip_is_identity(channels: int) -> None:
    x = rand_images(c=channels, side=16)
    out = random_resized_crop(x, 16, scale=(1.0, 1.0), ratio=(1.0, 1.0), flip_p=0.0, generator=gen(0))
    assert torch.allclose(out, x, atol=1e-5)


@pytest.mark.parametrize("channels", [1, 3])
def test_crop_flip_p1_flips_exactly(channels: int) -> None:
    x = rand_images(c=channels, side=16)
    out = random_resized_crop(x, 16, scale=(1.0, 1.0), ratio=(1.0, 1.0), flip_p=1.0, generator=gen(0))
    assert torch.allclose(out, x.flip(-1), atol=1e-5)


def test_crop_quarter_area_zooms_by_two() -> None:
    """scale (0.25, 0.25) with square crops: every crop is half the side in both directions, and
    lies inside the image (its centre within the allowed range)."""
    side, n = 32, 64
    x = ramps(n, side)
    out = random_resized_crop(x, side, scale=(0.25, 0.25), ratio=(1.0, 1.0), flip_p=0.0, generator=gen(0))
    w, h = crop_sides(out)
    assert torch.allclose(w, torch.full_like(w, 0.5), atol=1e-3)
    assert torch.allclose(h, torch.full_like(h, 0.5), atol=1e-3)
    # the crop's centre (mean of the ramp over the output) stays within the image's inner half
    cx = out[:, 0].mean((1, 2)) * 2 - 1
    assert (cx.abs() <= 0.5 + 1e-3).all()
    assert cx.std() > 0.1  # crops are placed at random, not all in the centre


def test_crop_is_bilinear_resize_of_the_region() -> None:
    """With scale (0.25, 0.25) on a 16x16 image, each view is an 8x8 region upsampled 2x: for the
    draws whose region is pixel-aligned, the view equals F.interpolate of that region."""
    side, n = 16, 4000
    image = rand_images(n=1, c=1, side=side, seed=3)
    kwargs = dict(scale=(0.25, 0.25), ratio=(1.0, 1.0), flip_p=0.0)
    placement = random_resized_crop(ramps(n, side), side, generator=gen(11), **kwargs)
    views = random_resized_crop(image.expand(n, 1, side, side), side, generator=gen(11), **kwargs)
    # the crop's centre, from the ramps' means; its top-left corner in pixels
    centre = placement.mean((2, 3)) * 2 - 1  # (n, 2): x, y in [-0.5, 0.5]
    corner = (centre + 0.5) * side / 2
    aligned = ((corner - corner.round()).abs() < 0.03).all(1) & (centre.abs() < 0.4).all(1)
    assert aligned.sum() >= 3
    for i in aligned.nonzero().flatten().tolist():
        left, top = (int(v) for v in corner[i].round())
        region = image[..., top : top + side // 2, left : left + side // 2]
        expected = F.interpolate(region, size=side, mode="bilinear", align_corners=False)
        # interpolate clamps at the region's edge where the crop still sees its neighbours
        assert torch.allclose(views[i, :, 1:-1, 1:-1], expected[0, :, 1:-1, 1:-1], atol=0.03)


def test_crop_area_matches_scale_and_ratio() -> None:
    """For each sample, width x height of the crop is its drawn area, and width / height its
    aspect ratio, whatever the ratio range (no clamping for these ranges)."""
    side, n = 32, 400
    x = ramps(n, side)
    out = random_resized_crop(x, side, scale=(0.25, 0.25), ratio=(3 / 4, 4 / 3), flip_p=0.0, generator=gen(1))
    w, h = crop_sides(out)
    assert torch.allclose(w * h, torch.full_like(w, 0.25), atol=2e-3)
    aspect = w / h
    assert aspect.min() >= 3 / 4 - 1e-2 and aspect.max() <= 4 / 3 + 1e-2
    assert aspect.min() < 0.8 and aspect.max() > 1.25  # the range is used

    out = random_resized_crop(x, side, scale=(0.2, 0.6), ratio=(1.0, 1.0), flip_p=0.0, generator=gen(2))
    w, h = crop_sides(out)
    area = w * h
    assert area.min() >= 0.2 - 2e-3 and area.max() <= 0.6 + 2e-3
    assert abs(area.mean().item() - 0.4) < 0.02  # uniform on [0.2, 0.6]: mean 0.4, sd 0.115 / sqrt(400)


@pytest.mark.parametrize("p", [0.0, 0.3, 0.5, 1.0])
def test_flip_rate(p: float) -> None:
    n = 4000
    x = ramps(n, 8)[:, :1]  # x-ramp: increasing left to right unless flipped
    out = random_resized_crop(x, 8, scale=(1.0, 1.0), ratio=(1.0, 1.0), flip_p=p, generator=gen(7))
    flipped = (out[:, 0, 4, 0] > out[:, 0, 4, -1]).float().mean().item()
    assert abs(flipped - p) < 4 * math.sqrt(p * (1 - p) / n) + 1e-9


# ------------------------------------------------------------------------------- colour ops
@pytest.mark.parametrize("channels", [1, 3])
def test_color_jitter_p0_is_identity(channels: int) -> None:
    x = rand_images(c=channels)
    assert torch.equal(color_jitter(x, p=0.0, generator=gen(0)), x)


def test_color_jitter_rate_and_gray_input() -> None:
    x = rand_images(n=2000, c=1, side=4, seed=2) * 0.5 + 0.25
    out = color_jitter(x, p=0.8, generator=gen(0))
    changed = (out - x).abs().flatten(1).amax(1) > 1e-6
    assert abs(changed.float().mean().item() - 0.8) < 0.04


def test_color_jitter_brightness_only_scales() -> None:
    x = torch.full((500, 3, 4, 4), 0.5)
    out = color_jitter(x, brightness=0.4, contrast=0, saturation=0, hue=0, p=1.0, generator=gen(0))
    factors = out[:, 0, 0, 0] / 0.5
    assert torch.allclose(out, factors.view(-1, 1, 1, 1) * 0.5)  # one factor per image, all channels
    assert factors.min() >= 0.6 - 1e-6 and factors.max() <= 1.4 + 1e-6
    assert factors.min() < 0.65 and factors.max() > 1.35


def test_color_jitter_leaves_gray_pixels_gray_under_hue_and_saturation() -> None:
    gray = rand_images(n=16, c=1).expand(16, 3, 16, 16)
    out = color_jitter(gray, brightness=0, contrast=0, saturation=0.8, hue=0.5, p=1.0, generator=gen(0))
    assert torch.allclose(out, gray, atol=1e-5)


def test_rotate_hue_properties() -> None:
    x = rand_images(n=4, c=3)
    turns = torch.tensor([1 / 3, 1.0, 0.17, -0.4])
    out = _rotate_hue(x, turns)
    assert torch.allclose(out[0], x[0, [2, 0, 1]], atol=1e-5)  # a third of a turn permutes R, G, B
    assert torch.allclose(out[1], x[1], atol=1e-5)  # a full turn: nothing
    assert torch.allclose(out.mean(1), x.mean(1), atol=1e-5)  # a rotation about the gray axis


def test_random_grayscale() -> None:
    x = rand_images(n=2000, c=3, side=4)
    out = random_grayscale(x, p=0.2, generator=gen(0))
    is_gray = (out[:, 0] == out[:, 1]).all(-1).all(-1) & (out[:, 1] == out[:, 2]).all(-1).all(-1)
    untouched = (out == x).flatten(1).all(1)
    assert (is_gray ^ untouched).all()  # every image is either grayed or left alone
    assert abs(is_gray.float().mean().item() - 0.2) < 0.04
    expected = 0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]
    assert torch.allclose(out[is_gray, 0], expected[is_gray], atol=1e-6)
    one = rand_images(c=1)
    assert torch.equal(random_grayscale(one, p=1.0, generator=gen(0)), one)


@pytest.mark.parametrize("threshold", [0.3, 0.5, 0.8])
def test_solarize_p1_inverts_above_threshold(threshold: float) -> None:
    x = rand_images(c=3)
    x[0, 0, 0, 0] = threshold  # the boundary itself is inverted
    out = solarize(x, threshold=threshold, p=1.0, generator=gen(0))
    expected = torch.where(x >= threshold, 1 - x, x)
    assert torch.equal(out, expected)
    assert out[0, 0, 0, 0] == pytest.approx(1 - threshold)
    assert torch.equal(solarize(x, threshold=threshold, p=0.0, generator=gen(0)), x)


# ------------------------------------------------------------------------------------- blur
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("value", [0.0, 0.37, 1.0])
def test_blur_keeps_constant_images(channels: int, value: float) -> None:
    x = torch.full((6, channels, 16, 16), value)
    out = gaussian_blur(x, sigma=(0.5, 3.0), p=1.0, generator=gen(0))
    assert torch.allclose(out, x, atol=1e-6)


def test_blur_smooths_and_p0_is_identity() -> None:
    x = rand_images(n=8, c=3, side=32)
    blurred = gaussian_blur(x, sigma=(1.5, 2.0), p=1.0, generator=gen(0))
    # a convex combination of neighbours: inside the input's range, lower variance, same mean (about)
    assert blurred.min() >= x.min() - 1e-6 and blurred.max() <= x.max() + 1e-6
    assert (blurred.flatten(1).var(1) < 0.5 * x.flatten(1).var(1)).all()
    assert torch.allclose(blurred.mean((2, 3)), x.mean((2, 3)), atol=0.02)
    assert torch.allclose(gaussian_blur(x, p=0.0, generator=gen(0)), x, atol=1e-6)


def test_blur_is_per_sample() -> None:
    x = rand_images(n=1, c=1, side=32).expand(64, 1, 32, 32).contiguous()
    out = gaussian_blur(x, sigma=(0.1, 2.0), p=0.5, generator=gen(0))
    unchanged = (out - x).abs().flatten(1).amax(1) < 1e-4
    assert 0 < unchanged.sum() < 64  # some skipped, some blurred, in one batch


# ------------------------------------------------------------------------------------- CUDA
@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("channels", [1, 3])
def test_view_augment_cuda(channels: int) -> None:
    images = torch.randint(0, 256, (32, channels, 16, 16), dtype=torch.uint8, generator=gen(0)).cuda()
    aug = ViewAugment(blur_p=0.5, solarize_p=0.5)

    def cuda_gen(seed: int) -> torch.Generator:
        return torch.Generator(device="cuda").manual_seed(seed)

    a, b, c = aug(images, cuda_gen(1)), aug(images, cuda_gen(1)), aug(images, cuda_gen(2))
    assert a.device.type == "cuda" and a.shape == (32, channels, 16, 16) and a.dtype == torch.float32
    assert a.min() >= 0 and a.max() <= 1
    assert torch.equal(a, b) and not torch.equal(a, c)
    flipped = random_resized_crop(images.float() / 255, 16, (1.0, 1.0), (1.0, 1.0), flip_p=1.0, generator=cuda_gen(0))
    assert torch.allclose(flipped, images.float().flip(-1) / 255, atol=1e-5)
