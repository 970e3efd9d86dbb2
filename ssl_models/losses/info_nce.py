"""InfoNCE against a queue of negatives, the contrastive loss of MoCo (He et al., CVPR 2020,
arXiv:1911.05722; v2: Chen et al., 2020, arXiv:2003.04297)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class InfoNCELoss(nn.Module):
    """Each query must pick its key among the key and the ``K`` queued negatives.

    Args:
        temperature: softmax temperature (MoCo v2: 0.2).
    """

    def __init__(self, temperature: float = 0.2) -> None:
        super().__init__()
        self.temperature = temperature

    def forward(self, q: Tensor, k: Tensor, queue: Tensor) -> Tensor:
        """Args: q, k: (N, D) queries and their keys; queue: (K, D) negatives. Returns: scalar."""
        with torch.autocast(q.device.type, enabled=False):  # autocast would run the matmul in bf16
            q = F.normalize(q.float(), dim=1)
            k = F.normalize(k.float(), dim=1)
            l_pos = (q * k).sum(1, keepdim=True)  # positive logits: Nx1
            l_neg = q @ F.normalize(queue.float(), dim=1).T  # negative logits: NxK
            logits = torch.cat([l_pos, l_neg], dim=1) / self.temperature  # (N, 1 + K)
            # the positive is always column 0
            return F.cross_entropy(logits, torch.zeros(q.shape[0], dtype=torch.long, device=q.device))
