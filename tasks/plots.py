"""Figures people look at rather than read: loss curves, confusion matrix, embeddings, views."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402


def loss_curve(steps: Sequence[int], losses: Sequence[float], title: str = "pretraining loss") -> Figure:
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(steps, losses, lw=1)
    ax.set(xlabel="step", ylabel="loss", title=title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def confusion_matrix_figure(cm: np.ndarray, classes: Sequence[str], title: str) -> Figure:
    """``cm[i, j]``: test images of class i predicted as j; rows normalized in the colours."""
    norm = cm / cm.sum(1, keepdims=True).clip(min=1)
    fig, ax = plt.subplots(figsize=(7, 6))
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    for i in range(len(classes)):
        for j in range(len(classes)):
            ax.text(j, i, int(cm[i, j]), ha="center", va="center", fontsize=7,
                    color="white" if norm[i, j] > 0.5 else "black")
    ax.set(xlabel="predicted", ylabel="true", title=title)
    fig.tight_layout()
    return fig


def embedding_figure(features: torch.Tensor, labels: np.ndarray, classes: Sequence[str], title: str) -> Figure:
    """2-D PCA of features, coloured by class."""
    x = features.float() - features.float().mean(0)
    _, _, v = torch.pca_lowrank(x, q=2, center=False)
    xy = (x @ v[:, :2]).numpy()
    fig, ax = plt.subplots(figsize=(6.5, 5))
    for k, name in enumerate(classes):
        mask = labels == k
        ax.scatter(xy[mask, 0], xy[mask, 1], s=3, alpha=0.6, label=name)
    ax.legend(markerscale=4, fontsize=7, loc="best")
    ax.set(title=title, xticks=[], yticks=[])
    fig.tight_layout()
    return fig


def view_grid(originals: torch.Tensor, views: Sequence[torch.Tensor], title: str = "augmented views") -> Figure:
    """Rows: images; columns: the original, then each view. Tensors (N, C, H, W) in [0, 1]."""
    n, cols = originals.shape[0], 1 + len(views)
    fig, axes = plt.subplots(n, cols, figsize=(1.3 * cols, 1.3 * n), squeeze=False)
    for i in range(n):
        for j, img in enumerate([originals[i]] + [v[i] for v in views]):
            arr = img.float().clamp(0, 1).permute(1, 2, 0).numpy()
            axes[i, j].imshow(arr.squeeze(-1) if arr.shape[-1] == 1 else arr, cmap="gray", vmin=0, vmax=1)
            axes[i, j].axis("off")
    axes[0, 0].set_title("original", fontsize=8)
    for j in range(1, cols):
        axes[0, j].set_title(f"view {j}", fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def log(fig: Figure, artifact_file: str) -> None:
    """Log to the active MLflow run and close."""
    import mlflow

    mlflow.log_figure(fig, artifact_file)
    plt.close(fig)


def save(fig: Figure, path) -> None:
    """Save atomically and close."""
    from tasks.io import atomic_path

    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format=str(path).rsplit(".", 1)[-1])
    plt.close(fig)
