"""MAE: "Masked Autoencoders Are Scalable Vision Learners" (He et al., CVPR 2022, arXiv:2111.06377)."""

from __future__ import annotations

import torch
from torch import Tensor

from ssl_models.augment import ViewAugment
from ssl_models.backbones import VIT_BACKBONES, Encoder
from ssl_models.backbones.vit import VisionTransformer
from ssl_models.heads import MAEDecoder
from ssl_models.methods.base import SSLMethod, SSLOutput


def patchify_pixels(x: Tensor, patch_size: int) -> Tensor:
    """(N, C, H, W) -> (N, h * w, p * p * C) pixel patches, row-major like the ViT's tokens."""
    n, c = x.shape[:2]
    p = patch_size
    patches = x.unfold(2, p, p).unfold(3, p, p)  # (N, C, h, w, p, p)
    return patches.permute(0, 2, 3, 4, 5, 1).reshape(n, -1, p * p * c)


class MAE(SSLMethod):
    """Mask most patches, encode only the visible ones with the ViT, reconstruct the pixels of the
    masked ones with a light transformer decoder; the loss is the MSE on masked patches.

    Args:
        encoder: normalization + a ``VisionTransformer`` backbone (``vit_tiny``).
        augment: the view generator (default: crop and flip only, as in the paper).
        mask_ratio: fraction of patches masked (paper: 0.75).
        decoder_dim, decoder_depth, decoder_heads: decoder sizes (paper: 512 / 8 / 16; the paper
            shows a shallow, narrow decoder loses little).
        norm_pix_loss: reconstruct per-patch standardized pixels (paper: True).
    """

    name = "mae"
    # paper: AdamW lr 1.5e-4 x batch/256, wd 0.05, for 800+ epochs; 1e-3 for short runs
    optim = {"optimizer": "adamw", "lr": 1e-3, "weight_decay": 0.05}
    backbones = VIT_BACKBONES
    default_augment = {"jitter_strength": 0.0, "grayscale_p": 0.0}  # crop and flip only

    def __init__(
        self,
        encoder: Encoder,
        augment: ViewAugment | None = None,
        mask_ratio: float = 0.75,
        decoder_dim: int = 128,
        decoder_depth: int = 2,
        decoder_heads: int = 4,
        norm_pix_loss: bool = True,
    ) -> None:
        if not isinstance(encoder.backbone, VisionTransformer):
            raise ValueError(
                f"MAE needs a Vision Transformer backbone (backbone: vit_tiny), got {type(encoder.backbone).__name__}"
            )
        super().__init__(encoder, augment)
        self.mask_ratio = mask_ratio
        self.norm_pix_loss = norm_pix_loss
        vit = encoder.backbone
        patch_dim = vit.patch_size**2 * vit.in_channels
        self.decoder = MAEDecoder(vit.out_dim, patch_dim, decoder_dim, decoder_depth, decoder_heads)

    def views(self, images: Tensor, generator: torch.Generator | None = None) -> list[Tensor]:
        """One view per image."""
        return [self.augment(images, generator)]

    def forward(self, views: list[Tensor]) -> SSLOutput:
        (x,) = views
        vit: VisionTransformer = self.encoder.backbone
        x = (x - self.encoder.mean) / self.encoder.std
        tokens, grid = vit.patchify(x)  # (N, L, D)
        n, length, dim = tokens.shape
        keep = max(1, int(length * (1 - self.mask_ratio)))
        # random masking: argsort of noise gives a random permutation per image
        shuffle = torch.rand(n, length, device=x.device).argsort(1)  # (N, L)
        restore = shuffle.argsort(1)
        keep_idx = shuffle[:, :keep]
        visible = tokens.gather(1, keep_idx[..., None].expand(-1, -1, dim))  # (N, keep, D)
        latent = vit.encode(visible)  # (N, 1 + keep, D)
        pred = self.decoder(latent, restore, grid)  # (N, L, p*p*C)
        target = patchify_pixels(x, vit.patch_size).float()
        if self.norm_pix_loss:
            target = (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True) + 1e-6).sqrt()
        mask = torch.ones(n, length, device=x.device)
        mask[:, :keep] = 0
        mask = mask.gather(1, restore)  # 1 on masked patches, in image order
        per_patch = (pred.float() - target).pow(2).mean(-1)  # (N, L)
        return SSLOutput((per_patch * mask).sum() / mask.sum(), embedding=None)
