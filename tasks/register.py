"""Stage 7 -- register: log the fine-tuned classifier (largest label fraction) to MLflow with a
signature and input example, register a new version, and move the ``champion`` alias to it only
if it beats the current champion on ``register.metric`` by ``register.min_improvement``;
otherwise it becomes the ``challenger``. A worse model never becomes champion.

Registering is idempotent: each version carries an idempotency key (data version + params hash),
and a second registration of the same data and params returns the existing version. With
``SSLPIPE_REGISTER_ALIAS=challenger`` (set by the retrain flow) a new version never takes the
champion alias here: the retrain flow decides on the same test data. Each version's run keeps a
drift reference (a sample of its training images and the classifier) for the retrain flow."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tasks import paths
from tasks.config import FinetuneParams, RegisterParams
from tasks.dataset import load_dataset
from tasks.io import read_json, write_json
from tasks.locks import project_lock
from tasks.models import load_classifier

CHAMPION, CHALLENGER = "champion", "challenger"
IDEMPOTENCY_TAG = "sslpipe.idempotency_key"
ALIAS_ENV = "SSLPIPE_REGISTER_ALIAS"  # "challenger": leave promotion to the retrain flow


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


def champion_version(client, name: str):
    """The model version holding the ``champion`` alias, or None (no model, or no alias yet)."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:  # INVALID_PARAMETER_VALUE (no alias) or RESOURCE_DOES_NOT_EXIST (no model)
        return None


def beats(value: float, reference: float, min_improvement: float) -> bool:
    """The promotion rule: better than ``reference`` by more than ``min_improvement``."""
    return value > reference + min_improvement


def champion_metric(client, name: str, metric: str) -> tuple[str | None, float | None]:
    """(version, metric value) of the current champion, or (None, None) when there is none."""
    mv = champion_version(client, name)
    if mv is None:
        return None, None
    value = mv.tags.get(f"metric.{metric}")
    if value is None and mv.run_id:
        value = client.get_run(mv.run_id).data.metrics.get(metric)
    return mv.version, (float(value) if value is not None else None)


def decide(value: float, champion_value: float | None, min_improvement: float) -> tuple[str, str]:
    """The alias a new version gets, and why."""
    if champion_value is None:
        return CHAMPION, "no champion yet"
    if beats(value, champion_value, min_improvement):
        return CHAMPION, f"{value:.4f} beats the champion's {champion_value:.4f} by more than {min_improvement}"
    return CHALLENGER, f"{value:.4f} does not beat the champion's {champion_value:.4f} by more than {min_improvement}"


def params_hash(params: dict[str, Any]) -> str:
    """A short hash of the parameters that shape a model (the retrain section does not)."""
    shaping = {k: v for k, v in params.items() if k != "retrain"}
    return hashlib.sha256(json.dumps(shaping, sort_keys=True, default=str).encode()).hexdigest()[:16]


def idempotency_key(data_version: str, params_digest: str | None) -> str:
    return f"{data_version}-{params_digest or 'any'}"


def find_version(client, name: str, key: str):
    """The model version registered with idempotency ``key``, or None."""
    from mlflow.exceptions import MlflowException

    try:
        found = client.search_model_versions(f"name='{name}' and tags.`{IDEMPOTENCY_TAG}` = '{key}'")
    except MlflowException:
        return None
    return min(found, key=lambda mv: int(mv.version)) if found else None


def _log_drift_reference(x_train: torch.Tensor, classifier_file: Path) -> None:
    """The training images' sample and the classifier the retrain flow measures drift against."""
    import mlflow

    from tasks.drift import REFERENCE_IMAGES, sample_rows

    with tempfile.TemporaryDirectory() as tmp:
        np.save(Path(tmp) / "reference_images.npy", sample_rows(x_train.numpy(), REFERENCE_IMAGES))
        mlflow.log_artifact(str(Path(tmp) / "reference_images.npy"), "drift")
    mlflow.log_artifact(str(classifier_file), "drift")


