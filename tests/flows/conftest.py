"""One populated project for every end-to-end test (pipeline, servers, deployments, retrain, models,
browser): a copy of the project with `sslpipe server start` running in it and one
`sslpipe run --smoke` done, built once per session. The servers are stopped at the end whatever
happens."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO, copy_project, stop_process, subprocess_env

ARTIFACTS = REPO / "tests" / "artifacts"  # screenshots and logs kept for people (gitignored)
SMOKE_MODEL = "sslpipe-classifier-smoke"  # where a smoke run registers (tasks/smoke.py): never the real name


def project_env(**extra: str) -> dict[str, str]:
    """The environment for `sslpipe` in the project: no server variables of the caller's, so the
    CLI finds the project's own servers through .sslpipe/servers."""
    env = subprocess_env(**{"PREFECT_LOGGING_LEVEL": "WARNING", "COLUMNS": "220", **extra})
    for key in ("PREFECT_API_URL", "PREFECT_UI_URL", "MLFLOW_TRACKING_URI", "PREFECT_HOME"):
        env.pop(key, None)
    return env


def sslpipe(project: Path, *args: str, timeout: int = 900, check: bool = True,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run ``sslpipe ARGS`` in ``project`` (``env``: extra variables), failing with its output."""
    proc = subprocess.run(["sslpipe", *args], cwd=project, env=project_env(**(env or {})), capture_output=True,
                          text=True, timeout=timeout)
    if check:
        assert proc.returncode == 0, f"sslpipe {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-6000:]}\n{proc.stderr[-6000:]}"
    return proc


@contextmanager
def prefect_client(api: str) -> Iterator[Any]:
    """A sync Prefect client for the API at ``api``."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: api}), get_client(sync_client=True) as client:
        yield client


def server_state(project: Path, name: str) -> dict:
    return json.loads((project / ".sslpipe" / "servers" / f"{name}.json").read_text())


def small_data_project(root: Path, n_train: int = 200, n_test: int = 60) -> Path:
    """A copy of the project under ``root`` whose ingest reads small synthetic Fashion-MNIST files
    (16x16), that setting committed: a pipeline that fails or is stopped fast."""
    from tasks.run_setup import write_params_yaml
    from tests.fixtures import write_fashion_mnist

    write_fashion_mnist(root / "fashion", n_train=n_train, n_test=n_test, side=16)
    project = copy_project(root / "project")
    params = project / "params.yaml"
    write_params_yaml(params, [f"ingest.fashion_mnist_dir={root / 'fashion'}"], target=params)
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qam", "small data"], cwd=project,
                   check=True)
    return project


@pytest.fixture(scope="session")
def ops_project(tmp_path_factory):
    """(project dir, timings) with both servers running and a smoke pipeline registered."""
    project = copy_project(tmp_path_factory.mktemp("ops") / "project")
    timings = {}
    try:
        start = time.perf_counter()
        out = sslpipe(project, "server", "start", "--prefect-port", "0", "--mlflow-port", "0", timeout=300)
        timings["server_start_s"] = time.perf_counter() - start
        print(out.stdout)
        start = time.perf_counter()
        sslpipe(project, "run", "--smoke", timeout=1200)
        timings["smoke_s"] = time.perf_counter() - start
        timings["first_registration"] = json.loads((project / "reports" / "registration.json").read_text())
        yield project, timings
    finally:
        subprocess.run(["sslpipe", "server", "stop"], cwd=project, env=project_env(), capture_output=True, timeout=120)


@pytest.fixture(scope="session")
def served(ops_project):
    """`sslpipe serve` running in the project; yields (project, Prefect API URL, seconds until the
    deployments were visible)."""
    project, _ = ops_project
    api = server_state(project, "prefect")["env"]["PREFECT_API_URL"]
    log = open(project / ".sslpipe" / "serve.log", "w")
    start = time.perf_counter()
    proc = subprocess.Popen(["sslpipe", "serve"], cwd=project, env=project_env(), stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        ready = None
        while ready is None and time.perf_counter() - start < 180:
            assert proc.poll() is None, (project / ".sslpipe" / "serve.log").read_text()[-4000:]
            try:
                with prefect_client(api) as c:
                    c.read_deployment_by_name("sslpipe-retrain/retrain")
                    c.read_deployment_by_name("sslpipe-pipeline/pipeline")
                ready = time.perf_counter() - start
            except Exception:
                time.sleep(1)
        assert ready is not None, "deployments did not appear in 180 s"
        yield project, api, ready
    finally:
        stop_process(proc, grace_s=10)
        log.close()
