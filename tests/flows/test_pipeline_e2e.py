"""End to end: `sslpipe run --smoke` in a copy of the project, on a real Prefect API (the test
harness), a real MLflow store, real DVC stages and real Ray Tune trials -- nothing mocked."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from tests.conftest import copy_project, subprocess_env

pytestmark = pytest.mark.e2e

def ran_stages(output: str) -> list[str]:
    """The stages DVC ran, from its words "Running stage 'NAME'" (each line may show twice: on the
    terminal and in the Prefect log)."""
    return sorted(set(re.findall(r"Running stage '(\w+)'", output)))


OUTPUTS = ["data/sources.json", "data/dataset/images.npy", "models/encoder.pt", "models/tune/best.json", "reports/metrics.json"]


def _run(cmd: list[str], cwd: Path, env: dict[str, str], timeout: int = 900) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-6000:]}\n{proc.stderr[-6000:]}"
    return proc


@pytest.fixture(scope="module")
def smoke_project(tmp_path_factory, prefect_api_url):
    root = tmp_path_factory.mktemp("e2e")
    project = copy_project(root / "project")
    env = subprocess_env(PREFECT_API_URL=prefect_api_url, MLFLOW_TRACKING_URI=f"sqlite:///{root / 'mlflow.db'}")
    first = _run(["sslpipe", "run", "--smoke"], project, env)
    return project, env, first


def test_metrics_cover_the_evaluation_protocol(smoke_project):
    project, _, _ = smoke_project
    metrics = json.loads((project / "reports/metrics.json").read_text())
    for key in ("knn_top1", "linear_top1", "knn_top1_raw_pixels", "knn_top1_random_init", "model_top1"):
        assert 0.0 <= metrics[key] <= 1.0, key
    assert set(metrics["fractions"]) == {"0.01", "0.1"}
    for entry in metrics["fractions"].values():
        assert list(entry["arms"]) == ["ssl_finetune", "ssl_fixmatch", "ssl_distill", "supervised", "fixmatch"]
        for scores in entry["arms"].values():
            assert 0.0 <= scores["test_top1"] <= 1.0
        assert entry["selected"] in entry["arms"]
        assert entry["num_labels"] >= 10  # at least one per class
    assert metrics["selected_arm"] == metrics["fractions"]["0.1"]["selected"]
    assert len(metrics["per_class_top1"]) == 10
    assert (project / "reports/plots/confusion_matrix.png").stat().st_size > 0


def test_one_registered_version_is_champion(smoke_project):
    from mlflow import MlflowClient

    _, env, _ = smoke_project
    client = MlflowClient(tracking_uri=env["MLFLOW_TRACKING_URI"])
    versions = client.search_model_versions("name='sslpipe-classifier'")
    assert len(versions) == 1
    assert client.get_model_version_by_alias("sslpipe-classifier", "champion").version == versions[0].version


def test_mlflow_has_a_parent_run_with_a_child_per_stage(smoke_project):
    from mlflow import MlflowClient

    _, env, _ = smoke_project
    client = MlflowClient(tracking_uri=env["MLFLOW_TRACKING_URI"])
    experiment = client.get_experiment_by_name("sslpipe")
    runs = client.search_runs([experiment.experiment_id], max_results=500)
    parents = [r for r in runs if r.data.tags.get("sslpipe.stage") == "pipeline"]
    assert len(parents) >= 1
    parent = parents[-1]  # the first pipeline run: the one that ran every stage
    children = {r.data.tags["sslpipe.stage"] for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id}
    assert {"ingest", "validate", "pretrain", "tune", "finetune", "evaluate", "register"} <= children
    assert "pretrain.method" in parent.data.params
    assert parent.data.tags.get("git.commit")
    assert parent.data.tags.get("data.version")


def test_dvc_agrees_and_a_second_run_recomputes_nothing(smoke_project):
    project, env, _ = smoke_project
    status = _run(["dvc", "status", "--json"], project, env)
    assert json.loads(status.stdout or "{}") == {}, status.stdout
    before = {p: (project / p).stat().st_mtime_ns for p in OUTPUTS}
    second = _run(["sslpipe", "run", "--smoke"], project, env)
    output = second.stdout + second.stderr
    assert ran_stages(output) == ["sources"]  # the manifest refresh runs every time, and finds nothing new
    assert output.count("inputs unchanged, nothing to do") == 7
    assert {p: (project / p).stat().st_mtime_ns for p in OUTPUTS} == before
    repro = _run(["dvc", "repro"], project, env)
    assert "didn't change, skipping" in repro.stdout + repro.stderr
    assert {p: (project / p).stat().st_mtime_ns for p in OUTPUTS} == before


def test_flow_runs_are_recorded_by_the_prefect_api(smoke_project):
    import asyncio

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName
    from prefect.client.schemas.sorting import FlowRunSort

    async def runs():
        async with get_client() as client:
            return await client.read_flow_runs(
                flow_filter=FlowFilter(name=FlowFilterName(any_=["sslpipe-pipeline"])),
                sort=FlowRunSort.START_TIME_DESC, limit=10,
            )

    flow_runs = asyncio.run(runs())
    assert flow_runs and all(r.state.is_completed() for r in flow_runs)


def test_after_dvc_repro_the_flow_recomputes_nothing(smoke_project):
    """A params edit reproduced by DVC alone leaves nothing for the Prefect flow to do."""
    project, env, _ = smoke_project
    params = project / "params.yaml"
    params.write_text(params.read_text().replace("knn_k: 20", "knn_k: 10"))
    repro = _run(["dvc", "repro"], project, env)
    assert "Running stage 'evaluate'" in repro.stdout
    assert "Running stage 'pretrain'" not in repro.stdout
    again = _run(["sslpipe", "run", "--smoke"], project, env)
    output = again.stdout + again.stderr
    assert ran_stages(output) == ["sources"]
    assert output.count("inputs unchanged, nothing to do") == 7
