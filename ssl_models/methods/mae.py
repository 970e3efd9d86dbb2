"""MAE: "Masked Autoencoders Are Scalable Vision Learners" (He et al., CVPR 2022, arXiv:2111.06377).

Across workers: a per-patch loss normalised by the number of masked patches, the same for every
image (``keep`` of ``L`` visible), so each worker's local mean averaged over workers is the
one-process loss; no BatchNorm (LayerNorm only). The random mask is drawn in ``views``, so it is
split with the views.
"""

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

    def keep(self, length: int) -> int:
        """How many of ``length`` patches stay visible."""
        return max(1, int(length * (1 - self.mask_ratio)))

    def views(self, images: Tensor, generator: torch.Generator | None = None) -> list[Tensor]:
        """One view per image and its random patch mask (N, 1, h, w): 1 on the masked patches,
        exactly ``keep`` zeros per image."""
        x = self.augment(images, generator)
        p = self.encoder.backbone.patch_size
        n, h, w = x.shape[0], x.shape[-2] // p, x.shape[-1] // p
        # random masking: the ranks of uniform noise are a random permutation per image
        noise = torch.rand(n, h * w, generator=generator, device=x.device)
        mask = noise.argsort(1).argsort(1) >= self.keep(h * w)  # (N, L)
        return [x, mask.to(torch.float32).view(n, 1, h, w)]

    def forward(self, views: list[Tensor]) -> SSLOutput:
        x, mask_map = views
        vit: VisionTransformer = self.encoder.backbone
        x = (x - self.encoder.mean) / self.encoder.std
        tokens, grid = vit.patchify(x)  # (N, L, D)
        n, length, dim = tokens.shape
        keep = self.keep(length)
        mask = mask_map.reshape(n, length).float()  # (N, L) 1 on masked patches, in image order
        shuffle = mask.argsort(dim=1, stable=True)  # (N, L) visible patches first, each part in image order
        restore = shuffle.argsort(1)
        keep_idx = shuffle[:, :keep]
        visible = tokens.gather(1, keep_idx[..., None].expand(-1, -1, dim))  # (N, keep, D)
        latent = vit.encode(visible)  # (N, 1 + keep, D)
        pred = self.decoder(latent, restore, grid)  # (N, L, p*p*C)
        target = patchify_pixels(x, vit.patch_size).float()
        if self.norm_pix_loss:
            target = (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True) + 1e-6).sqrt()
        per_patch = (pred.float() - target).pow(2).mean(-1)  # (N, L)
        return SSLOutput((per_patch * mask).sum() / mask.sum(), embedding=None)
