"""MLflow at the edges: the experiment sslpipe logs to opens on its training runs in the MLflow UI."""

from __future__ import annotations

from pathlib import Path

import pytest

from tasks.tracking import EXPERIMENT_KIND, EXPERIMENT_KIND_TAG, setup_mlflow


def test_the_experiment_is_one_of_training_runs(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """New experiments are created with the kind tag; older ones without it get it; a kind the
    user chose stays."""
    import mlflow

    experiment_id = setup_mlflow()
    assert mlflow.get_experiment(experiment_id).tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND == "custom_model_development"

    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "older")
    older = mlflow.create_experiment("older")
    assert EXPERIMENT_KIND_TAG not in mlflow.get_experiment(older).tags
    assert setup_mlflow() == older
    assert mlflow.get_experiment(older).tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND

    mlflow.MlflowClient().set_experiment_tag(older, EXPERIMENT_KIND_TAG, "genai_development")
    setup_mlflow()
    assert mlflow.get_experiment(older).tags[EXPERIMENT_KIND_TAG] == "genai_development"
