"""NT-Xent, the normalized temperature-scaled cross-entropy of SimCLR (Chen et al., 2020,
arXiv:2002.05709)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class NTXentLoss(nn.Module):
    """For N pairs of views, each of the 2N embeddings must pick its partner among the other 2N - 1.

    Computed in float32 whatever the autocast context: the similarity matrix and the softmax
    are where bf16 loses the most.

    Args:
        temperature: softmax temperature (SimCLR: 0.1 to 0.5; 0.2 works well on small images).
    """

    def __init__(self, temperature: float = 0.2) -> None:
        super().__init__()
        self.temperature = temperature

    def forward(self, z0: Tensor, z1: Tensor) -> Tensor:
        """Args: z0, z1: (N, D) embeddings of the two views. Returns: scalar loss."""
        n = z0.shape[0]
        with torch.autocast(z0.device.type, enabled=False):  # autocast would run the matmul in bf16
            z = F.normalize(torch.cat([z0, z1]).float(), dim=1)  # (2N, D)
            logits = z @ z.T / self.temperature  # (2N, 2N)
            logits.fill_diagonal_(float("-inf"))  # a view is not its own positive
            # the positive of row i is i + N for the first half, i - N for the second
            targets = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
            return F.cross_entropy(logits, targets)
