"""Pretraining on Ray Train workers (tasks/distributed.py) and its faults, with real processes: two
workers run the engine's loop to the end and the stage writes the encoder; the first step's loss is
the global batch's, as one process computes it on the same views; a worker killed mid-run (SIGKILL)
is restarted from the last checkpoint and the run ends at the same step, with the same weights, as
an uninterrupted one; a killed single-process ``sslpipe stage pretrain`` resumes where it stopped."""

from __future__ import annotations

import functools
import os
import shutil
import signal
import subprocess
import threading
import time
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import psutil
import pytest
import torch
import yaml

from ssl_models import checkpoint
from ssl_models.engine import _epoch_order, shard, view_seed
from tasks import paths
from tasks.config import DistributedParams, ValidateParams
from tasks.io import read_json
from tests.conftest import REPO, VENV_BIN, subprocess_env
from tests.tasks.conftest import ingest_params, tiny_pretrain_params

WORKERS = 2


def params(**kw):
    """Tiny SimCLR (small_cnn width 8): 200 images, 6 steps an epoch of the global batch of 32."""
    return tiny_pretrain_params(width=8, compile=False, epochs=3, checkpoint_every=1000,
                                distributed=DistributedParams(workers=WORKERS), **kw)


@pytest.fixture(scope="module")
def stage_run(local_ray, fashion_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """The pretrain stage on two workers, uninterrupted, in a project of its own."""
    from tasks.dataset import load_dataset
    from tasks.ingest import ingest
    from tasks.pretrain import pretrain
    from tasks.validate import validate

    root = tmp_path_factory.mktemp("distributed")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        ingest(ingest_params(fashion_dir))
        validate(ValidateParams())
        result = pretrain(params(), progress=False, log_mlflow=False)
        images = load_dataset().split("train")[0]
    return SimpleNamespace(root=root, result=result, images=images,
                           encoder=checkpoint.load(root / paths.ENCODER))


def train_workers() -> list[psutil.Process]:
    """This test's Ray Train workers: processes under this one (Ray started here) named after them."""
    found = []
    for p in psutil.Process().children(recursive=True):
        try:
            if "RayTrainWorker" in " ".join(p.cmdline()):
                found.append(p)
        except psutil.Error:
            continue
    return found


def kill_a_worker_after_first_checkpoint(run_dir: Path, killed: list[int], stop: threading.Event) -> None:
    """Wait until Ray Train has registered a checkpoint of the run, then SIGKILL one worker."""
    snapshot = run_dir / "checkpoint_manager_snapshot.json"
    while not stop.is_set():
        if snapshot.exists() and (workers := train_workers()):
            os.kill(workers[-1].pid, signal.SIGKILL)
            killed.append(workers[-1].pid)
            return
        time.sleep(0.02)


@pytest.fixture(scope="module")
def killed_run(stage_run, tmp_path_factory: pytest.TempPathFactory):
    """The same training on two workers through the glue, one worker killed after the first
    checkpoint; every step's loss logged."""
    from tasks.distributed import train_on_workers
    from tasks.pretrain import _worker_method, train_config

    storage = tmp_path_factory.mktemp("storage")
    cfg = replace(train_config(params()), log_every=1)
    killed: list[int] = []
    stop = threading.Event()
    killer = threading.Thread(target=kill_a_worker_after_first_checkpoint, args=(storage / "killed", killed, stop))
    killer.start()
    try:
        run = train_on_workers(functools.partial(_worker_method, params()), stage_run.images, cfg,
                               DistributedParams(workers=WORKERS, storage_path=str(storage), max_failures=2),
                               name="killed", progress=False)
    finally:
        stop.set()
        killer.join()
    return SimpleNamespace(run=run, killed=killed, cfg=cfg)


@pytest.mark.e2e  # real processes: a local Ray and Ray Train workers
@pytest.mark.xdist_group("ray_train")  # one worker builds the module's runs once
def test_two_workers_train_to_the_end_and_the_stage_writes_the_encoder(stage_run) -> None:
    result, root = stage_run.result, stage_run.root
    assert (result.steps, result.epochs, result.resumed_from_step) == (18, 3, 0)
    assert len(result.worker_nodes) == WORKERS and len(set(result.worker_nodes)) == 1  # a local Ray: one node
    assert read_json(root / paths.PRETRAIN_HISTORY)["summary"]["worker_nodes"] == result.worker_nodes
    assert result.knn_monitor_top1 is not None  # the monitor ran in rank 0
    history = read_json(root / paths.PRETRAIN_HISTORY)["epochs"]
    assert [h["step"] for h in history] == [6, 12, 18]
    rows = (root / paths.PLOTS / "pretrain_loss.csv").read_text().split()
    assert [r.split(",")[0] for r in rows] == ["step", "10", "18"]  # rank 0's steps, logged by the driver
    encoder = stage_run.encoder
    from tasks.models import load_encoder

    load_encoder(root / paths.ENCODER)  # what tune and finetune read
    assert encoder["method"] == "simclr" and len(encoder["history"]) == 3


@pytest.mark.e2e  # real processes: a local Ray and Ray Train workers
@pytest.mark.xdist_group("ray_train")  # one worker builds the module's runs once
def test_the_first_step_loss_is_the_global_batch_loss(stage_run, killed_run) -> None:
    """Step 1 on two workers (each its half of the batch, its own views) equals one process's loss
    on the whole batch of the same views: batch split, BatchNorm statistics and the loss's negatives
    span both workers, and the logged loss is the global one."""
    from tasks.pretrain import _worker_method

    cfg, images = killed_run.cfg, stage_run.images
    method = _worker_method(params(), images)  # the workers' initial weights
    idx = _epoch_order(images.shape[0], 0, cfg.seed)[: cfg.batch_size]
    g = torch.Generator()
    per_worker = []
    for rank in range(WORKERS):
        g.manual_seed(view_seed(cfg.seed, 0, rank))
        per_worker.append(method.views(images[shard(idx, rank, WORKERS)], g))
    views = [torch.cat([v[i] for v in per_worker]) for i in range(2)]
    with torch.no_grad():
        expected = method(views).loss.item()
    step, metrics = killed_run.run.steps[0]
    assert step == 1 and metrics["loss"] == pytest.approx(expected, rel=1e-5)


@pytest.mark.e2e  # real processes: a local Ray and Ray Train workers
@pytest.mark.xdist_group("ray_train")  # one worker builds the module's runs once
def test_a_killed_worker_restarts_from_the_last_checkpoint(stage_run, killed_run) -> None:
    run = killed_run.run
    assert killed_run.killed, "no worker was killed: the run ended before its first checkpoint was registered"
    assert run.result.steps == stage_run.result.steps == 18
    assert 0 < run.result.resumed_from_step < 18  # the last attempt resumed mid-run
    assert [step for step, _ in run.steps] == list(range(1, 19))  # every step once, across the restart
    assert [h["step"] for h in run.result.history] == [6, 12, 18]
    final = {k.removeprefix("encoder."): v for k, v in run.state_dict.items() if k.startswith("encoder.")}
    for name, value in stage_run.encoder["state_dict"].items():
        assert torch.allclose(final[name].float(), value.float(), atol=1e-6), name


# ---------------------------------------------------------------------------------- one process
@pytest.mark.e2e  # the sslpipe CLI in a process of its own, SIGKILLed
def test_a_killed_pretrain_stage_resumes(validated, project: Path) -> None:
    """SIGKILL ``sslpipe stage pretrain`` once its first checkpoint is written; run it again: it
    resumes from that checkpoint and ends at the step count of the schedule."""
    section = tiny_pretrain_params(width=8, compile=False, epochs=8, checkpoint_every=2).model_dump(mode="json")
    (project / "params.yaml").write_text(yaml.safe_dump({"pretrain": section}))
    shutil.copy(REPO / "dvc.yaml", project)  # the CLI finds the project by it
    cmd = [str(VENV_BIN / "sslpipe"), "stage", "pretrain"]
    env = subprocess_env(OMP_NUM_THREADS="1")
    proc = subprocess.Popen(cmd, cwd=project, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        while not paths.PRETRAIN_CHECKPOINT.exists() and proc.poll() is None:
            time.sleep(0.01)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == -signal.SIGKILL, err[-2000:]
    assert not paths.ENCODER.exists()
    again = subprocess.run(cmd, cwd=project, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert again.returncode == 0, again.stderr[-2000:]
    summary = read_json(paths.PRETRAIN_HISTORY)["summary"]
    assert summary["steps"] == 8 * 6 and 0 < summary["resumed_from_step"] < summary["steps"]
    assert paths.ENCODER.exists()


# ---------------------------------------------------------------------------------- params
def test_the_global_batch_must_split_over_the_workers() -> None:
    from tasks.config import PretrainParams

    with pytest.raises(ValueError, match=r"batch_size 30 does not split over 4 workers.*distributed\.workers"):
        PretrainParams(batch_size=30, distributed={"workers": 4})
    assert PretrainParams(batch_size=32, distributed={"workers": 4}).distributed.workers == 4


def test_step_records_continue_a_resumed_run_and_restart_with_a_fresh_one() -> None:
    """Rank 0's per-step log, restored from a checkpoint: a resumed run appends to it; a run that
    started afresh (the checkpoint was another config's) replaces it."""
    from tasks.distributed import _record

    steps = [[10, {"loss": 3.0}], [20, {"loss": 2.0}]]  # restored: the checkpoint at step 20
    _record(steps, 30, {"loss": 1.0})
    assert [s for s, _ in steps] == [10, 20, 30]
    _record(steps, 10, {"loss": 4.0})  # a fresh start logs step 10 again
    assert steps == [[10, {"loss": 4.0}]]
