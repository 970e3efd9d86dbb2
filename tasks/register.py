"""Stage 7 -- register: log the model evaluate chose (the validation-best arm at the largest label
fraction, baselines included: if a baseline won, it ships, and the model card says pretraining did
not pay off) to MLflow with a signature and input example, register a new version with a model
card (description and tags), and let the registry's one promotion rule
(``tasks.registry.gate``) choose between ``champion`` and ``challenger``: both models are scored on
the same test images, and a worse model never becomes champion.

Registering is idempotent: each version carries an idempotency key (data version + a hash of the
parameters that shape the model), and a second registration of the same data and params reuses
the existing version (the rule is applied to it again: the champion may have changed meanwhile).
Each version's run keeps a drift reference (a sample of its training images and the classifier)
for the retrain flow."""

from __future__ import annotations

import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ssl_models.data.shards import ShardedImages
from tasks import paths, registry
from tasks.config import FinetuneParams, RegisterParams
from tasks.dataset import Dataset, load_dataset
from tasks.io import read_json, write_json
from tasks.locks import project_lock
from tasks.models import load_classifier
from tasks.smoke import SMOKE_NOTE, is_smoke_model


@dataclass
class RegisterResult:
    model_name: str
    version: str
    alias: str  # the alias the version holds after the rule
    promoted: bool
    reused: bool  # the version existed already (same data and params)
    metric: str
    value: float
    champion_before: str | None
    challenger_top1: float | None  # both on this run's test split, through MLflow pyfunc
    champion_top1: float | None
    reason: str


SERVED_MODEL = Path(__file__).with_name("served_model.py")  # what MLflow runs to load the model


class _Probabilities(torch.nn.Module):
    """The network inside the served model: [0, 1] images (N, C, H, W) float32 -> class probabilities (N, K)."""

    def __init__(self, classifier: torch.nn.Module) -> None:
        super().__init__()
        self.classifier = classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(x).softmax(dim=1)


def register(cfg: RegisterParams, finetune_cfg: FinetuneParams, params_digest: str | None = None) -> RegisterResult:
    """Log and register the classifier (or find its version), then apply the promotion rule.

    Args:
        params_digest: ``registry.params_hash`` of the run's parameters, for the idempotency key.
    """
    import mlflow
    from mlflow import MlflowClient

    metrics = read_json(paths.METRICS)
    if cfg.metric not in metrics or not isinstance(metrics[cfg.metric], (int, float)):
        numeric = [k for k, v in metrics.items() if isinstance(v, (int, float))]
        raise KeyError(f"register.metric {cfg.metric!r} is not in {paths.METRICS}; choose one of {', '.join(numeric)}")
    value = float(metrics[cfg.metric])
    data = load_dataset()
    client = MlflowClient()
    key = registry.idempotency_key(data.version, params_digest)
    # one registration at a time, so that two concurrent runs cannot both miss the key
    with project_lock("register"):
        existing = registry.find_version(client, cfg.model_name, key)
        version = str(existing.version) if existing else _log_and_register(cfg, finetune_cfg, data, metrics, key)
        x_test, y_test = data.split("test")
        decision = registry.gate(client, cfg.model_name, version, x_test, y_test, cfg.min_improvement, data.version)
    reason = f"version {version} already holds this data and these params; {decision.reason}" if existing else decision.reason
    result = RegisterResult(cfg.model_name, version, decision.alias, decision.promoted, existing is not None, cfg.metric,
                            value, decision.champion_before, decision.challenger_top1, decision.champion_top1, reason)
    mlflow.set_tags({"registered.version": version, "registered.alias": decision.alias,
                     "registered.reused": str(existing is not None).lower()})
    write_json(paths.REGISTRATION, asdict(result))
    return result


def log_served_model(classifier: torch.nn.Module, classes: list[str], example: np.ndarray) -> Any:
    """Log ``classifier`` to the active run as the model MLflow serves (``tasks/served_model.py``):
    [0, 1] images -> a ``class`` column and a probability column per class.

    Args:
        classes: the class names, in the classifier's output order.
        example: float32 (n, C, H, W) images in [0, 1], the input example.

    Returns:
        MLflow's ``ModelInfo`` (``model_uri`` to register).
    """
    import mlflow

    requirements = [f"torch=={torch.__version__.split('+')[0]}", f"mlflow=={mlflow.__version__}"]
    with tempfile.TemporaryDirectory() as tmp:
        network = Path(tmp) / "network"  # the probabilities, as an MLflow PyTorch model
        mlflow.pytorch.save_model(_Probabilities(classifier).eval(), network, input_example=example,
                                  pip_requirements=requirements)
        return mlflow.pyfunc.log_model(
            name="model",
            python_model=str(SERVED_MODEL),
            artifacts={"network": str(network)},
            model_config={"classes": list(classes)},
            input_example=example,
            pip_requirements=requirements,
            metadata={"classes": list(classes), "input": "float32 (N, C, H, W) in [0, 1]",
                      "output": "a DataFrame: class (the most probable class's name), then a probability column per class"},
        )


