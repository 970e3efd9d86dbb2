"""The tune and pretrain stages on a real two-node Ray cluster (tests/scaleout/conftest.py): trials
placed by a custom resource run on the node that carries it, reading nothing but what the object
store brought them; pretraining on two Ray Train workers puts one on each node (one CPU each); each
stage leaves the cluster running and no process of its own behind."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path

import psutil
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


# a tiny SimCLR on two 1-CPU workers: 200 images, 6 steps of the global batch of 32, no compile
PRETRAIN_SETTINGS = ["pretrain.distributed.workers=2", "pretrain.distributed.resources_per_worker={CPU: 1}",
                     "pretrain.distributed.max_failures=0", "pretrain.width=4", "pretrain.epochs=1",
                     "pretrain.batch_size=32", "pretrain.compile=false", "pretrain.knn_monitor_images=0",
                     "pretrain.precision=fp32", "pretrain.channels_last=false", "pretrain.device=cpu",
                     "pretrain.checkpoint_every=1000", "pretrain.method_args={simclr: {hidden_dim: 32, out_dim: 16}}"]


def run_stage(name: str, project: Path, env: dict[str, str]) -> None:
    """``sslpipe stage NAME`` in ``project``, as DVC runs it."""
    proc = subprocess.run([str(VENV_BIN / "sslpipe"), "stage", name, "--no-progress"], cwd=project, env=env,
                          capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, f"sslpipe stage {name} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"


def stage_tune(project: Path, env: dict[str, str]) -> dict:
    """``sslpipe stage tune`` in ``project``; returns reports/tune.json."""
    run_stage("tune", project, env)
    return json.loads((project / "reports" / "tune.json").read_text())


def train_processes(cluster) -> list[str]:
    """The cluster's processes that belong to a Ray Train run (its controller and workers), once
    Ray has reaped the actors of a driver that ended (it does so asynchronously; wait up to 60 s)."""
    deadline = time.monotonic() + 60
    while True:
        found = []
        for p in cluster.processes():
            try:
                cmd = " ".join(p.cmdline())
            except psutil.Error:  # gone meanwhile
                continue
            if "RayTrainWorker" in cmd or "TrainController" in cmd:
                found.append(cmd[:200])
        if not found or time.monotonic() > deadline:
            return found
        time.sleep(0.5)


@pytest.mark.e2e
def test_pretrain_runs_one_worker_on_each_node(ray_cluster, pretrained_template: Path, tmp_path: Path) -> None:
    """``sslpipe stage pretrain`` with 2 Ray Train workers of one CPU each on the cluster (one CPU a
    node): one worker runs on each node -- the report says which -- they train to the end, the
    driver writes the encoder, and the run leaves no Train process and both nodes running."""
    from tasks.models import load_encoder

    storage = tmp_path / "ray-train"  # both nodes see this machine's disk
    project = tune_project(tmp_path / "project", pretrained_template,
                           [*PRETRAIN_SETTINGS, f"pretrain.distributed.storage_path={storage}"])
    (project / "models" / "encoder.pt").unlink()  # the template's, from one process
    run_stage("pretrain", project, ray_cluster.driver_env(OMP_NUM_THREADS="1"))

    summary = json.loads((project / "reports" / "pretrain.json").read_text())["summary"]
    assert sorted(summary["worker_nodes"]) == sorted(ray_cluster.node_ids.values())  # one worker on each node
    assert (summary["steps"], summary["epochs"], summary["resumed_from_step"]) == (6, 1, 0)
    _, encoder = load_encoder(project / "models" / "encoder.pt")  # written by the driver, as tune/finetune read it
    assert encoder["method"] == "simclr" and len(encoder["history"]) == 1
    assert list((storage / "pretrain").glob("checkpoint_*/pretrain.pt"))  # rank 0's, in the storage named
    assert not train_processes(ray_cluster)
    raylets = [p for p in ray_cluster.processes() if p.name() == "raylet"]
    assert len(raylets) == 2, [p.cmdline()[:1] for p in ray_cluster.processes()]


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
    assert len(list((storage / "tune").glob("*/result.json"))) == 2  # written by the driver
    # the stage disconnected from the cluster without stopping it: both raylets still run
    raylets = [p for p in ray_cluster.processes() if p.name() == "raylet"]
    assert len(raylets) == 2, [p.cmdline()[:1] for p in ray_cluster.processes()]

    monkeypatch.chdir(project)  # the same trials here, on one thread as a trial is
    params = load_params(project / "params.yaml")
    data = trial_data(params.tune, params.finetune)
    for t in trials:
        history, _ = train_trial({"arm": t["arm"], **{k: t[k] for k in TUNED_KEYS}}, data)
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
