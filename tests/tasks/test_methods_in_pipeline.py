"""Every SSL method trains from ``params.yaml``: the project's own file with ``pretrain.method``
switched (as ``sslpipe run --set pretrain.method=X`` or the flow's ``method`` parameter does), run
through ``run_stage`` -- what ``sslpipe stage pretrain`` calls, MLflow run included -- and the
encoder it writes is one the later stages load."""

from __future__ import annotations

import math
from pathlib import Path

import mlflow
import pytest
import torch

from ssl_models.evaluation import extract_features
from ssl_models.methods import METHODS
from tasks import paths
from tasks.config import load_params
from tasks.dataset import load_dataset
from tasks.models import load_encoder
from tasks.runner import run_stage
from tests.tasks.conftest import N_TEST, N_TRAIN

PROJECT_PARAMS = Path(__file__).resolve().parents[2] / "params.yaml"
BATCH = 32
TINY = [  # the project's parameters, scaled to the 200 synthetic 16x16 images
    "pretrain.width=4", "pretrain.epochs=1", f"pretrain.batch_size={BATCH}", "pretrain.knn_monitor_images=40",
    "pretrain.precision=fp32", "pretrain.compile=false", "pretrain.device=cpu", "pretrain.checkpoint_every=2",
]


def method_overrides(method: str) -> list[str]:
    backbones = METHODS[method].backbones
    return [f"pretrain.method={method}", *TINY, *([f"pretrain.backbone={backbones[0]}"] if backbones else [])]


@pytest.mark.parametrize("method", list(METHODS))
def test_method_trains_from_params_yaml(method: str, validated) -> None:
    params = load_params(PROJECT_PARAMS, method_overrides(method))
    result = run_stage("pretrain", params, progress=False)

    assert result["method"] == method and result["steps"] == N_TRAIN // BATCH
    assert math.isfinite(result["final_loss"]) and 0 <= result["knn_monitor_top1"] <= 1
    encoder, blob = load_encoder(paths.ENCODER)
    assert blob["method"] == method and blob["spec"]["backbone"] == params.pretrain.backbone
    test_images, _ = load_dataset().split("test")
    features = extract_features(encoder, test_images)
    assert features.shape == (N_TEST, encoder.out_dim) and torch.isfinite(features).all()
    assert features.std(dim=0).max() > 0  # not a constant map

    run = mlflow.get_run(result["mlflow_run_id"])
    assert run.data.params["pretrain.method"] == method and run.info.status == "FINISHED"
    assert "pretrain/loss" in run.data.metrics
