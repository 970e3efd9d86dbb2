"""SwAV: "Unsupervised Learning of Visual Features by Contrasting Cluster Assignments" (Caron et al.,
NeurIPS 2020, arXiv:2006.09882).

Across workers the Sinkhorn equipartition is over the global batch, as the official
``distributed_sinkhorn``: the sums over samples are all-reduced (no gradient: codes are targets),
and each worker keeps its own samples' codes. The loss is then per sample, so each worker's local
mean, averaged over workers, is the one-process loss. No queue here (see ``SwAV``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ssl_models import dist


@torch.no_grad()
def sinkhorn(scores: Tensor, epsilon: float = 0.05, iterations: int = 3) -> Tensor:
    """Soft, equipartitioned assignment of samples to prototypes (Sinkhorn-Knopp, SwAV Alg. 1).

    Args:
        scores: (B, K) similarities between samples and prototypes.
        epsilon: entropic regularization (paper: 0.05).
        iterations: Sinkhorn iterations (paper: 3).

    Returns:
        (B, K) float32 codes: each row sums to 1; each column sums to about B / K. Across workers
        ``scores`` is this worker's (B / world_size, K) and the columns sum over the global batch.
    """
    scores = scores.float()
    q = torch.exp((scores - dist.all_reduce_max(scores.max())) / epsilon).T  # (K, b), max-shift for stability
    q /= dist.all_reduce_sum_(q.sum())
    k, b = q.shape[0], q.shape[1] * dist.world_size()  # b: the global batch
    for _ in range(iterations):
        q /= dist.all_reduce_sum_(q.sum(dim=1, keepdim=True))  # each prototype gets 1/K of the mass
        q /= k
        q /= q.sum(dim=0, keepdim=True)  # each sample gets 1/B of the mass
        q /= b
    return (q * b).T


class SwAVLoss(nn.Module):
    """Swapped prediction: the code of each global crop is predicted from every other crop.

    Args:
        temperature: softmax temperature of the predictions (paper: 0.1).
        epsilon, sinkhorn_iterations: see ``sinkhorn``.
    """

    def __init__(self, temperature: float = 0.1, epsilon: float = 0.05, sinkhorn_iterations: int = 3) -> None:
        super().__init__()
        self.temperature = temperature
        self.epsilon = epsilon
        self.sinkhorn_iterations = sinkhorn_iterations

    def forward(self, scores: list[Tensor], n_global: int = 2) -> Tensor:
        """Args:
            scores: one (B, K) prototype-score tensor per crop, global crops first.
            n_global: how many leading crops get codes.

        Returns:
            Scalar loss.
        """
        total, n_terms = scores[0].new_zeros((), dtype=torch.float32), 0
        log_probs = [F.log_softmax(s.float() / self.temperature, dim=1) for s in scores]
        for i in range(n_global):
            q = sinkhorn(scores[i].detach(), self.epsilon, self.sinkhorn_iterations)  # (B, K) codes
            for v, logp in enumerate(log_probs):
                if v == i:
                    continue
                total = total - (q * logp).sum(1).mean()
                n_terms += 1
        return total / n_terms