def register(cfg: RegisterParams, finetune_cfg: FinetuneParams, params_digest: str | None = None) -> RegisterResult:
    """Log, register and alias the classifier (see the module docstring).

    Args:
        params_digest: ``params_hash`` of the run's parameters, for the idempotency key.
    """
    from mlflow import MlflowClient

    metrics = read_json(paths.METRICS)
    if cfg.metric not in metrics or not isinstance(metrics[cfg.metric], (int, float)):
        numeric = [k for k, v in metrics.items() if isinstance(v, (int, float))]
        raise KeyError(f"register.metric {cfg.metric!r} is not in {paths.METRICS}; choose one of {', '.join(numeric)}")
    value = float(metrics[cfg.metric])
    fraction = max(finetune_cfg.label_fractions)
    classifier_file = paths.classifier_path("finetune", fraction)
    classifier, _ = load_classifier(classifier_file)
    data = load_dataset()
    client = MlflowClient()
    key = idempotency_key(data.version, params_digest)
    # one registration at a time, so that two concurrent runs cannot both miss the key
    with project_lock("register"):
        existing = find_version(client, cfg.model_name, key)
        if existing is not None:
            return _already_registered(client, cfg, existing, value, key)
        return _register_new(client, cfg, classifier, classifier_file, data, fraction, value, key)


def _already_registered(client, cfg: RegisterParams, mv, value: float, key: str) -> RegisterResult:
    import mlflow

    champion_version, champion_value = champion_metric(client, cfg.model_name, cfg.metric)
    aliases = [a for a, v in client.get_registered_model(cfg.model_name).aliases.items() if str(v) == str(mv.version)]
    alias = CHAMPION if CHAMPION in aliases else (aliases[0] if aliases else "")
    result = RegisterResult(cfg.model_name, str(mv.version), alias, cfg.metric, value, champion_version, champion_value,
                            f"version {mv.version} already holds this data and these params ({key}); not registered again")
    mlflow.set_tags({"registered.version": mv.version, "registered.alias": alias, "registered.reused": "true"})
    write_json(paths.REGISTRATION, asdict(result))
    return result


def _register_new(client, cfg: RegisterParams, classifier, classifier_file: Path, data, fraction: float,
                  value: float, key: str) -> RegisterResult:
    import mlflow
    from mlflow.models import infer_signature

    x_train, _ = data.split("train")
    x_test, _ = data.split("test")
    example = (x_test[:4].float() / 255).numpy()
    model = _Probabilities(classifier).eval()
    with torch.no_grad():
        output = model(torch.from_numpy(example)).numpy()

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
    _log_drift_reference(x_train, classifier_file)
    champion_version, champion_value = champion_metric(client, cfg.model_name, cfg.metric)
    mv = mlflow.register_model(info.model_uri, cfg.model_name, tags={
        f"metric.{cfg.metric}": str(value),
        "data.version": data.version,
        "label_fraction": str(fraction),
        IDEMPOTENCY_TAG: key,
    })
    alias, reason = decide(value, champion_value, cfg.min_improvement)
    if alias == CHAMPION and champion_version is not None and os.environ.get(ALIAS_ENV) == CHALLENGER:
        alias, reason = CHALLENGER, "the retrain flow decides promotion, on the same test data for both models"
    client.set_registered_model_alias(cfg.model_name, alias, mv.version)
    result = RegisterResult(cfg.model_name, str(mv.version), alias, cfg.metric, value,
                            champion_version, champion_value, reason)
    mlflow.set_tags({"registered.version": mv.version, "registered.alias": alias})
    write_json(paths.REGISTRATION, asdict(result))
    return result


__all__ = ["ALIAS_ENV", "CHALLENGER", "CHAMPION", "IDEMPOTENCY_TAG", "RegisterResult", "champion_metric", "decide",
           "find_version", "idempotency_key", "params_hash", "register"]
