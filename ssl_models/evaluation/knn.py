"""Weighted kNN classifier on cosine similarity (Wu et al., 2018, arXiv:1805.01978; as in DINO)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


@torch.no_grad()
def knn_predict(
    train_features: Tensor,
    train_labels: Tensor,
    test_features: Tensor,
    num_classes: int,
    k: int = 20,
    temperature: float = 0.07,
    chunk: int = 1024,
) -> Tensor:
    """Predict each test sample from its ``k`` most cosine-similar train samples, each voting with
    weight ``exp(similarity / temperature)``.

    Args:
        train_features: (N, D); train_labels: (N,) int64 in [0, num_classes).
        test_features: (M, D).

    Returns:
        (M,) predicted labels.
    """
    train = F.normalize(train_features.float(), dim=1)
    test = F.normalize(test_features.float(), dim=1)
    k = min(k, train.shape[0])
    preds = []
    for start in range(0, test.shape[0], chunk):
        sim = test[start : start + chunk] @ train.T  # (m, N)
        top_sim, top_idx = sim.topk(k, dim=1)  # (m, k)
        votes = torch.zeros(sim.shape[0], num_classes, device=sim.device)
        votes.scatter_add_(1, train_labels[top_idx], (top_sim / temperature).exp())
        preds.append(votes.argmax(1))
    return torch.cat(preds)


def knn_top1(
    train_features: Tensor,
    train_labels: Tensor,
    test_features: Tensor,
    test_labels: Tensor,
    num_classes: int,
    k: int = 20,
    temperature: float = 0.07,
) -> float:
    """Top-1 accuracy of ``knn_predict``."""
    preds = knn_predict(train_features, train_labels, test_features, num_classes, k, temperature)
    return (preds == test_labels).float().mean().item()
