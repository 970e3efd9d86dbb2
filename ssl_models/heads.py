"""Projection and prediction heads (MLPs on top of the backbone's features)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ssl_models.backbones.vit import ViTBlock, sincos_pos_embed


class ProjectionHead(nn.Module):
    """Linear-BN-ReLU blocks ending in a linear layer: (N, in_dim) -> (N, out_dim).

    Args:
        in_dim: input features.
        hidden_dim: width of the hidden layers.
        out_dim: output features.
        num_layers: number of linear layers (>= 1).
        last_bn: a BatchNorm (without affine) after the last layer, as in SimSiam and Barlow Twins.
    """

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, num_layers: int = 2, last_bn: bool = False) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        dim = in_dim
        for _ in range(num_layers - 1):
            layers += [nn.Linear(dim, hidden_dim, bias=False), nn.BatchNorm1d(hidden_dim), nn.ReLU(inplace=True)]
            dim = hidden_dim
        layers.append(nn.Linear(dim, out_dim, bias=not last_bn))
        if last_bn:
            layers.append(nn.BatchNorm1d(out_dim, affine=False))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class SimCLRProjectionHead(ProjectionHead):
    """SimCLR's 2-layer MLP head (Chen et al., 2020): in_dim -> hidden_dim -> out_dim."""

    def __init__(self, in_dim: int, hidden_dim: int = 512, out_dim: int = 128) -> None:
        super().__init__(in_dim, hidden_dim, out_dim, num_layers=2)


class MoCoProjectionHead(nn.Module):
    """MoCo v2's MLP head (Chen et al., 2020, arXiv:2003.04297): Linear-ReLU-Linear, no BatchNorm
    (paper: 2048 hidden, 128 out)."""

    def __init__(self, in_dim: int, hidden_dim: int = 512, out_dim: int = 128) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.ReLU(inplace=True), nn.Linear(hidden_dim, out_dim))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class BYOLProjectionHead(ProjectionHead):
    """BYOL's projector (Grill et al., 2020): Linear-BN-ReLU-Linear (paper: 4096 hidden, 256 out)."""

    def __init__(self, in_dim: int, hidden_dim: int = 512, out_dim: int = 128) -> None:
        super().__init__(in_dim, hidden_dim, out_dim, num_layers=2)


class BYOLPredictionHead(ProjectionHead):
    """BYOL's predictor, same shape as its projector: out_dim -> hidden_dim -> out_dim."""

    def __init__(self, in_dim: int = 128, hidden_dim: int = 512, out_dim: int = 128) -> None:
        super().__init__(in_dim, hidden_dim, out_dim, num_layers=2)


class SimSiamProjectionHead(ProjectionHead):
    """SimSiam's projector (Chen & He, 2021): 3 layers, BN on every layer including the output
    (paper: 2048 hidden and out)."""

    def __init__(self, in_dim: int, hidden_dim: int = 512, out_dim: int = 512) -> None:
        super().__init__(in_dim, hidden_dim, out_dim, num_layers=3, last_bn=True)


class SimSiamPredictionHead(ProjectionHead):
    """SimSiam's bottleneck predictor: out_dim -> out_dim / 4 -> out_dim (paper: 2048 -> 512 -> 2048)."""

    def __init__(self, in_dim: int = 512, hidden_dim: int = 128, out_dim: int = 512) -> None:
        super().__init__(in_dim, hidden_dim, out_dim, num_layers=2)


class BarlowTwinsProjectionHead(ProjectionHead):
    """Barlow Twins' projector (Zbontar et al., 2021): 3 layers (paper: 8192 wide)."""

    def __init__(self, in_dim: int, hidden_dim: int = 512, out_dim: int = 512) -> None:
        super().__init__(in_dim, hidden_dim, out_dim, num_layers=3)


class VICRegProjectionHead(ProjectionHead):
    """VICReg's expander (Bardes et al., 2022): 3 layers (paper: 8192 wide)."""

    def __init__(self, in_dim: int, hidden_dim: int = 512, out_dim: int = 512) -> None:
        super().__init__(in_dim, hidden_dim, out_dim, num_layers=3)


class SwAVProjectionHead(ProjectionHead):
    """SwAV's projector (Caron et al., 2020): Linear-BN-ReLU-Linear (paper: 2048 hidden, 128 out)."""

    def __init__(self, in_dim: int, hidden_dim: int = 512, out_dim: int = 128) -> None:
        super().__init__(in_dim, hidden_dim, out_dim, num_layers=2)


class SwAVPrototypes(nn.Module):
    """K prototype vectors on the unit sphere; (N, D) L2-normalized -> (N, K) cosine scores.

    Args:
        in_dim: embedding dimension.
        n_prototypes: K (paper: 3000 for ImageNet).
    """

    def __init__(self, in_dim: int = 128, n_prototypes: int = 300) -> None:
        super().__init__()
        self.layer = nn.Linear(in_dim, n_prototypes, bias=False)
        self.normalize()

    def forward(self, z: Tensor) -> Tensor:
        return self.layer(z)

    @torch.no_grad()
    def normalize(self) -> None:
        """Project the prototypes back onto the unit sphere (done after every step in SwAV)."""
        self.layer.weight.copy_(F.normalize(self.layer.weight, dim=1))


