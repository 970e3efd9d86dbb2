"""torchvision's ResNet-18 with the stem adapted to small images (CIFAR-style)."""

from __future__ import annotations

from torch import nn


def resnet18_small(in_channels: int = 3) -> nn.Module:
    """ResNet-18 (He et al., 2016) with a 3x3 stride-1 stem and no max-pool, as is usual for
    32x32 inputs; the classifier is removed so it returns 512-d pooled features.

    Shapes:
        (N, C, H, W) -> (N, 512)
    """
    from torchvision.models import resnet18  # here: torchvision's import pulls in torch._dynamo (~1 s a process)

    model = resnet18(weights=None)
    model.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    model.fc = nn.Identity()
    model.out_dim = 512
    return model
