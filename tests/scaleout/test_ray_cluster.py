"""The tune stage on a real two-node Ray cluster (tests/scaleout/conftest.py): trials placed by a
custom resource run on the node that carries it, reading nothing but what the object store
brought them, and the stage leaves the cluster running."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import REPO, VENV_BIN

# a tiny search: one arm, 2 trials of 1 epoch on 100 labels
TUNE_SETTINGS = ["tune.label_fraction=0.5", "tune.num_samples=2", "tune.epochs=[1]", "tune.batch_size=16",
                 "tune.max_concurrent_trials=2", "finetune.arms=[ssl_finetune]", "finetune.batch_size=16"]


def tune_project(root: Path, template: Path, settings: list[str]) -> Path:
    """A pretrained project (data, encoder) with the repo's params.yaml plus ``settings``."""
    from tasks.run_setup import write_params_yaml

    shutil.copytree(template, root, ignore=shutil.ignore_patterns("mlflow.db", "mlruns", ".sslpipe"))
    shutil.copy2(REPO / "dvc.yaml", root / "dvc.yaml")
    write_params_yaml(REPO / "params.yaml", settings, target=root / "params.yaml")
    return root


def stage_tune(project: Path, env: dict[str, str]) -> dict:
    """``sslpipe stage tune`` in ``project``; returns reports/tune.json."""
    proc = subprocess.run([str(VENV_BIN / "sslpipe"), "stage", "tune", "--no-progress"], cwd=project, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"sslpipe stage tune failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return json.loads((project / "reports" / "tune.json").read_text())


@pytest.mark.e2e
def test_trials_run_on_the_node_their_resources_name(ray_cluster, pretrained_template: Path, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """2 trials asking for ``node2`` run there (not on the head), compute to the last digit what
    the same trials compute here without Ray, Tune's results land in ``tune.storage_path`` (a
    path of the driver's), and the stage leaves the cluster running."""
    from tasks.arms import TUNED_KEYS
    from tasks.config import load_params
    from tasks.tune import train_trial, trial_data

    storage = tmp_path / "ray-results"
    project = tune_project(tmp_path / "project", pretrained_template,
                           [*TUNE_SETTINGS, "tune.resources_per_trial={node2: 1}", f"tune.storage_path={storage}"])
    report = stage_tune(project, ray_cluster.driver_env())

    trials = report["trials"]
    assert len(trials) == 2
    assert {t["node_id"] for t in trials} == {ray_cluster.node_ids["node2"]} != {ray_cluster.node_ids["head"]}
    assert len({t["lr"] for t in trials}) == 2  # two real trials, each its own config
    assert len(list((storage / "tune-ssl_finetune").glob("*/result.json"))) == 2  # written by the driver
    # the stage disconnected from the cluster without stopping it: both raylets still run
    raylets = [p for p in ray_cluster.processes() if p.name() == "raylet"]
    assert len(raylets) == 2, [p.cmdline()[:1] for p in ray_cluster.processes()]

    monkeypatch.chdir(project)  # the same trials here, on one thread as a trial is
    params = load_params(project / "params.yaml")
    data = trial_data(params.tune, params.finetune)
    for t in trials:
        history = train_trial({"arm": t["arm"], **{k: t[k] for k in TUNED_KEYS}}, data)
        assert history[-1]["val_top1"] == t["val_top1"]


def test_a_placement_no_local_node_has_is_an_error(pretrained_template: Path, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Custom resources exist only on a cluster's nodes: on a local Ray, Tune would wait forever
    for one; the stage says so instead, and stops the Ray it started."""
    import ray

    from tasks.config import load_params
    from tasks.tune import tune_stage

    project = tune_project(tmp_path / "project", pretrained_template, [*TUNE_SETTINGS, "tune.resources_per_trial={node3: 1}"])
    monkeypatch.chdir(project)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    params = load_params(project / "params.yaml")
    with pytest.raises(ValueError, match=r"tune\.resources_per_trial.*node3|node3.*tune\.resources_per_trial"):
        tune_stage(params.tune, params.finetune, progress=False, log_mlflow=False)
    assert not ray.is_initialized()


def test_what_a_trial_reads_names_no_file_of_the_driver(pretrained_template: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Everything a trial reads is in memory: pickled for Ray's object store, it names no path of
    the project. A pool streamed from the project's shard files could not travel so: on a cluster,
    tune refuses it and says which setting to raise."""
    import pickle

    from tasks.config import load_params
    from tasks.io import read_json, write_json
    from tasks.tune import trial_data

    project = tune_project(tmp_path / "project", pretrained_template, TUNE_SETTINGS)
    monkeypatch.chdir(project)
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:1")  # a cluster (no connection is made here)
    params = load_params(project / "params.yaml")
    shipped = pickle.dumps(trial_data(params.tune, params.finetune))
    assert str(project).encode() not in shipped and b"data/dataset" not in shipped

    info = project / "data" / "dataset" / "info.json"
    write_json(info, {**read_json(info), "in_memory_max_mb": 0})  # the pool is now streamed from shards
    with pytest.raises(ValueError, match="ingest.in_memory_max_mb"):
        trial_data(params.tune, params.finetune)
