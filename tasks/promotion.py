"""What the retrain flow asks the registry: who is champion and on which data it was trained,
how far new data drifted from that data, and which of two registered models is better on the
same test images."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from tasks.drift import embedding_drift, sample_rows
from tasks.models import load_classifier
from tasks.register import beats, champion_version


@dataclass
class Champion:
    version: str
    data_version: str | None  # the ``data.version`` tag of the version
    run_id: str | None  # the register stage's run (it holds the drift reference)


def current_champion(client, name: str) -> Champion | None:
    """The version holding the ``champion`` alias, or None (no model, or no alias yet)."""
    mv = champion_version(client, name)
    return None if mv is None else Champion(str(mv.version), mv.tags.get("data.version"), mv.run_id)


def champion_drift(client, champion: Champion, new_train: np.ndarray, images: int, seed: int = 0) -> float | None:
    """MMD^2 between the champion's encoder features of its training images (the reference it
    logged at registration) and of a sample of ``new_train`` (uint8 (N, C, H, W)).

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


def score_top1(model_uri: str, x_test: torch.Tensor, y_test: torch.Tensor, batch_size: int = 512) -> float | None:
    """Top-1 of a registered model (through MLflow pyfunc, as it is served) on uint8 test images;
    None when the model cannot read them (another image shape)."""
    import mlflow
    from mlflow.exceptions import MlflowException

    model = mlflow.pyfunc.load_model(model_uri)
    correct = 0
    for start in range(0, len(y_test), batch_size):
        x = (x_test[start : start + batch_size].float() / 255).numpy()
        try:
            probs = np.asarray(model.predict(x))  # (n, K) class probabilities
        except (MlflowException, RuntimeError, AssertionError, ValueError):
            return None
        correct += int((probs.argmax(1) == y_test[start : start + batch_size].numpy()).sum())
    return correct / max(len(y_test), 1)


def promotion(challenger_top1: float, champion_top1: float | None, min_improvement: float) -> tuple[bool, str]:
    """Whether the challenger replaces the champion, and why (both scored on the same test images)."""
    if champion_top1 is None:
        return True, "the champion cannot be scored on the new test data (or there is none)"
    if beats(challenger_top1, champion_top1, min_improvement):
        return True, (f"the challenger's top-1 {challenger_top1:.4f} beats the champion's {champion_top1:.4f} "
                      f"by more than {min_improvement} on the same test images")
    return False, (f"the challenger's top-1 {challenger_top1:.4f} does not beat the champion's {champion_top1:.4f} "
                   f"by more than {min_improvement} on the same test images")
