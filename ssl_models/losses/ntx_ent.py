"""NT-Xent, the normalized temperature-scaled cross-entropy of SimCLR (Chen et al., 2020,
arXiv:2002.05709).

Across workers the negatives are the whole global batch's: each worker's 2n embeddings (its rows)
are compared with every worker's 2B, gathered with gradients (``ssl_models.dist.gather``), as in
SimCLR's TPU code and lightly's ``NTXentLoss(gather_distributed=True)``. The mean over workers of
the per-worker losses (each the mean over its rows) is the one-process loss over the 2B rows.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ssl_models import dist


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
        if dist.is_distributed():
            return self._distributed(z0, z1)
        n = z0.shape[0]
        with torch.autocast(z0.device.type, enabled=False):  # autocast would run the matmul in bf16
            z = F.normalize(torch.cat([z0, z1]).float(), dim=1)  # (2N, D)
            logits = z @ z.T / self.temperature  # (2N, 2N)
            logits.fill_diagonal_(float("-inf"))  # a view is not its own positive
            # the positive of row i is i + N for the first half, i - N for the second
            targets = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
            return F.cross_entropy(logits, targets)

    def _distributed(self, z0: Tensor, z1: Tensor) -> Tensor:
        """This worker's 2n rows against the global 2B columns [z0 of every worker, z1 of every
        worker]; row i of view 0 is column ``rank * n + i``, its positive ``B + rank * n + i``."""
        n, rank = z0.shape[0], dist.rank()
        b = n * dist.world_size()
        with torch.autocast(z0.device.type, enabled=False):
            z0, z1 = F.normalize(z0.float(), dim=1), F.normalize(z1.float(), dim=1)
            z = torch.cat([z0, z1])  # (2n, D) this worker's rows
            both = dist.gather(torch.cat([z0, z1], dim=1))  # (B, 2D): one collective for both views
            keys = torch.cat(both.chunk(2, dim=1))  # (2B, D) [z0 of every worker, z1 of every worker]
            logits = z @ keys.T / self.temperature  # (2n, 2B)
            own = torch.arange(n, device=z.device) + rank * n
            self_cols = torch.cat([own, own + b])  # where each row meets itself
            logits[torch.arange(2 * n, device=z.device), self_cols] = float("-inf")
            targets = torch.cat([own + b, own])  # the other view of the same image
            return F.cross_entropy(logits, targets)
