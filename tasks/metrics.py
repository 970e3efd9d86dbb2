"""The names of the figures ``reports/metrics.json`` holds, in one place, and their MLflow form.
Importing it is cheap (the CLI's summary and ``compare`` use it)."""

from __future__ import annotations

import math
from typing import Any

# the headline figures on the test split, with what they mean to a person
HEADLINE_METRICS = {
    "knn_top1": "kNN (k=20) on SSL features",
    "knn_top1_raw_pixels": "kNN on raw pixels",
    "knn_top1_random_init": "kNN on a random-init encoder",
    "linear_top1": "linear probe on SSL features",
    "model_top1": "the model that gets registered",
}


def flat_metrics(metrics: dict[str, Any], per_class: dict[str, float] | None = None) -> dict[str, float]:
    """metrics.json (and per_class.json) -> MLflow metric names: ``knn_top1``,
    ``frac_0.01/ssl_finetune/test_top1``, ``frac_0.01/pretraining_paid_off`` (1 or 0), ``class/Coat``."""
    out = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}
    for fraction, entry in metrics.get("fractions", {}).items():
        out.update({f"frac_{fraction}/{k}": float(v) for k, v in entry.items() if isinstance(v, (int, float))})
        for arm, scores in entry.get("arms", {}).items():
            out.update({f"frac_{fraction}/{arm}/{k}": float(v) for k, v in scores.items()})
    out.update({f"class/{name.replace('/', '-')}": v for name, v in (per_class or {}).items()})
    return out


def arms_rows(metrics: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Every arm per label fraction side by side, for the summary table and the Prefect artifact:
    (header, rows); a cell reads ``val 0.8512 / test 0.8433``, the chosen arm marked with ``*``."""
    fractions = metrics.get("fractions", {})
    header = ["arm", *(f"{f} of labels ({e['num_labels']})" for f, e in fractions.items())]
    arms = list(dict.fromkeys(arm for e in fractions.values() for arm in e.get("arms", {})))
    rows = []
    for arm in arms:
        cells = []
        for e in fractions.values():
            s = e["arms"].get(arm)
            val = "-" if s is None or math.isnan(s["val_top1"]) else f"{s['val_top1']:.4f}"  # none held out
            cells.append("-" if s is None else f"val {val} / test {s['test_top1']:.4f}"
                         + (" *" if e.get("selected") == arm else ""))
        rows.append([arm, *cells])
    return header, rows


def verdict(metrics: dict[str, Any]) -> str:
    """One sentence: which arm ships and whether pretraining paid off (chosen on validation)."""
    arm, paid = metrics.get("selected_arm"), metrics.get("pretraining_paid_off")
    if arm is None:
        return ""
    if paid is None:
        return f"ships {arm} (validation-best; no arm of the other kind to compare with)"
    return (f"ships {arm}, the validation-best arm: pretraining "
            + ("paid off on this data" if paid else "did NOT pay off on this data (a baseline without it won)"))
