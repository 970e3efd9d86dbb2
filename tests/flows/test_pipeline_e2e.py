"""End to end: `sslpipe run --smoke` in the session's copy of the project (tests/flows/conftest.py:
one smoke project per test run, shared with the operate tests) on real Prefect and MLflow servers,
real DVC stages and real Ray Tune trials -- nothing mocked.

Other tests change the project's registry and parameters (retrain, deployments); these assert what
holds whatever ran before them: the first run's own results, and that DVC and the flow agree."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from tasks.config import load_params
from tests.conftest import REPO
from tests.flows.conftest import (SMOKE_MODEL, copy_built_project, prefect_client, project_env, server_state,
                                  sslpipe)
from tests.test_dvc_deps import Project, load_dvc, stage_closure, stage_dispatch

pytestmark = pytest.mark.e2e

FLOW_LOG = {"PREFECT_LOGGING_LEVEL": "INFO"}  # the flow's "inputs unchanged" lines are INFO
OUTPUTS = ["data/sources.json", "data/dataset/metadata.parquet", "models/encoder.pt", "models/tune/best.json", "reports/metrics.json"]


def ran_stages(output: str) -> list[str]:
    """The stages DVC ran, from its words "Running stage 'NAME'" (each line shows once)."""
    stages = re.findall(r"Running stage '(\w+)'", output)
    assert len(stages) == len(set(stages)), output
    return sorted(stages)


def _client(project: Path):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=server_state(project, "mlflow")["env"]["MLFLOW_TRACKING_URI"])


def test_metrics_cover_the_evaluation_protocol(ops_project):
    project, _ = ops_project
    metrics = json.loads((project / "reports/metrics.json").read_text())
    arms = load_params(project / "params.yaml").finetune.arms  # what the last run trained
    for key in ("knn_top1", "linear_top1", "knn_top1_raw_pixels", "knn_top1_random_init", "model_top1"):
        assert 0.0 <= metrics[key] <= 1.0, key
    assert set(metrics["fractions"]) == {"0.01", "0.1"}
    for entry in metrics["fractions"].values():
        assert list(entry["arms"]) == arms
        for scores in entry["arms"].values():
            assert 0.0 <= scores["test_top1"] <= 1.0
        assert entry["selected"] in entry["arms"]
        assert entry["num_labels"] >= 10  # at least one per class
    assert metrics["selected_arm"] == metrics["fractions"]["0.1"]["selected"]
    assert len(json.loads((project / "reports/per_class.json").read_text())) == 10
    assert (project / "reports/plots/confusion_matrix.png").stat().st_size > 0


def test_the_first_run_trained_every_arm_and_registered_the_champion(ops_project):
    project, timings = ops_project
    first = timings["first_registration"]  # reports/registration.json right after the session's smoke run
    assert first["alias"] == "champion" and first["promoted"] and first["champion_before"] is None
    # the figure on the card (evaluate's) is what the registry measured through MLflow pyfunc, as served
    assert first["metric"] == "model_top1" and first["value"] == first["challenger_top1"]
    client = _client(project)
    mv = client.get_model_version(SMOKE_MODEL, first["version"])
    assert first["model_name"] == SMOKE_MODEL and mv.tags["sslpipe.smoke"] == "true"
    assert "plumbing check" in mv.description.splitlines()[0]
    assert client.search_model_versions("name='sslpipe-classifier'") == []  # the real name: no smoke model
    arms = load_params(project / "params.yaml").finetune.arms
    assert len(arms) >= 3 and mv.tags["arm"] in arms
    assert {f"val_top1.{arm}" for arm in arms} <= set(mv.tags)


def test_mlflow_has_a_parent_run_with_a_child_per_stage(ops_project):
    project, _ = ops_project
    client = _client(project)
    experiment = client.get_experiment_by_name("sslpipe")
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("sslpipe.stage") == "pipeline"]
    assert len(parents) >= 1
    parent = parents[-1]  # the first pipeline run: the one that ran every stage
    children = {r.data.tags["sslpipe.stage"] for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id}
    assert {"sources", "ingest", "validate", "pretrain", "tune", "finetune", "evaluate", "register"} <= children
    assert "pretrain.method" in parent.data.params
    assert parent.data.tags.get("git.commit")
    assert parent.data.tags.get("data.version")
    assert parent.data.tags.get("prefect.flow_run_url", "").startswith("http")  # a real server: a link back
    assert parent.data.tags["sslpipe.smoke"] == "true" and "plumbing check" in parent.data.tags["mlflow.note.content"]


def test_dvc_agrees_and_a_second_run_recomputes_nothing(ops_project):
    project, _ = ops_project
    status = subprocess.run(["dvc", "status", "--json"], cwd=project, env=project_env(), capture_output=True, text=True)
    assert status.returncode == 0 and json.loads(status.stdout or "{}") == {}, status.stdout + status.stderr
    before = {p: (project / p).stat().st_mtime_ns for p in OUTPUTS}
    second = sslpipe(project, "run", "--smoke", env=FLOW_LOG)
    output = second.stdout + second.stderr
    assert ran_stages(output) == ["sources"]  # the manifest refresh runs every time, and finds nothing new
    assert "Smoke run: a plumbing check" in second.stdout
    assert "core.autostage" not in output and "dvc push` to send" not in output  # DVC's hints after each stage
    assert output.count("git add") <= 1  # said once, in the summary
    assert "http" in second.stdout.split("This run:")[1].splitlines()[1]  # this run's MLflow run, on the server
    assert "sslpipe predict" in second.stdout and "sslpipe compare" in second.stdout
    assert output.count("inputs unchanged, nothing to do") == 7
    assert {p: (project / p).stat().st_mtime_ns for p in OUTPUTS} == before
    repro = subprocess.run(["dvc", "repro"], cwd=project, env=project_env(), capture_output=True, text=True)
    assert repro.returncode == 0 and "didn't change, skipping" in repro.stdout + repro.stderr
    assert {p: (project / p).stat().st_mtime_ns for p in OUTPUTS} == before


def test_an_edited_module_makes_exactly_the_stages_that_import_it_stale(built_project, tmp_path: Path):
    """DVC's own verdict in a copy of the built project, every stage cached: an edit to
    ``tasks/dataset.py`` (``labeled_subset``) makes finetune stale, and with it exactly the other
    stages whose code imports the module (derived from the code, as tests/test_dvc_deps.py does);
    the edit put back, nothing is stale."""
    project = copy_built_project(built_project[0], tmp_path / "project")

    def stale() -> set[str]:
        out = subprocess.run(["dvc", "status", "--json"], cwd=project, env=project_env(), capture_output=True, text=True)
        assert out.returncode == 0, out.stdout + out.stderr
        return set(json.loads(out.stdout or "{}"))

    code = Project(REPO)
    dispatch = stage_dispatch(code)
    importers = {name for name in load_dvc()["stages"] if "tasks.dataset" in stage_closure(code, dispatch, name).modules}
    assert "finetune" in importers and "sources" not in importers  # a real split: some stages do not import it
    assert stale() == set()
    module = project / "tasks" / "dataset.py"
    original = module.read_text()
    module.write_text(original + "\n# an edit\n")
    assert stale() == importers
    module.write_text(original)
    assert stale() == set()


def test_flow_runs_are_recorded_by_the_prefect_api(ops_project):
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName
    from prefect.client.schemas.sorting import FlowRunSort

    project, _ = ops_project
    with prefect_client(server_state(project, "prefect")["env"]["PREFECT_API_URL"]) as client:
        flow_runs = client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=["sslpipe-pipeline"])),
                                          sort=FlowRunSort.START_TIME_DESC, limit=50)
    assert flow_runs and all(r.state.is_completed() for r in flow_runs if r.state.is_final())


def test_after_dvc_repro_the_flow_recomputes_nothing(ops_project):
    """A params edit reproduced by DVC alone leaves nothing for the Prefect flow to do."""
    project, _ = ops_project
    params = project / "params.yaml"
    k = load_params(params).evaluate.knn_k
    params.write_text(params.read_text().replace(f"knn_k: {k}", f"knn_k: {k + 1}"))
    repro = subprocess.run(["dvc", "repro"], cwd=project, env=project_env(), capture_output=True, text=True)
    assert repro.returncode == 0, repro.stdout[-4000:] + repro.stderr[-4000:]
    assert "Running stage 'evaluate'" in repro.stdout
    assert "Running stage 'pretrain'" not in repro.stdout
    again = sslpipe(project, "run", "--smoke", env=FLOW_LOG)
    output = again.stdout + again.stderr
    assert ran_stages(output) == ["sources"]
    assert output.count("inputs unchanged, nothing to do") == 7
