"""A small VGG-style CNN sized for CPU training on small images (28x28 to 64x64)."""

from __future__ import annotations

from torch import Tensor, nn


def _conv_bn_relu(c_in: int, c_out: int, stride: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]


class SmallCNN(nn.Module):
    """Three stages of 3x3 conv-BN-ReLU (widths w, 2w, 4w; stride 2 between stages), then global
    average pooling. With w=32 at 28x28: 0.29 M parameters, ~22 M multiply-adds per image.

    Args:
        in_channels: input channels.
        width: channels of the first stage.
        stem_stride: stride of the first convolution. 2 moves the first stage's stride into it
            (the second convolution then keeps the resolution): the same parameters and nearly
            the same multiply-adds, but no full-resolution activation, whose BatchNorm and ReLU
            are memory-bound (a 1.3x faster training step on a 2-core CPU, bench/README.md).

    Shapes:
        (N, C, H, W) -> (N, 4 * width)
    """

    def __init__(self, in_channels: int = 1, width: int = 32, stem_stride: int = 1) -> None:
        super().__init__()
        if stem_stride not in (1, 2):
            raise ValueError(f"stem_stride must be 1 or 2 (got {stem_stride})")
        w = width
        self.features = nn.Sequential(
            *_conv_bn_relu(in_channels, w, stride=stem_stride),
            *_conv_bn_relu(w, 2 * w, stride=3 - stem_stride),  # H/2 either way
            *_conv_bn_relu(2 * w, 2 * w),
            *_conv_bn_relu(2 * w, 4 * w, stride=2),  # H/4
            *_conv_bn_relu(4 * w, 4 * w),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.out_dim = 4 * w

    def forward(self, x: Tensor) -> Tensor:
        return self.pool(self.features(x)).flatten(1)
