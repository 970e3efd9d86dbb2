"""Denoising autoencoder: "Extracting and Composing Robust Features with Denoising Autoencoders"
(Vincent et al., ICML 2008) and "Stacked Denoising Autoencoders" (Vincent et al., JMLR 2010).

Across workers: a per-pixel MSE over equal-sized batches (each worker's local mean; their mean is
the one-process loss); nothing to gather; BatchNorm (encoder, decoder) synchronised by the engine.
The corruption is drawn in ``views``, so it is split with the views.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ssl_models.augment import ViewAugment
from ssl_models.backbones import Encoder
from ssl_models.heads import ConvDecoder
from ssl_models.methods.base import SSLMethod, SSLOutput


def corrupt(
    x: Tensor, mask_ratio: float, noise_std: float, generator: torch.Generator | None = None
) -> Tensor:
    """Masking noise (each pixel zeroed with probability ``mask_ratio``, all channels together) and
    additive Gaussian noise, clamped to [0, 1]: (N, C, H, W) -> same."""
    n, _, h, w = x.shape
    keep = torch.rand(n, 1, h, w, generator=generator, device=x.device) >= mask_ratio
    noise = torch.randn(x.shape, generator=generator, device=x.device) * noise_std
    return ((x + noise) * keep).clamp(0, 1)


class DAE(SSLMethod):
    """Encode a corrupted image, decode the clean one (MSE in the encoder's normalized pixel space).

    Args:
        encoder: normalization + backbone.
        augment: the view generator (default: crop and flip only).
        mask_ratio: fraction of pixels destroyed by masking noise (Vincent et al.: 25 %).
        noise_std: std of additive Gaussian noise on [0, 1] pixels.
        decoder_width: channels of the decoder's first map.
    """

    name = "dae"
    # Adam, the usual autoencoder optimizer
    optim = {"optimizer": "adamw", "lr": 1e-3, "weight_decay": 0.05}
    default_augment = {"jitter_strength": 0.0, "grayscale_p": 0.0}  # crop and flip only

    def __init__(
        self,
        encoder: Encoder,
        augment: ViewAugment | None = None,
        mask_ratio: float = 0.25,
        noise_std: float = 0.1,
        decoder_width: int = 64,
    ) -> None:
        super().__init__(encoder, augment)
        self.mask_ratio = mask_ratio
        self.noise_std = noise_std
        self.decoder = ConvDecoder(encoder.out_dim, encoder.mean.shape[1], decoder_width)

    def views(self, images: Tensor, generator: torch.Generator | None = None) -> list[Tensor]:
        """[corrupted, clean] views, both (N, C, H, W) in [0, 1]."""
        clean = self.augment(images, generator)
        return [corrupt(clean, self.mask_ratio, self.noise_std, generator), clean]

    def forward(self, views: list[Tensor]) -> SSLOutput:
        noisy, clean = views
        recon = self.decoder(self.encoder(noisy), clean.shape[-2:])  # (N, C, H, W)
        target = (clean - self.encoder.mean) / self.encoder.std
        return SSLOutput(F.mse_loss(recon.float(), target.float()), embedding=None)
