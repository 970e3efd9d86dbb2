"""MLflow at the edges: where to log, one run per stage (a child of the pipeline run when there is
one), and the tags that tie a run to its code and data."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

# what the pipeline flow tells the stages it runs through DVC (subprocesses): the MLflow run to nest
# under and the Prefect flow run to link to
PARENT_RUN_ENV = "SSLPIPE_PARENT_RUN_ID"
FLOW_RUN_ID_ENV = "SSLPIPE_PREFECT_FLOW_RUN_ID"
FLOW_RUN_URL_ENV = "SSLPIPE_PREFECT_RUN_URL"
DEFAULT_EXPERIMENT = "sslpipe"
# the MLflow 3 UI opens an experiment without this tag on its GenAI overview (traces); this value
# (one of the UI's experiment kinds) opens it on the training runs
EXPERIMENT_KIND_TAG, EXPERIMENT_KIND = "mlflow.experimentKind", "custom_model_development"


def tracking_uri() -> str:
    """``MLFLOW_TRACKING_URI`` if set, else ``sqlite:///mlflow.db`` in the project root."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd() / 'mlflow.db'}"


def setup_mlflow() -> str:
    """Point MLflow at the store and the experiment (``MLFLOW_EXPERIMENT_NAME``, default sslpipe),
    an experiment of training runs for the UI (``EXPERIMENT_KIND``, unless the user set another);
    returns the experiment id. Artifacts of a local store go to ``mlruns/`` in the project root."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri())
    name = os.environ.get("MLFLOW_EXPERIMENT_NAME", DEFAULT_EXPERIMENT)
    experiment = mlflow.get_experiment_by_name(name)
    if experiment is None:
        location = (Path.cwd() / "mlruns").as_uri() if tracking_uri().startswith("sqlite") else None
        try:
            experiment_id = mlflow.create_experiment(name, artifact_location=location,
                                                     tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})
        except Exception:  # created meanwhile by a concurrent stage
            experiment = mlflow.get_experiment_by_name(name)
            if experiment is None:
                raise
            experiment_id = experiment.experiment_id
    else:
        experiment_id = experiment.experiment_id
        if EXPERIMENT_KIND_TAG not in experiment.tags:  # created before sslpipe tagged its experiments
            mlflow.MlflowClient().set_experiment_tag(experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
    # also after creating it: else the first run of a fresh store lands in "Default"
    mlflow.set_experiment(experiment_id=experiment_id)
    return experiment_id


def git_commit() -> str:
    """The checked-out commit, with ``-dirty`` when tracked files changed; ``unknown`` outside git."""
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True).stdout
        return sha + ("-dirty" if dirty.strip() else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out


def dvc_data_hash(lock: Path = Path("dvc.lock"), out: str = "data/dataset") -> str | None:
    """The md5 DVC recorded for the dataset (``dvc.lock``), or None before ingest ran through DVC."""
    import yaml

    try:
        stages = yaml.safe_load(lock.read_text())["stages"]
        return next(o["md5"] for o in stages["ingest"]["outs"] if o["path"] == out)
    except (OSError, KeyError, TypeError, StopIteration, yaml.YAMLError):
        return None


def run_tags(stage: str, data_version: str | None = None) -> dict[str, str]:
    tags = {"sslpipe.stage": stage, "git.commit": git_commit()}
    if data_version:
        tags["data.version"] = data_version
    if dvc_hash := dvc_data_hash():
        tags["dvc.data_md5"] = dvc_hash
    for env, tag in ((FLOW_RUN_ID_ENV, "prefect.flow_run_id"), (FLOW_RUN_URL_ENV, "prefect.flow_run_url")):
        if os.environ.get(env):
            tags[tag] = os.environ[env]
    return tags


@contextmanager
def stage_run(stage: str, params: Mapping[str, Any], data_version: str | None = None) -> Iterator[Any]:
    """An MLflow run for one stage: a child of ``$SSLPIPE_PARENT_RUN_ID`` when the pipeline flow
    runs it, else a top-level run. Logs the stage's params and the code/data tags."""
    import mlflow

    setup_mlflow()
    parent = os.environ.get(PARENT_RUN_ENV) or None
    with mlflow.start_run(run_name=stage, parent_run_id=parent, tags=run_tags(stage, data_version)) as run:
        mlflow.log_params({f"{stage}.{k}": v for k, v in flatten(params).items()})
        yield run


def stage_env(flow_run_id: str, flow_run_url: str = "", parent_run_id: str | None = None) -> dict[str, str]:
    """The environment for stages run as subprocesses (``dvc repro``): this one, the virtual
    environment's ``bin`` first on PATH (``sslpipe``, ``dvc``), and the run links above."""
    import sys

    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
           FLOW_RUN_ID_ENV: flow_run_id, FLOW_RUN_URL_ENV: flow_run_url}
    if parent_run_id:
        env[PARENT_RUN_ENV] = parent_run_id
    return env


def log_run_setup(setup: Any) -> None:
    """Log a prepared run (``tasks.run_setup.RunSetup``) to the active MLflow run: every resolved
    parameter, and the overrides as given."""
    import mlflow

    mlflow.log_params(flatten(setup.params))
    mlflow.log_dict({"params_file": setup.params_file, "overrides": setup.overrides, "smoke": setup.smoke},
                    "overrides.json")


PIPELINE_FILTER = "tags.`sslpipe.stage` = 'pipeline'"


def find_runs(client, experiment_id: str, run_ids: list[str] | None = None, last: int = 5) -> list[Any]:
    """The runs named by ``run_ids`` (a prefix of 8+ characters is enough), else the ``last``
    pipeline runs, newest first."""
    if run_ids:
        runs = []
        for rid in run_ids:
            if len(rid) == 32:
                runs.append(client.get_run(rid))
                continue
            found = [r for r in client.search_runs([experiment_id], max_results=1000) if r.info.run_id.startswith(rid)]
            if len(found) != 1:
                raise KeyError(f"run {rid!r}: {'no run' if not found else f'{len(found)} runs'} in the experiment match")
            runs.append(found[0])
        return runs
    return client.search_runs([experiment_id], filter_string=PIPELINE_FILTER, order_by=["attributes.start_time DESC"],
                              max_results=last)