class DINOProjectionHead(nn.Module):
    """DINO's head (Caron et al., 2021): 3-layer GELU MLP to a bottleneck, L2 normalization, then a
    weight-normalized linear layer with its norm fixed to 1 (paper: 2048 hidden, 256 bottleneck,
    65536 out). ``use_bn`` puts BatchNorm after the hidden layers, as DINO's ``--use_bn_in_head``.

    Shapes:
        (N, in_dim) -> (N, out_dim)
    """

    def __init__(self, in_dim: int, hidden_dim: int = 512, bottleneck_dim: int = 128, out_dim: int = 1024,
                 use_bn: bool = False) -> None:
        super().__init__()

        def hidden(d_in: int) -> list[nn.Module]:
            return [nn.Linear(d_in, hidden_dim), *([nn.BatchNorm1d(hidden_dim)] if use_bn else []), nn.GELU()]

        self.mlp = nn.Sequential(*hidden(in_dim), *hidden(hidden_dim), nn.Linear(hidden_dim, bottleneck_dim))
        self.last_layer = nn.Linear(bottleneck_dim, out_dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        x = F.normalize(self.mlp(x), dim=-1)  # (N, bottleneck_dim) on the sphere
        # weight norm with g = 1: each output is a cosine similarity
        return F.linear(x, F.normalize(self.last_layer.weight, dim=1))


class ConvDecoder(nn.Module):
    """A small transposed-convolution decoder from a feature vector to an image, for the
    reconstruction methods (denoising autoencoder, context encoder).

    Linear to a ``width`` x 4 x 4 map, three x2 upsampling stages (ConvTranspose-BN-ReLU) to 32 x 32,
    a 3x3 conv to ``out_channels``, and a bilinear resize to the requested size.

    Args:
        in_dim: feature dimension.
        out_channels: image channels.
        width: channels of the 4 x 4 map (halved at each stage).

    Shapes:
        (N, in_dim) -> (N, out_channels, H, W)
    """

    def __init__(self, in_dim: int, out_channels: int, width: int = 64) -> None:
        super().__init__()
        self.width = width
        self.fc = nn.Linear(in_dim, width * 16)
        layers: list[nn.Module] = []
        c = width
        for _ in range(3):
            layers += [
                nn.ConvTranspose2d(c, c // 2, 4, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(c // 2),
                nn.ReLU(inplace=True),
            ]
            c //= 2
        self.up = nn.Sequential(*layers)
        self.out = nn.Conv2d(c, out_channels, 3, padding=1)

    def forward(self, z: Tensor, size: tuple[int, int]) -> Tensor:
        x = self.up(self.fc(z).view(-1, self.width, 4, 4))  # (N, width / 8, 32, 32)
        if tuple(x.shape[-2:]) != tuple(size):
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        return self.out(x)


class MAEDecoder(nn.Module):
    """MAE's light decoder (He et al., 2022): embed the visible latents, put a shared mask token at
    every masked position, add sin-cos positions, a few transformer blocks, predict pixels.

    Args:
        in_dim: encoder width.
        patch_dim: pixels per patch (p * p * C).
        dim, depth, num_heads: decoder sizes (paper: 512 / 8 / 16).

    Shapes:
        latent (N, 1 + keep, in_dim), restore (N, L) -> (N, L, patch_dim)
    """

    def __init__(self, in_dim: int, patch_dim: int, dim: int = 128, depth: int = 2, num_heads: int = 4) -> None:
        super().__init__()
        self.embed = nn.Linear(in_dim, dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        nn.init.normal_(self.mask_token, std=0.02)
        self.blocks = nn.ModuleList([ViTBlock(dim, num_heads) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.pred = nn.Linear(dim, patch_dim)

    def forward(self, latent: Tensor, restore: Tensor, grid: tuple[int, int]) -> Tensor:
        x = self.embed(latent)  # (N, 1 + keep, dim)
        n, length = restore.shape
        tokens = torch.cat([x[:, 1:], self.mask_token.to(x.dtype).expand(n, length - x.shape[1] + 1, -1)], dim=1)
        tokens = tokens.gather(1, restore[..., None].expand(-1, -1, x.shape[-1]))  # unshuffle: (N, L, dim)
        tokens = tokens + sincos_pos_embed(x.shape[-1], *grid, device=x.device).to(tokens.dtype)
        x = torch.cat([x[:, :1], tokens], dim=1)
        for block in self.blocks:
            x = block(x)
        return self.pred(self.norm(x)[:, 1:])
