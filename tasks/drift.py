"""Data drift as an embedding distance: the squared maximum mean discrepancy (MMD^2) between the
encoder features of two image samples (Gretton et al., "A Kernel Two-Sample Test", JMLR 2012),
with an RBF kernel whose bandwidth is the median pairwise distance of the pooled sample."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ssl_models.data.shards import ShardedImages
from ssl_models.evaluation import extract_features
from tasks.models import load_classifier
from tasks.registry import Champion

REFERENCE_IMAGES = 1000  # training images a registered model keeps as its drift reference


def sample_rows(images: np.ndarray | Tensor | ShardedImages, n: int, seed: int = 0) -> np.ndarray:
    """A seeded sample of at most ``n`` rows of ``images`` (uint8 (N, C, H, W)), in index order; of
    a ``ShardedImages`` pool only those rows are read."""
    total = len(images)
    index = np.sort(np.random.default_rng(seed).permutation(total)[: min(n, total)])
    return np.ascontiguousarray(np.asarray(images[index]))


def mmd_rbf(x: Tensor, y: Tensor) -> float:
    """Unbiased MMD^2 between samples ``x`` (n, D) and ``y`` (m, D); ~0 when they come from one
    distribution (it may then be slightly negative), larger the more they differ."""
    n, m = len(x), len(y)
    if n < 2 or m < 2:
        raise ValueError(f"MMD needs at least 2 samples per side (got {n} and {m})")
    pooled = torch.cat([x, y]).double()
    d2 = torch.cdist(pooled, pooled).pow(2)  # (n+m, n+m) squared distances
    bandwidth2 = d2[d2 > 0].median() if (d2 > 0).any() else torch.tensor(1.0, dtype=d2.dtype)
    k = torch.exp(-d2 / bandwidth2)
    kxx, kyy, kxy = k[:n, :n], k[n:, n:], k[:n, n:]
    # unbiased: the diagonals (a sample compared with itself) are left out
    term_x = (kxx.sum() - kxx.diagonal().sum()) / (n * (n - 1))
    term_y = (kyy.sum() - kyy.diagonal().sum()) / (m * (m - 1))
    return float(term_x + term_y - 2 * kxy.mean())


def embedding_drift(encoder: nn.Module, reference: np.ndarray, new: np.ndarray) -> float:
    """MMD^2 between the L2-normalised ``encoder`` features of two uint8 (N, C, H, W) samples.

    Raises:
        ValueError: when the two samples' image shapes differ (that is drift no kernel needs to see).
    """
    if reference.shape[1:] != new.shape[1:]:
        raise ValueError(f"image shapes differ: reference {tuple(reference.shape[1:])}, new {tuple(new.shape[1:])}")
    f_ref = F.normalize(extract_features(encoder, torch.from_numpy(reference)), dim=1)
    f_new = F.normalize(extract_features(encoder, torch.from_numpy(new)), dim=1)
    return mmd_rbf(f_ref, f_new)


def champion_drift(champion: Champion, new_train: np.ndarray | Tensor | ShardedImages, images: int,
                   seed: int = 0) -> float | None:
    """MMD^2 between the champion's encoder features of its training images (the reference it
    logged at registration) and of a sample of ``new_train`` (uint8 (N, C, H, W); of a streamed
    pool only the sample is read).

    Returns:
        The score; None when the champion's run holds no drift reference (registered before
        sslpipe logged one); ``inf`` when the image shapes differ.
    """
    import mlflow
    from mlflow.exceptions import MlflowException

    if not champion.run_id:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        try:
            local = Path(mlflow.artifacts.download_artifacts(run_id=champion.run_id, artifact_path="drift", dst_path=tmp))
        except (MlflowException, OSError):
            return None
        reference_file = local / "reference_images.npy"
        classifiers = sorted(local.glob("*.pt"))
        if not reference_file.exists() or not classifiers:
            return None
        reference = np.load(reference_file)
        classifier, _ = load_classifier(classifiers[0])
    reference = sample_rows(reference, images, seed)
    new = sample_rows(new_train, images, seed)
    if reference.shape[1:] != new.shape[1:]:
        return float("inf")
    return embedding_drift(classifier.encoder, reference, new)
