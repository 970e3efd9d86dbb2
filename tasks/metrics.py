"""The names of the figures ``reports/metrics.json`` holds, in one place, and their MLflow form.
Importing it is cheap (the CLI's summary and ``compare`` use it)."""

from __future__ import annotations

from typing import Any

# the headline figures on the test split, with what they mean to a person
HEADLINE_METRICS = {
    "knn_top1": "kNN (k=20) on SSL features",
    "knn_top1_raw_pixels": "kNN on raw pixels",
    "knn_top1_random_init": "kNN on a random-init encoder",
    "linear_top1": "linear probe on SSL features",
    "model_top1": "the model that gets registered",
}


def flat_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """metrics.json -> MLflow metric names: ``knn_top1``, ``frac_0.01/finetune_top1``, ``class/Coat``."""
    out = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}
    for fraction, entry in metrics.get("fractions", {}).items():
        out.update({f"frac_{fraction}/{k}": float(v) for k, v in entry.items()})
    out.update({f"class/{name.replace('/', '-')}": v for name, v in metrics.get("per_class_top1", {}).items()})
    return out