def _log_and_register(cfg: RegisterParams, finetune_cfg: FinetuneParams, data: Dataset, metrics: dict, key: str) -> str:
    """Log the chosen classifier (``metrics["selected_arm"]`` at the largest label fraction) as an
    MLflow model and register it with its model card."""
    import mlflow
    from mlflow import MlflowClient

    fraction = max(finetune_cfg.label_fractions)
    arm = metrics["selected_arm"]
    value = float(metrics[cfg.metric])
    classifier_file = paths.classifier_path(arm, fraction)
    classifier, _ = load_classifier(classifier_file)
    x_train, _ = data.split("train", stream=True)  # only the drift reference's sample is read
    x_test, _ = data.split("test", stream=True)
    info = log_served_model(classifier, data.classes, (x_test[:4].float() / 255).numpy())
    mlflow.log_metric(cfg.metric, value)
    mlflow.log_dict({"classes": data.classes}, "model/classes.json")
    _log_drift_reference(x_train, classifier_file)
    card = model_card(metrics, fraction, data.version, smoke=is_smoke_model(cfg.model_name))
    mv = mlflow.register_model(info.model_uri, cfg.model_name, tags={
        f"metric.{cfg.metric}": str(value), registry.IDEMPOTENCY_TAG: key, **card["tags"]})
    MlflowClient().update_model_version(cfg.model_name, mv.version, description=card["description"])
    return str(mv.version)


PROTOCOL = ("every arm trained on the same labels with the same budget and tuning trials; the arm chosen on a "
            "validation split carved from the labels (never the test split); top-1 on the held-out test split")


def model_card(metrics: dict, fraction: float, data_version: str, smoke: bool = False) -> dict:
    """The registered version's card: tags (what to filter on) and a markdown description (what the
    MLflow UI shows on the version's page): data, labels, arm, every arm's top-1, the protocol, and
    whether pretraining paid off; a smoke model's card says first that it is a plumbing check."""
    from tasks.metrics import arms_rows, verdict

    entry = metrics["fractions"][f"{fraction:g}"]
    paid = metrics.get("pretraining_paid_off")
    tags = {"data.version": data_version, "label_fraction": f"{fraction:g}", "num_labels": str(entry["num_labels"]),
            "arm": metrics["selected_arm"], "pretraining_paid_off": str(paid).lower(), "protocol": PROTOCOL}
    for arm, scores in entry["arms"].items():
        tags[f"val_top1.{arm}"] = f"{scores['val_top1']:.4f}"
        tags[f"test_top1.{arm}"] = f"{scores['test_top1']:.4f}"
    header, rows = arms_rows(metrics)
    if smoke:
        tags["sslpipe.smoke"] = "true"
    description = "\n".join([
        *([f"> **{SMOKE_NOTE}**", ""] if smoke else []),
        f"**{verdict(metrics)}.**", "",
        f"Data version `{data_version}`; {entry['num_labels']} labels ({fraction:g} of the train labels), "
        f"{entry['num_val']} of them held out for validation.", "",
        "| " + " | ".join(header) + " |", "|" + "---|" * len(header), *("| " + " | ".join(r) + " |" for r in rows), "",
        f"Protocol: {PROTOCOL}. kNN top-1 on the SSL features: {metrics.get('knn_top1', float('nan')):.4f}.",
    ])
    return {"tags": tags, "description": description}


def _log_drift_reference(x_train: torch.Tensor | ShardedImages, classifier_file: Path) -> None:
    """The training images' sample and the classifier the retrain flow measures drift against
    (only the sampled rows are read from a streamed pool)."""
    import mlflow

    from tasks.drift import REFERENCE_IMAGES, sample_rows

    with tempfile.TemporaryDirectory() as tmp:
        np.save(Path(tmp) / "reference_images.npy", sample_rows(x_train, REFERENCE_IMAGES))
        mlflow.log_artifact(str(Path(tmp) / "reference_images.npy"), "drift")
    mlflow.log_artifact(str(classifier_file), "drift")
