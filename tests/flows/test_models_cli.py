"""`sslpipe models`, `sslpipe compare` and `sslpipe predict` on the session's project: predict on
PNG files (through MLflow pyfunc) gives the classes the in-memory model gives on the arrays."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from PIL import Image

from tests.flows.conftest import SMOKE_MODEL, server_state, sslpipe

pytestmark = pytest.mark.e2e


def test_models_lists_the_champion(ops_project):
    project, _ = ops_project
    out = sslpipe(project, "models").stdout
    assert SMOKE_MODEL in out and "champion" in out and "model_top1" in out, out


def test_compare_shows_runs_side_by_side(ops_project):
    project, _ = ops_project
    out = sslpipe(project, "compare", "--last", "3").stdout
    for row in ("duration", "data.version", "model_top1"):
        assert row in out, out


def test_predict_on_png_files_matches_the_in_memory_model(ops_project, tmp_path):
    import mlflow
    from mlflow import MlflowClient

    project, _ = ops_project
    cwd = os.getcwd()
    os.chdir(project)
    try:
        from tasks.dataset import load_dataset
        from tasks.models import load_classifier

        data = load_dataset()
    finally:
        os.chdir(cwd)
    x, _ = data.split("test")
    x = x[:12]
    folder = tmp_path / "images"
    folder.mkdir()
    for i, img in enumerate(x.numpy()):
        Image.fromarray(img[0] if img.shape[0] == 1 else img.transpose(1, 2, 0)).save(folder / f"img_{i:02d}.png")

    # the in-memory model: the champion's classifier as an nn.Module, on the uint8 arrays
    client = MlflowClient(server_state(project, "mlflow")["env"]["MLFLOW_TRACKING_URI"])
    mv = client.get_model_version_by_alias(SMOKE_MODEL, "champion")
    local = client.download_artifacts(mv.run_id, "drift", str(tmp_path))
    classifier, _ = load_classifier(next(Path(local).glob("*.pt")))
    with torch.no_grad():
        expected = classifier(x.float() / 255).argmax(1).numpy()
    mlflow.set_tracking_uri(client.tracking_uri)
    pyfunc = mlflow.pyfunc.load_model(f"models:/{SMOKE_MODEL}@champion")
    served = pyfunc.predict((x.float() / 255).numpy())  # a class column, then a probability column per class
    assert list(served.columns) == ["class", *data.classes]
    assert list(served["class"]) == [data.classes[k] for k in expected]

    out = sslpipe(project, "predict", "--model", "champion", str(folder)).stdout
    got = {}
    for line in out.splitlines():
        cells = [c.strip() for c in line.split("│")]
        if len(cells) == 3 and cells[0].endswith(".png"):
            got[os.path.basename(cells[0])] = cells[1]
    assert len(got) == len(x), out
    assert [got[f"img_{i:02d}.png"] for i in range(len(x))] == [data.classes[k] for k in expected]
