"""Stage 7 -- register: log the fine-tuned classifier (largest label fraction) to MLflow with a
signature and input example, register a new version, and move the ``champion`` alias to it only
if it beats the current champion on ``register.metric`` by ``register.min_improvement``;
otherwise it becomes the ``challenger``. A worse model never becomes champion."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch

from tasks import paths
from tasks.config import FinetuneParams, RegisterParams
from tasks.dataset import load_dataset
from tasks.io import read_json, write_json
from tasks.models import load_classifier

CHAMPION, CHALLENGER = "champion", "challenger"


@dataclass
class RegisterResult:
    model_name: str
    version: str
    alias: str
    metric: str
    value: float
    champion_before: str | None
    champion_value_before: float | None
    reason: str


class _Probabilities(torch.nn.Module):
    """What gets served: [0, 1] images (N, C, H, W) float32 -> class probabilities (N, K)."""

    def __init__(self, classifier: torch.nn.Module) -> None:
        super().__init__()
        self.classifier = classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(x).softmax(dim=1)


def champion_metric(client, name: str, metric: str) -> tuple[str | None, float | None]:
    """(version, metric value) of the current champion, or (None, None) when there is none."""
    from mlflow.exceptions import MlflowException

    try:
        mv = client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        return None, None
    value = mv.tags.get(f"metric.{metric}")
    if value is None and mv.run_id:
        value = client.get_run(mv.run_id).data.metrics.get(metric)
    return mv.version, (float(value) if value is not None else None)


def decide(value: float, champion_value: float | None, min_improvement: float) -> tuple[str, str]:
    """The alias a new version gets, and why."""
    if champion_value is None:
        return CHAMPION, "no champion yet"
    if value > champion_value + min_improvement:
        return CHAMPION, f"{value:.4f} beats the champion's {champion_value:.4f} by more than {min_improvement}"
    return CHALLENGER, f"{value:.4f} does not beat the champion's {champion_value:.4f} by more than {min_improvement}"


def register(cfg: RegisterParams, finetune_cfg: FinetuneParams) -> RegisterResult:
    import mlflow
    from mlflow import MlflowClient
    from mlflow.models import infer_signature

    metrics = read_json(paths.METRICS)
    if cfg.metric not in metrics or not isinstance(metrics[cfg.metric], (int, float)):
        numeric = [k for k, v in metrics.items() if isinstance(v, (int, float))]
        raise KeyError(f"register.metric {cfg.metric!r} is not in {paths.METRICS}; choose one of {', '.join(numeric)}")
    value = float(metrics[cfg.metric])
    fraction = max(finetune_cfg.label_fractions)
    classifier, blob = load_classifier(paths.classifier_path("finetune", fraction))
    data = load_dataset()
    x_test, _ = data.split("test")
    example = (x_test[:4].float() / 255).numpy()
    model = _Probabilities(classifier).eval()
    with torch.no_grad():
        output = model(torch.from_numpy(example)).numpy()

    client = MlflowClient()
    info = mlflow.pytorch.log_model(
        model,
        name="model",
        input_example=example,
        signature=infer_signature(example, output),
        pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", f"mlflow=={mlflow.__version__}"],
        metadata={"classes": data.classes, "input": "float32 (N, C, H, W) in [0, 1]", "output": "class probabilities"},
    )
    mlflow.log_metric(cfg.metric, value)
    mlflow.log_dict({"classes": data.classes}, "model/classes.json")
    champion_version, champion_value = champion_metric(client, cfg.model_name, cfg.metric)
    mv = mlflow.register_model(info.model_uri, cfg.model_name, tags={
        f"metric.{cfg.metric}": str(value),
        "data.version": data.version,
        "label_fraction": str(fraction),
    })
    alias, reason = decide(value, champion_value, cfg.min_improvement)
    client.set_registered_model_alias(cfg.model_name, alias, mv.version)
    result = RegisterResult(cfg.model_name, str(mv.version), alias, cfg.metric, value,
                            champion_version, champion_value, reason)
    mlflow.set_tags({"registered.version": mv.version, "registered.alias": alias})
    write_json(paths.REGISTRATION, asdict(result))
    return result


__all__ = ["CHALLENGER", "CHAMPION", "RegisterResult", "champion_metric", "decide", "register"]
