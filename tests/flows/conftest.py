"""One populated project for every end-to-end test (pipeline, servers, deployments, retrain, models,
browser, worker, Ctrl-C): a copy of the project in which `sslpipe run --smoke` ran on its own
servers, built once per test run by whichever pytest-xdist worker needs it first
(``built_project``). No test touches it: ``ops_project`` is a copy with servers of its own that
one worker's tests share; the worker and Ctrl-C tests take copies of their own, in any worker,
and start with every stage cached. Servers are stopped at the end whatever happens."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from filelock import FileLock

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


# what belongs to a project's running servers (or Ray's session), never copied
SERVER_STATE = {".sslpipe/servers", ".sslpipe/ray"}
# the stores of those servers: a copy that starts servers of its own either takes them along
# (``copy_built_project(registry=True)``: the built run's MLflow runs, models and Prefect flow runs)
# or starts empty
STORES = {".prefect", "mlflow.db", "mlruns"}


def shared_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory every pytest-xdist worker of this test run sees (``PYTEST_XDIST_TESTRUNUID``
    names the run); the session's own temporary directory without xdist."""
    run = os.environ.get("PYTEST_XDIST_TESTRUNUID")
    base = tmp_path_factory.getbasetemp()
    return base.parent / f"shared-{run}" if run else base / "shared"


def _build(root: Path) -> dict[str, Any]:
    """`sslpipe server start`, `sslpipe run --smoke`, `sslpipe server stop` in a fresh copy of the
    project under ``root``; returns the project's path and the timings."""
    project = copy_project(root / "project")
    timings: dict[str, Any] = {}
    try:
        start = time.perf_counter()
        out = sslpipe(project, "server", "start", "--prefect-port", "0", "--mlflow-port", "0", timeout=300)
        timings["server_start_s"] = time.perf_counter() - start
        print(out.stdout)
        start = time.perf_counter()
        sslpipe(project, "run", "--smoke", timeout=1200)
        timings["smoke_s"] = time.perf_counter() - start
        timings["first_registration"] = json.loads((project / "reports" / "registration.json").read_text())
    finally:
        subprocess.run(["sslpipe", "server", "stop"], cwd=project, env=project_env(), capture_output=True, timeout=120)
    return {"project": str(project), "timings": timings}


@pytest.fixture(scope="session")
def built_project(tmp_path_factory) -> tuple[Path, dict[str, Any]]:
    """(project dir, timings): the test run's smoke project, servers stopped. Built once per test
    run: the first worker to ask builds it under a file lock, the others wait and read it. Never
    modified: tests work on copies (``copy_built_project``)."""
    root = shared_dir(tmp_path_factory)
    root.mkdir(parents=True, exist_ok=True)
    done = root / "built.json"
    with FileLock(root / "build.lock"):
        if not done.exists():  # a worker whose build failed left no built.json: this one tries afresh
            info = _build(Path(tempfile.mkdtemp(prefix="build-", dir=root)))
            tmp = done.with_suffix(".tmp")
            tmp.write_text(json.dumps(info))
            os.replace(tmp, done)
    info = json.loads(done.read_text())
    return Path(info["project"]), info["timings"]


def copy_built_project(src: Path, dst: Path, registry: bool = False) -> Path:
    """``src`` with its outputs, DVC cache and git history, never its servers' state. With
    ``registry``, also its stores (MLflow's runs and registered models, Prefect's flow runs), the
    MLflow store's absolute artifact paths moved to the copy's; without, the copy's servers start
    empty."""
    skip = SERVER_STATE if registry else SERVER_STATE | STORES

    def ignore(directory: str, names: list[str]) -> set[str]:
        rel = Path(directory).relative_to(src)
        return {n for n in names if (rel / n).as_posix() in skip}

    shutil.copytree(src, dst, ignore=ignore, symlinks=True)
    if registry and (dst / "mlflow.db").exists():
        _relocate_sqlite(dst / "mlflow.db", str(src), str(dst))
    return dst


def _relocate_sqlite(db: Path, old: str, new: str) -> None:
    """Rewrite ``old`` to ``new`` in every text column of the SQLite database ``db`` (MLflow keeps
    experiments', runs' and model versions' artifact locations as absolute paths)."""
    with sqlite3.connect(db) as con:
        tables = [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        for table in tables:
            for _, column, kind, *_ in con.execute(f'PRAGMA table_info("{table}")').fetchall():
                if kind.upper().startswith(("TEXT", "VARCHAR")):
                    con.execute(f'UPDATE "{table}" SET "{column}" = replace("{column}", ?, ?) '
                                f'WHERE instr("{column}", ?) > 0', (old, new, old))


@contextmanager
def running_copy(built: Path, dst: Path) -> Iterator[Path]:
    """A copy of the built project with its stores, and `sslpipe server start` running in it."""
    project = copy_built_project(built, dst, registry=True)
    try:
        sslpipe(project, "server", "start", "--prefect-port", "0", "--mlflow-port", "0", timeout=300)
        yield project
    finally:
        subprocess.run(["sslpipe", "server", "stop"], cwd=project, env=project_env(), capture_output=True, timeout=120)


@pytest.fixture(scope="session")
def ops_project(built_project, tmp_path_factory):
    """(project dir, timings): the pipeline, server, deployment, retrain, model and browser tests'
    copy of the built project, its servers running."""
    built, timings = built_project
    with running_copy(built, tmp_path_factory.mktemp("ops") / "project") as project:
        yield project, timings


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
