"""Context encoder: "Context Encoders: Feature Learning by Inpainting" (Pathak et al., CVPR 2016,
arXiv:1604.07379).

Across workers: the squared error is divided by the erased area, the same square for every image,
so each worker's local mean averaged over workers is the one-process loss; nothing to gather;
BatchNorm synchronised by the engine. The masks are drawn in ``views``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ssl_models.augment import ViewAugment
from ssl_models.backbones import Encoder
from ssl_models.heads import ConvDecoder
from ssl_models.methods.base import SSLMethod, SSLOutput


def random_square_mask(
    n: int,
    size: tuple[int, int],
    side: int,
    generator: torch.Generator | None = None,
    device: torch.device | None = None,
) -> Tensor:
    """One random ``side`` x ``side`` square per image: (N, 1, H, W) float, 1 inside the square."""
    h, w = size
    top = torch.randint(0, h - side + 1, (n, 1, 1, 1), generator=generator, device=device)
    left = torch.randint(0, w - side + 1, (n, 1, 1, 1), generator=generator, device=device)
    rows = torch.arange(h, device=device).view(1, 1, h, 1)
    cols = torch.arange(w, device=device).view(1, 1, 1, w)
    return ((rows >= top) & (rows < top + side) & (cols >= left) & (cols < left + side)).float()


class Inpainting(SSLMethod):
    """Erase a square of the image (filled with the mean pixel) and reconstruct it from its context;
    the L2 loss covers the erased region only. The paper's adversarial term is left out (it sharpens
    the inpainting, not the features).

    Args:
        encoder: normalization + backbone.
        augment: the view generator (default: crop and flip only).
        mask_fraction: side of the square as a fraction of the image side (paper: 1/2, a quarter
            of the area; the random-block variant, whose features transfer best).
        decoder_width: channels of the decoder's first map.
    """

    name = "inpainting"
    # paper: Adam lr 2e-4 (with a GAN loss); 1e-3 for short runs
    optim = {"optimizer": "adamw", "lr": 1e-3, "weight_decay": 0.05}
    default_augment = {"jitter_strength": 0.0, "grayscale_p": 0.0}  # crop and flip only

    def __init__(
        self,
        encoder: Encoder,
        augment: ViewAugment | None = None,
        mask_fraction: float = 0.5,
        decoder_width: int = 64,
    ) -> None:
        super().__init__(encoder, augment)
        self.mask_fraction = mask_fraction
        self.decoder = ConvDecoder(encoder.out_dim, encoder.mean.shape[1], decoder_width)

    def views(self, images: Tensor, generator: torch.Generator | None = None) -> list[Tensor]:
        """[masked image, clean image, mask (N, 1, H, W)]."""
        clean = self.augment(images, generator)
        h, w = clean.shape[-2:]
        side = max(1, round(self.mask_fraction * min(h, w)))
        mask = random_square_mask(clean.shape[0], (h, w), side, generator, clean.device)
        masked = clean * (1 - mask) + self.encoder.mean.to(clean.dtype) * mask  # erased = mean pixel
        return [masked, clean, mask]

    def forward(self, views: list[Tensor]) -> SSLOutput:
        masked, clean, mask = views
        recon = self.decoder(self.encoder(masked), clean.shape[-2:])  # (N, C, H, W)
        target = (clean - self.encoder.mean) / self.encoder.std
        sq_err = (recon.float() - target.float()).pow(2) * mask.float()
        loss = sq_err.sum() / (mask.float().sum() * clean.shape[1]).clamp(min=1)
        return SSLOutput(loss, embedding=None)
