"""A Prefect process worker runs sslpipe's deployments from ``infra/prefect.yaml``, with the
commands the README's "Scaling out" section gives: ``prefect work-pool create``, ``prefect deploy
--all --prefect-file infra/prefect.yaml``, ``prefect worker start --pool sslpipe-process --limit 1``.

What the worker really executes: the flows of a copy of the session's smoke project
(``built_project``: built once per test run), with a Prefect server and an MLflow server of the copy's own
(``sslpipe server start`` on free loopback ports; empty stores). The worker's environment names
the servers (``PREFECT_API_URL``, ``MLFLOW_TRACKING_URI``) and the checkout (``SSLPIPE_ROOT``,
which the deployment's pull step enters), as on a machine of its own.

1. The pipeline deployment, with smoke parameters and one registry parameter changed
   (``register.min_improvement``): DVC finds the stages up to evaluate cached (the built
   project's outputs), so the flow run re-runs the register stage, for real: the chosen model
   logged to the copy's MLflow server and registered as the first version of its empty registry
   (the champion); dvc.lock records the new parameter.
2. The retrain deployment (smoke): ingest cached, the data is the new champion's, its drift score
   computed with the champion's encoder loaded from MLflow: decision "skipped", Completed.

Measured on 2 cores shared with other work (load 7-10): 182-260 s in all (servers, pool and
deploy 60 s; pipeline run 72-117 s; retrain run 27-45 s; stopping 12-23 s).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from cli.servers import group_alive
from tests.flows.conftest import copy_built_project, prefect_client, project_env, server_state, sslpipe

pytestmark = pytest.mark.e2e

POOL = "sslpipe-process"
RUN_TIMEOUT_S = 900  # a deadline for a stuck run, not a speed check
DEPLOYER_ROOT = "/elsewhere/on/the/deploying/machine"  # where the deployer's own checkout would be
def child_groups(pid: int) -> set[int]:
    """The process groups of ``pid``'s children: the worker starts each flow run in a group of its own."""
    groups = set()
    for proc in Path("/proc").iterdir():
        try:
            fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if proc.name.isdigit() and int(fields[1]) == pid:
            groups.add(int(fields[2]))
    return groups


def stop_worker(proc: subprocess.Popen, timeout_s: float = 30) -> None:
    """SIGTERM to the worker and to any flow run it still runs (a flow run stops its stage's
    process tree on SIGTERM), then SIGKILL for whatever is left after ``timeout_s``."""
    groups = {proc.pid} | child_groups(proc.pid)
    for group in groups:
        try:
            os.killpg(group, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + timeout_s
    while any(group_alive(g) for g in groups) and time.monotonic() < deadline:
        time.sleep(0.5)
    for group in groups:
        try:
            os.killpg(group, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait(10)


def prefect(project: Path, env: dict[str, str], *args: str, timeout: int = 300) -> str:
    """``prefect ARGS`` in ``project``, failing with its output."""
    proc = subprocess.run(["prefect", *args], cwd=project, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, (f"prefect {' '.join(args)} failed ({proc.returncode}):\n"
                                  f"{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return proc.stdout


def flow_run_logs(client: Any, run_id: Any, last: int = 80) -> str:
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.client.schemas.sorting import LogSort

    logs = client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id])), sort=LogSort.TIMESTAMP_ASC)
    return "\n".join(f"{log.timestamp:%H:%M:%S} {log.name}: {log.message}" for log in logs[-last:])


def run_on_worker(api: str, deployment: str, parameters: dict[str, Any], worker_log: Path) -> Any:
    """Trigger ``deployment`` (as the UI's "Custom run" does) and wait for the worker to finish it;
    fails with the flow run's logs and the worker's when it does not end Completed."""
    with prefect_client(api) as c:
        dep = c.read_deployment_by_name(deployment)
        run = c.create_flow_run_from_deployment(dep.id, parameters=parameters)
        start = time.perf_counter()
        while not (state := c.read_flow_run(run.id).state).is_final() and time.perf_counter() - start < RUN_TIMEOUT_S:
            time.sleep(1)
        print(f"{deployment}: {state.name} {time.perf_counter() - start:.0f} s after the trigger")
        if not state.is_completed():
            pytest.fail(f"{deployment}: flow run {run.id} is {state.name} ({state.message})\n"
                        f"--- flow run logs:\n{flow_run_logs(c, run.id)}\n"
                        f"--- worker log ({worker_log}):\n{worker_log.read_text(errors='replace')[-6000:]}")
        return c.read_flow_run(run.id)


