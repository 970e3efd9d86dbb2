"""Weighted kNN classifier on cosine similarity (Wu et al., 2018, arXiv:1805.01978; as in DINO).

Either side may be a tensor of features or an iterable of consecutive row chunks (``FlatPixels``:
raw pixels of a pool read a chunk at a time), so a bank bigger than memory is compared chunk by
chunk, keeping only each query's running top ``k``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import Tensor

Features = Tensor | Iterable[Tensor]  # (N, D), or its rows as consecutive (n_i, D) chunks (re-iterable)


def _bank(train_features: Features, rows: int) -> Callable[[], Iterable[Tensor]]:
    """The bank's L2-normalised chunks, once per call: a tensor is normalised once and kept, and
    compared ``rows`` rows at a time (a query chunk's similarities to the whole bank would grow
    with N: 1024 queries x 60k rows are 245 MB); an iterable of chunks is read (and normalised)
    again for every query chunk."""
    if isinstance(train_features, Tensor):
        whole = F.normalize(train_features.float(), dim=1)
        return lambda: whole.split(rows)
    if iter(train_features) is train_features:  # a generator would be spent after the first query chunk
        raise TypeError("kNN: the train bank must be a tensor or a re-iterable of chunks (a list, FlatPixels), "
                        "not a one-pass iterator")
    return lambda: (F.normalize(chunk.float(), dim=1) for chunk in train_features)


@torch.no_grad()
def _top_k(query: Tensor, bank: Iterable[Tensor], k: int) -> tuple[Tensor, Tensor, int]:
    """The ``k`` largest cosine similarities of each normalised query row to the bank, and the bank
    rows they belong to: (m, k) each, merged chunk by chunk; and the bank's number of rows."""
    top_sim = top_idx = None
    offset = 0
    for chunk in bank:
        sim = query @ chunk.T  # (m, n_chunk)
        if top_sim is None:  # the first chunk: nothing to merge with
            top_sim, pos = sim.topk(min(k, sim.shape[1]), dim=1)
            top_idx = pos + offset
        else:
            kept = top_sim.shape[1]
            candidates = torch.cat([top_sim, sim], 1)  # (m, kept + n_chunk)
            top_sim, pos = candidates.topk(min(k, candidates.shape[1]), dim=1)
            top_idx = torch.where(pos < kept, top_idx.gather(1, pos.clamp(max=kept - 1)), pos - kept + offset)
        offset += chunk.shape[0]
    if top_sim is None:
        raise ValueError("kNN: the train bank is empty")
    return top_sim, top_idx, offset


@torch.no_grad()
def knn_predict(
    train_features: Features,
    train_labels: Tensor,
    test_features: Features,
    num_classes: int,
    k: int = 20,
    temperature: float = 0.07,
    chunk: int = 1024,
    bank_chunk: int = 8192,
) -> Tensor:
    """Predict each test sample from its ``k`` most cosine-similar train samples, each voting with
    weight ``exp(similarity / temperature)``.

    Args:
        train_features: (N, D), or its rows in consecutive chunks (read once per test chunk).
        train_labels: (N,) int64 in [0, num_classes).
        test_features: (M, D), compared ``chunk`` rows at a time, or its rows in chunks.
        bank_chunk: rows of a tensor bank compared at once (memory: ``chunk`` x ``bank_chunk`` floats).

    Returns:
        (M,) predicted labels.
    """
    bank = _bank(train_features, bank_chunk)
    queries = test_features.split(chunk) if isinstance(test_features, Tensor) else test_features
    preds = []
    for query in queries:
        top_sim, top_idx, rows = _top_k(F.normalize(query.float(), dim=1), bank(), k)  # (m, k)
        if rows != len(train_labels):
            raise ValueError(f"kNN: the train bank has {rows} rows and {len(train_labels)} labels")
        votes = torch.zeros(top_sim.shape[0], num_classes, device=top_sim.device)
        votes.scatter_add_(1, train_labels[top_idx], (top_sim / temperature).exp())
        preds.append(votes.argmax(1))
    return torch.cat(preds) if preds else torch.empty(0, dtype=torch.long)


def knn_top1(
    train_features: Features,
    train_labels: Tensor,
    test_features: Features,
    test_labels: Tensor,
    num_classes: int,
    k: int = 20,
    temperature: float = 0.07,
) -> float:
    """Top-1 accuracy of ``knn_predict``."""
    preds = knn_predict(train_features, train_labels, test_features, num_classes, k, temperature)
    return (preds == test_labels).float().mean().item()
