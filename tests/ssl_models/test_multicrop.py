"""Multi-crop views (global + local crops) and running a network over them by size."""

from __future__ import annotations

import pytest
import torch

from ssl_models.augment import ViewAugment
from ssl_models.augment.multicrop import MultiCropAugment, local_crop_size
from ssl_models.methods.crops import forward_crops


@pytest.mark.parametrize("side,local", [(16, 8), (28, 12), (32, 12), (64, 28)])
def test_local_crop_size(side: int, local: int) -> None:
    assert local_crop_size(side) == local


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("side", [28, 32])
def test_multicrop_counts_and_shapes(channels: int, side: int) -> None:
    images = torch.randint(0, 256, (5, channels, side, side), dtype=torch.uint8)
    crops = MultiCropAugment(global_crops=2, local_crops=4)(images, torch.Generator().manual_seed(0))
    assert len(crops) == 6
    local = local_crop_size(side)
    assert [c.shape for c in crops] == [(5, channels, side, side)] * 2 + [(5, channels, local, local)] * 4
    assert all(c.dtype == torch.float32 and c.min() >= 0 and c.max() <= 1 for c in crops)
    assert not torch.equal(crops[0], crops[1])  # independent crops


def test_multicrop_explicit_sizes_seed_and_base() -> None:
    images = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8)
    aug = MultiCropAugment(global_crops=1, local_crops=3, global_size=24, local_size=8, base=ViewAugment(jitter_p=0.0))
    a = aug(images, torch.Generator().manual_seed(1))
    b = aug(images, torch.Generator().manual_seed(1))
    assert [c.shape[-1] for c in a] == [24, 8, 8, 8]
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert aug.sizes(32) == (24, 8)
    assert MultiCropAugment(local_crops=0)(images)[1].shape == (3, 3, 32, 32)


def test_local_crops_are_zoomed_in() -> None:
    """Local crops cover small areas: a horizontal ramp image has a narrower value range in them."""
    ramp = torch.linspace(0, 1, 32).expand(8, 1, 32, 32).contiguous()
    aug = MultiCropAugment(local_crops=2, base=ViewAugment(jitter_p=0.0, grayscale_p=0.0))
    crops = aug(ramp, torch.Generator().manual_seed(0))
    spread = [(c.amax((1, 2, 3)) - c.amin((1, 2, 3))).mean().item() for c in crops]
    assert max(spread[2:]) < min(spread[:2])


def test_forward_crops_groups_by_size() -> None:
    calls: list[tuple[int, ...]] = []

    def fn(x: torch.Tensor) -> torch.Tensor:
        calls.append(tuple(x.shape))
        return x.mean((2, 3))  # (M, C)

    crops = [torch.rand(4, 2, 8, 8) for _ in range(2)] + [torch.rand(4, 2, 4, 4) for _ in range(3)]
    out = forward_crops(fn, crops)
    assert calls == [(8, 2, 8, 8), (12, 2, 4, 4)]  # one batched pass per size
    assert len(out) == 5
    for o, c in zip(out, crops):
        torch.testing.assert_close(o, c.mean((2, 3)))
