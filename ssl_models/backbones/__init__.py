"""Backbones: image (N, C, H, W) float in [0, 1] -> features (N, out_dim)."""

from __future__ import annotations

from torch import nn

from ssl_models.backbones.encoder import Encoder
from ssl_models.backbones.resnet import resnet18_small
from ssl_models.backbones.small_cnn import SmallCNN
from ssl_models.backbones.vit import VisionTransformer, vit_tiny

BACKBONES = ("small_cnn", "resnet18", "vit_tiny")
VIT_BACKBONES = ("vit_tiny",)  # Vision Transformers (token inputs: what MAE needs)


def build_backbone(name: str, in_channels: int, width: int = 32, stem_stride: int = 1) -> nn.Module:
    """A backbone by name; it has an ``out_dim`` attribute.

    Args:
        name: one of ``BACKBONES``.
        in_channels: channels of the input images.
        width: channels of the first stage of ``small_cnn`` (doubled at each of its stages);
            ``vit_tiny`` ignores it (192 wide, 4 x 4 patches).
        stem_stride: stride of ``small_cnn``'s first convolution (1 or 2, ``SmallCNN``); the
            other backbones have their own stems and ignore it.
    """
    if name == "small_cnn":
        return SmallCNN(in_channels=in_channels, width=width, stem_stride=stem_stride)
    if name == "resnet18":
        return resnet18_small(in_channels=in_channels)
    if name == "vit_tiny":
        return vit_tiny(in_channels=in_channels)
    raise ValueError(f"unknown backbone {name!r}; choose one of {', '.join(BACKBONES)}")


__all__ = ["BACKBONES", "VIT_BACKBONES", "Encoder", "SmallCNN", "VisionTransformer", "build_backbone", "resnet18_small", "vit_tiny"]
