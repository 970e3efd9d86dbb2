"""Negative cosine similarity, the loss of SimSiam (Chen & He, CVPR 2021, arXiv:2011.10566) and,
up to ``2 + 2 * loss``, of BYOL (Grill et al., NeurIPS 2020, arXiv:2006.07733)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class NegativeCosineSimilarity(nn.Module):
    """``-mean_i cos(p_i, z_i)``: -1 when every prediction points along its target.

    The caller applies the stop-gradient (``z.detach()``); computed in float32.
    """

    def forward(self, p: Tensor, z: Tensor) -> Tensor:
        """Args: p, z: (N, D). Returns: scalar loss in [-1, 1]."""
        return -F.cosine_similarity(p.float(), z.float(), dim=1).mean()