def mlflow_run(uri: str, flow_run_id: Any, stage: str) -> Any:
    """The one MLflow run of ``stage`` that the flow run ``flow_run_id`` recorded."""
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("sslpipe").experiment_id],
                              filter_string=f"tags.`prefect.flow_run_id` = '{flow_run_id}' and tags.`sslpipe.stage` = '{stage}'")
    assert len(runs) == 1, f"{len(runs)} MLflow runs of {stage} for flow run {flow_run_id}"
    return runs[0]


def stage_statuses(uri: str, run_id: str, dst: Path) -> dict[str, str]:
    """Stage -> ran | cached | failed, from the pipeline run's ``stages.json`` in MLflow."""
    from mlflow import MlflowClient

    path = MlflowClient(uri).download_artifacts(run_id, "stages.json", str(dst))
    return {o["stage"]: o["status"] for o in json.loads(Path(path).read_text())["stages"]}


@pytest.fixture
def worker(built_project, tmp_path):
    """A copy of the built project with its own servers, both deployments on the process pool, and
    a worker polling it; yields (project, Prefect API URL, MLflow URI, worker log). Stops the
    worker and the servers whatever happens."""
    project = copy_built_project(built_project[0], tmp_path / "project")
    log_path = tmp_path / "worker.log"
    proc = None
    try:
        sslpipe(project, "server", "start", "--prefect-port", "0", "--mlflow-port", "0", timeout=300)
        api = server_state(project, "prefect")["env"]["PREFECT_API_URL"]
        mlflow_uri = server_state(project, "mlflow")["env"]["MLFLOW_TRACKING_URI"]
        # as on a worker machine of its own (project_env drops the caller's server variables)
        env = {**project_env(), "PREFECT_API_URL": api, "MLFLOW_TRACKING_URI": mlflow_uri, "SSLPIPE_ROOT": str(project),
               "PREFECT_HOME": str(tmp_path / "prefect-home"), "PREFECT_LOGGING_LEVEL": "INFO",
               "PREFECT_WORKER_QUERY_SECONDS": "2"}
        prefect(project, env, "work-pool", "create", POOL, "--type", "process")
        prefect(project, {**env, "SSLPIPE_ROOT": DEPLOYER_ROOT}, "deploy", "--all", "--prefect-file", "infra/prefect.yaml")
        with open(log_path, "w") as log:
            proc = subprocess.Popen(["prefect", "worker", "start", "--pool", POOL, "--limit", "1", "--name", "test-worker"],
                                    cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        yield project, api, mlflow_uri, log_path
    finally:
        if proc is not None:
            stop_worker(proc)
        subprocess.run(["sslpipe", "server", "stop"], cwd=project, env=project_env(), capture_output=True, timeout=120)


def test_a_process_worker_runs_the_pipeline_and_retrain_deployments(worker, tmp_path):
    project, api, mlflow_uri, worker_log = worker
    with prefect_client(api) as c:
        dep = c.read_deployment_by_name("sslpipe-pipeline/pipeline")
    assert dep.work_pool_name == POOL
    # each worker enters its own checkout: SSLPIPE_ROOT is read on the worker (the deployer's is elsewhere)
    assert "${SSLPIPE_ROOT" in json.dumps(dep.pull_steps) and DEPLOYER_ROOT not in json.dumps(dep.pull_steps)
    margin = yaml.safe_load((project / "params.yaml").read_text())["register"]["min_improvement"] + 0.01

    run = run_on_worker(api, "sslpipe-pipeline/pipeline",
                        {"smoke": True, "overrides": [f"register.min_improvement={margin}"]}, worker_log)
    assert run.work_pool_name == POOL and str(run.id) in worker_log.read_text(errors="replace")
    status = stage_statuses(mlflow_uri, mlflow_run(mlflow_uri, run.id, "pipeline").info.run_id, tmp_path)
    assert status["pretrain"] == "cached" and status["register"] == "ran", status  # the built project's outputs, reused
    lock = yaml.safe_load((project / "dvc.lock").read_text())
    assert lock["stages"]["register"]["params"]["params.yaml"]["register"]["min_improvement"] == margin  # dvc.lock stays true

    run = run_on_worker(api, "sslpipe-retrain/retrain", {"smoke": True}, worker_log)
    tags = mlflow_run(mlflow_uri, run.id, "retrain").data.tags
    assert tags["retrain.decision"] == "skipped", tags.get("retrain.reason")
    assert tags["retrain.champion_version"] == "1"  # the version the pipeline run registered
