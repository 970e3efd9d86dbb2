"""Linear probe: multinomial logistic regression on frozen, standardized features."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def linear_probe(
    train_features: Tensor,
    train_labels: Tensor,
    test_features: Tensor,
    num_classes: int,
    l2: float = 1e-4,
    max_iter: int = 200,
) -> tuple[Tensor, Tensor]:
    """Fit a softmax classifier with L-BFGS (full batch, deterministic) and predict the test set.

    Args:
        train_features: (N, D); train_labels: (N,); test_features: (M, D).
        l2: weight penalty.
        max_iter: L-BFGS iterations.

    Returns:
        (M,) predicted labels and (M, num_classes) probabilities.
    """
    mean, std = train_features.mean(0), train_features.std(0).clamp(min=1e-6)
    x = ((train_features - mean) / std).float()
    weight = torch.zeros(x.shape[1], num_classes, requires_grad=True)
    bias = torch.zeros(num_classes, requires_grad=True)
    opt = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=max_iter, history_size=20, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(x @ weight + bias, train_labels) + l2 * weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        probs = (((test_features - mean) / std).float() @ weight + bias).softmax(1)
    return probs.argmax(1), probs
