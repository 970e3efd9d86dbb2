"""A small Vision Transformer (Dosovitskiy et al., ICLR 2021, arXiv:2010.11929) for small images:
any channel count, any image side divisible by the patch size, fixed 2-D sin-cos positions (as in
MAE, He et al., 2022) so that crops of different sizes need no interpolation."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def sincos_pos_embed(dim: int, h: int, w: int, device: torch.device | None = None) -> Tensor:
    """Fixed 2-D sine-cosine position embeddings, half the channels per axis.

    Returns:
        (h * w, dim) float32, row-major over the (h, w) grid.
    """
    if dim % 4:
        raise ValueError(f"sin-cos position embeddings need a dimension divisible by 4, got {dim}")
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float32, device=device) / (dim // 4))
    ys, xs = torch.meshgrid(
        torch.arange(h, dtype=torch.float32, device=device),
        torch.arange(w, dtype=torch.float32, device=device),
        indexing="ij",
    )
    out_y = ys.reshape(-1, 1) * omega  # (h*w, dim/4)
    out_x = xs.reshape(-1, 1) * omega
    return torch.cat([out_y.sin(), out_y.cos(), out_x.sin(), out_x.cos()], dim=1)


class ViTBlock(nn.Module):
    """Pre-norm transformer block: x + MHSA(LN(x)), then x + MLP(LN(x)).

    Shapes:
        (N, L, dim) -> (N, L, dim)
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embedding dim {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: Tensor) -> Tensor:
        n, length, dim = x.shape
        qkv = self.qkv(self.norm1(x)).view(n, length, 3, self.num_heads, dim // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (N, heads, L, dim / heads)
        attn = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(n, length, dim)
        x = x + self.proj(attn)
        return x + self.mlp(self.norm2(x))


class VisionTransformer(nn.Module):
    """Patch embedding + [CLS] token + transformer blocks + LayerNorm; returns the [CLS] feature.

    ``patchify`` and ``encode`` are exposed so that MAE can drop masked tokens in between.

    Args:
        in_channels: image channels.
        patch_size: side of the square patches; must divide the image sides.
        embed_dim, depth, num_heads, mlp_ratio: transformer sizes.

    Shapes:
        (N, C, H, W) -> (N, embed_dim)
    """

    def __init__(
        self,
        in_channels: int = 3,
        patch_size: int = 4,
        embed_dim: int = 192,
        depth: int = 12,
        num_heads: int = 3,
        mlp_ratio: float = 4.0,
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.patch_size = patch_size
        self.patch_embed = nn.Conv2d(in_channels, embed_dim, patch_size, stride=patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.blocks = nn.ModuleList([ViTBlock(embed_dim, num_heads, mlp_ratio) for _ in range(depth)])
        self.norm = nn.LayerNorm(embed_dim)
        self.out_dim = embed_dim
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    def patchify(self, x: Tensor) -> tuple[Tensor, tuple[int, int]]:
        """Patch tokens with positions added: (N, C, H, W) -> ((N, h * w, D), (h, w))."""
        p = self.patch_size
        if x.shape[-2] % p or x.shape[-1] % p:
            raise ValueError(
                f"image size {tuple(x.shape[-2:])} is not divisible by the ViT patch size {p}; "
                "resize the images or pick a patch size that divides them"
            )
        tokens = self.patch_embed(x)  # (N, D, h, w)
        h, w = tokens.shape[-2:]
        tokens = tokens.flatten(2).transpose(1, 2)  # (N, h*w, D)
        return tokens + sincos_pos_embed(tokens.shape[-1], h, w, x.device).to(tokens.dtype), (h, w)

    def encode(self, tokens: Tensor) -> Tensor:
        """Prepend [CLS] and run the transformer: (N, L, D) -> (N, 1 + L, D)."""
        x = torch.cat([self.cls_token.expand(tokens.shape[0], -1, -1).to(tokens.dtype), tokens], dim=1)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)

    def forward(self, x: Tensor) -> Tensor:
        tokens, _ = self.patchify(x)
        return self.encode(tokens)[:, 0]


def vit_tiny(in_channels: int = 3, patch_size: int = 4) -> VisionTransformer:
    """ViT-Tiny (DeiT-Ti sizes: 192 wide, 12 blocks, 3 heads; 5.5 M parameters) with 4 x 4 patches
    for 28-64 px images (64 tokens at 32 x 32)."""
    return VisionTransformer(in_channels, patch_size, embed_dim=192, depth=12, num_heads=3)
