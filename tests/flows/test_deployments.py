"""`sslpipe serve` against a real Prefect server: both deployments exist with the right schedule
and parameter schema, and a run triggered as the UI does it runs, records its overrides in MLflow
with the flow run's id and URL, and leaves DVC up to date."""

from __future__ import annotations

import json
import subprocess
import time

import pytest

from tasks.config import load_params
from tests.flows.conftest import prefect_client, project_env, server_state

pytestmark = pytest.mark.e2e


def test_deployments_have_schedule_and_parameter_schema(served):
    project, api, ready_s = served
    print(f"deployments visible {ready_s:.1f} s after `sslpipe serve` started")
    with prefect_client(api) as c:
        pipeline = c.read_deployment_by_name("sslpipe-pipeline/pipeline")
        retrain = c.read_deployment_by_name("sslpipe-retrain/retrain")
    props = pipeline.parameter_openapi_schema["properties"]
    for name in ("method", "epochs", "label_fractions", "tune_trials", "overrides"):
        assert name in props, name
    assert '"string"' in json.dumps(props["overrides"])  # ["section.key=value", ...], as `sslpipe run --set` takes them
    assert '"simclr", "moco", "byol"' in json.dumps(props["method"])  # a drop-down of the methods
    assert not pipeline.schedules
    cfg = load_params(project / "params.yaml").retrain
    assert [(s.schedule.cron, s.schedule.timezone, s.active) for s in retrain.schedules] == [(cfg.cron, cfg.timezone, True)]
    assert {"overrides", "force"} <= set(retrain.parameter_openapi_schema["properties"])


def test_a_ui_triggered_run_records_its_overrides(served):
    from mlflow import MlflowClient

    project, api, _ = served
    current = load_params(project / "params.yaml").evaluate.embedding_plot_images  # an override DVC finds cached
    with prefect_client(api) as c:
        dep = c.read_deployment_by_name("sslpipe-pipeline/pipeline")
        start = time.perf_counter()
        run = c.create_flow_run_from_deployment(
            dep.id, parameters={"smoke": True, "overrides": [f"evaluate.embedding_plot_images={current}"]})
        running_s = None
        while time.perf_counter() - start < 600:
            state = c.read_flow_run(run.id).state
            if running_s is None and (state.is_running() or state.is_final()):
                running_s = time.perf_counter() - start
            if state.is_final():
                break
            time.sleep(0.5)
    print(f"trigger -> running: {running_s:.1f} s; -> {state.name}: {time.perf_counter() - start:.1f} s")
    assert state.is_completed(), state

    client = MlflowClient(server_state(project, "mlflow")["env"]["MLFLOW_TRACKING_URI"])
    runs = client.search_runs([client.get_experiment_by_name("sslpipe").experiment_id],
                              filter_string=f"tags.`prefect.flow_run_id` = '{run.id}' and tags.`sslpipe.stage` = 'pipeline'")
    assert len(runs) == 1
    tags = runs[0].data.tags
    assert tags["prefect.flow_run_url"].endswith(f"/flow-runs/flow-run/{run.id}")
    assert tags["git.commit"] and tags["data.version"]
    overrides = json.loads(open(client.download_artifacts(runs[0].info.run_id, "overrides.json", str(project / ".sslpipe"))).read())
    assert f"evaluate.embedding_plot_images={current}" in overrides["overrides"]
    dvc = subprocess.run(["dvc", "status", "--json"], cwd=project, env=project_env(), capture_output=True, text=True)
    assert json.loads(dvc.stdout or "{}") == {}, dvc.stdout
