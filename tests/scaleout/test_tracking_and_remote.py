"""The scaled-out tracking and data column, for real: `sslpipe run --smoke` against `mlflow server` on
PostgreSQL with its artifacts in an S3-compatible object store (tests/scaleout/servers.py: the
topology of infra/docker-compose.yml, as processes on loopback), then the project's data and models
pushed to a DVC remote in the same store and pulled, byte for byte, into a fresh clone.

One `sslpipe run --smoke` (Fashion-MNIST, a few hundred images, one epoch: a user's first command)
feeds every test here; the servers start once for the module and stop, every process, whatever
happens."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import VENV_BIN, copy_project, subprocess_env
from tests.flows.conftest import SMOKE_MODEL
from tests.scaleout.servers import (ObjectStore, Postgres, http_status, mlflow_server, object_store, postgres,
                                   postgres_bin)

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.xdist_group("scaleout_tracking"),  # one xdist worker starts the servers and runs the pipeline once
    pytest.mark.skipif(postgres_bin() is None, reason="PostgreSQL is not installed: apt-get install -y postgresql "
                                                     "(.ci/run does)"),
]

STAGES = {"sources", "ingest", "validate", "pretrain", "tune", "finetune", "evaluate", "register"}


@dataclass
class Stack:
    db: Postgres
    store: ObjectStore
    tracking_uri: str
    project: Path  # the project copy the smoke run ran in, against the servers above


def run(cmd: list[str], cwd: Path, env: dict[str, str], timeout: int = 900) -> subprocess.CompletedProcess:
    """Run ``cmd`` (a venv tool: sslpipe, dvc) in ``cwd``; fail with its output."""
    proc = subprocess.run([str(VENV_BIN / cmd[0]), *cmd[1:]], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-5000:]}\n{proc.stderr[-5000:]}"
    return proc


def client_env(tracking_uri: str, s3_keys: dict[str, str] | None = None, **extra: str) -> dict[str, str]:
    """A team member's shell: ``MLFLOW_TRACKING_URI`` names the server, and nothing else of the
    object store -- the server proxies MLflow's artifacts -- but the S3 keys DVC's remote needs,
    when given."""
    env = subprocess_env(MLFLOW_TRACKING_URI=tracking_uri, PREFECT_LOGGING_LEVEL="WARNING", **extra)
    for key in ("PREFECT_API_URL", "PREFECT_UI_URL", "PREFECT_HOME", "MLFLOW_S3_ENDPOINT_URL", "AWS_ACCESS_KEY_ID",
                "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE", "AWS_ENDPOINT_URL"):
        env.pop(key, None)
    if s3_keys:
        env.update({k: s3_keys[k] for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")})
    return env


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> Iterator[Stack]:
    """Postgres, the object store and `mlflow server` on them, and a smoke run tracked there."""
    with ExitStack() as servers:
        db = servers.enter_context(postgres())
        store = servers.enter_context(object_store())
        uri = servers.enter_context(mlflow_server(db, store))
        project = copy_project(tmp_path_factory.mktemp("scaleout") / "project")
        stack = Stack(db, store, uri, project)
        run(["sslpipe", "run", "--smoke"], project, client_env(uri), timeout=1200)
        yield stack


def test_the_runs_live_in_postgres_and_the_artifacts_in_the_bucket(stack: Stack) -> None:
    import psycopg
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=stack.tracking_uri)
    experiment = client.get_experiment_by_name("sslpipe")
    assert experiment is not None and experiment.artifact_location.startswith("mlflow-artifacts:")
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    [parent] = [r for r in runs if r.data.tags.get("sslpipe.stage") == "pipeline"]
    children = {r.data.tags["sslpipe.stage"]: r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id}
    assert STAGES <= set(children)
    evaluate = children["evaluate"]
    headline = json.loads((stack.project / "reports" / "metrics.json").read_text())
    assert evaluate.data.metrics["knn_top1"] == pytest.approx(headline["knn_top1"])
    assert children["pretrain"].data.params["pretrain.method"] == parent.data.params["pretrain.method"]

    # the same runs, as rows of the server's database
    with psycopg.connect(stack.db.url("mlflow", driver="")) as conn:
        (n_runs,) = conn.execute("SELECT count(*) FROM runs WHERE experiment_id = %s",
                                 (int(experiment.experiment_id),)).fetchone()
        (n_metrics,) = conn.execute("SELECT count(*) FROM metrics WHERE run_uuid = %s AND key = 'knn_top1'",
                                    (evaluate.info.run_id,)).fetchone()
        (n_params,) = conn.execute("SELECT count(*) FROM params WHERE run_uuid = %s", (parent.info.run_id,)).fetchone()
    assert n_runs == len(runs) and n_metrics >= 1 and n_params == len(parent.data.params)

    # artifacts: objects under s3://mlflow/<experiment>/<run>/artifacts/
    keys = stack.store.keys("mlflow")
    prefix = f"{experiment.experiment_id}/{evaluate.info.run_id}/artifacts/"
    assert {prefix + "plots/confusion_matrix.png", prefix + "metrics.json"} <= set(keys)
    assert any(k.startswith(f"{experiment.experiment_id}/{children['pretrain'].info.run_id}/artifacts/plots/")
               for k in keys)
    # MLflow 3 refuses a Host it was not told about (why the compose file passes --allowed-hosts)
    search = f"{stack.tracking_uri}/api/2.0/mlflow/experiments/search?max_results=1"
    assert http_status(search) == 200 and http_status(search, {"Host": "mlflow:5000"}) == 403


def test_the_smoke_model_is_registered_on_the_server_with_its_files_in_the_bucket(stack: Stack, tmp_path: Path) -> None:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=stack.tracking_uri)
    registration = json.loads((stack.project / "reports" / "registration.json").read_text())
    champion = client.get_model_version_by_alias(SMOKE_MODEL, "champion")
    assert registration["model_name"] == SMOKE_MODEL and champion.version == str(registration["version"])
    # the version's files: the logged model's objects in the bucket (MLmodel and the weights)
    model_keys = [k for k in stack.store.keys("mlflow") if "/models/" in k or k.startswith("models/")]
    assert any(k.endswith("/MLmodel") for k in model_keys), model_keys[:20]
    assert len(model_keys) >= 3
    loaded = client.download_artifacts(champion.run_id, "model/classes.json", str(tmp_path))
    assert len(json.loads(Path(loaded).read_text())["classes"]) == 10

    # and the CLI lists it from the server
    out = run(["sslpipe", "models", "--name", SMOKE_MODEL], stack.project, client_env(stack.tracking_uri, COLUMNS="200")).stdout
    assert SMOKE_MODEL in out and "champion" in out


def test_predict_loads_the_champion_from_the_bucket_and_leaves_no_copy_behind(stack: Stack, tmp_path: Path) -> None:
    """`sslpipe predict` (and the register stage's gate: both load through
    ``tasks.registry.open_model``) downloads the version's files from the bucket into a temporary
    directory it removes. MLflow's default, a ``mkdtemp`` nothing removes, left a copy of the model
    in /tmp by every load: one a run on this stack, one a prediction."""
    import numpy as np

    from tests.fixtures import write_png

    images = tmp_path / "images"
    rng = np.random.default_rng(0)
    for i in range(3):
        write_png(images / f"img_{i}.png", rng.integers(0, 256, (28, 28), dtype=np.uint8))
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = client_env(stack.tracking_uri, COLUMNS="200", TMPDIR=str(tmp))
    out = run(["sslpipe", "predict", "--model", "champion", str(images)], stack.project, env).stdout
    assert sum(f"img_{i}.png" in out for i in range(3)) == 3, out
    assert not list(tmp.rglob("MLmodel"))
    assert [p.name for p in tmp.iterdir() if not p.name.startswith("torchinductor_")] == []  # torch's cache may stay


def dvc_outputs(project: Path) -> list[str]:
    """Every output dvc.lock records (all in DVC's cache but the sources manifest)."""
    import yaml

    lock = yaml.safe_load((project / "dvc.lock").read_text())["stages"]
    return sorted({o["path"] for stage in lock.values() for o in stage.get("outs", [])})


def md5s(root: Path, outputs: list[str]) -> dict[str, str]:
    """md5 of every file under ``outputs`` (relative path -> hash)."""
    import hashlib

    files = [p for out in outputs for p in ([root / out] if (root / out).is_file() else sorted((root / out).rglob("*")))
             if p.is_file()]
    return {str(p.relative_to(root)): hashlib.md5(p.read_bytes()).hexdigest() for p in files}


def test_a_teammate_pulls_the_data_and_models_from_the_dvc_remote(stack: Stack, tmp_path: Path) -> None:
    env = client_env(stack.tracking_uri, stack.store.env)
    project = stack.project
    remote = ["remote", "add", "-d", "storage", "s3://dvc/sslpipe"]
    endpoint = ["remote", "modify", "storage", "endpointurl", stack.store.endpoint]
    for args in (remote, endpoint):
        run(["dvc", *args], project, env)
    run(["dvc", "push"], project, env)
    assert any(k.startswith("sslpipe/files/md5/") for k in stack.store.keys("dvc"))
    assert "in sync" in run(["dvc", "status", "--cloud"], project, env).stdout.lower()

    # the run's commit: the remote (keys excepted), dvc.lock, params and the sources manifest (the
    # one output DVC does not cache: forced, .gitignore hides /data); the rest travels through the remote
    outputs = dvc_outputs(project)
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "add", ".dvc/config", "dvc.lock", "params.yaml"], cwd=project, check=True)
    subprocess.run([*git, "add", "-f", "data/sources.json"], cwd=project, check=True)
    subprocess.run([*git, "commit", "-qm", "the run and its DVC remote"], cwd=project, check=True)
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(project), str(clone)], check=True)
    assert not (clone / "models" / "encoder.pt").exists()
    run(["dvc", "pull"], clone, env)

    assert {"data/dataset", "data/sources.json", "models/encoder.pt", "reports/metrics.json"} <= set(outputs)
    assert md5s(clone, outputs) == md5s(project, outputs)
    status = json.loads(run(["dvc", "status", "--json"], clone, env).stdout or "{}")
    assert status == {}, status  # every stage up to date in the clone: nothing to recompute
    assert "in sync" in run(["dvc", "status", "--cloud"], clone, env).stdout.lower()
