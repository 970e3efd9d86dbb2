"""Batched k-means (Lloyd's algorithm) in torch, for DeepCluster's pseudo-labels."""

from __future__ import annotations

import torch
from torch import Tensor


def assign(x: Tensor, centroids: Tensor, chunk: int = 8192) -> Tensor:
    """Index of the nearest centroid (squared Euclidean) of each row: (N, D), (K, D) -> (N,) long."""
    x, centroids = x.float(), centroids.float()
    with torch.autocast(x.device.type, enabled=False):  # bf16 distances would mislabel near ties
        c_sq = centroids.pow(2).sum(1)  # (K,)
        # |x - c|^2 = |x|^2 - 2 x.c + |c|^2; |x|^2 does not change the argmin
        return torch.cat([(c_sq - 2 * xc @ centroids.T).argmin(1) for xc in x.split(chunk)])


def kmeans_plus_plus(x: Tensor, k: int, generator: torch.Generator | None = None) -> Tensor:
    """k-means++ seeding (Arthur & Vassilvitskii, 2007): each new centroid is a row drawn with
    probability proportional to its squared distance to the nearest centroid so far.

    Args:
        x: (N, D) float. k: number of centroids. generator: CPU generator.

    Returns:
        (k, D) centroids, rows of ``x``.
    """
    n = x.shape[0]
    idx = [int(torch.randint(n, (1,), generator=generator))]
    dist = (x - x[idx[0]]).pow(2).sum(1)  # (N,) squared distance to the nearest centroid
    for _ in range(k - 1):
        weights = dist.cpu().clamp(min=0) + 1e-12  # never all zero (duplicate points)
        idx.append(int(torch.multinomial(weights, 1, generator=generator)))
        dist = torch.minimum(dist, (x - x[idx[-1]]).pow(2).sum(1))
    return x[torch.tensor(idx, device=x.device)].clone()


def kmeans(
    x: Tensor, k: int, iterations: int = 20, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor]:
    """Cluster the rows of ``x`` into ``k`` groups.

    Initialized by k-means++; an empty cluster is re-seeded with a random row
    (DeepCluster re-seeds it near a non-empty centroid, with the same purpose: no empty clusters).

    Args:
        x: (N, D) float features.
        k: number of clusters (at most N).
        iterations: Lloyd iterations.
        generator: CPU generator fixing the initialization.

    Returns:
        centroids (k, D) and labels (N,) long.
    """
    n = x.shape[0]
    if not 1 <= k <= n:
        raise ValueError(f"k-means needs 1 <= k <= number of points, got k={k} for {n} points")
    x = x.float()
    centroids = kmeans_plus_plus(x, k, generator)
    labels = assign(x, centroids)
    for _ in range(iterations):
        sums = torch.zeros_like(centroids).index_add_(0, labels, x)  # (k, D)
        counts = torch.bincount(labels, minlength=k)  # (k,)
        reseed = x[torch.randint(n, (k,), generator=generator).to(x.device)]
        centroids = torch.where((counts > 0)[:, None], sums / counts.clamp(min=1)[:, None], reseed)
        labels = assign(x, centroids)
    return centroids, labels
