"""Pretraining on several workers: the engine's own loop (``ssl_models.engine.train``) run in every
worker of a Ray Train ``TorchTrainer`` (DDP: gloo on CPUs, NCCL on GPUs), on a local Ray instance
or the cluster at ``RAY_ADDRESS``. This module (and ``tasks.distributed_finetune``, whose classifier
loop runs through ``fit_on_workers``) is all that knows about Ray Train; the engine sees a process
group through ``ssl_models.dist`` and nothing else.

Faults: rank 0 writes each engine checkpoint (atomically) into a local directory, and hands it to
Ray Train (``ray.train.report``), which copies it to ``storage_path`` -- a directory or URI every
worker can reach. When a worker dies, Ray Train restarts the worker group (up to
``max_failures`` times) and every worker resumes from the last reported checkpoint
(``ray.train.get_checkpoint``) at its exact step. A killed driver resumes the same way when the
stage is run again: Ray Train finds the run's checkpoints under ``storage_path``/``name``.

Everything a worker reads comes through Ray (images that fit in memory through the object store,
the rest in the pickled loop config). The one exception is a pool too large for memory
(``ShardedImages``, streamed from the dataset's shard files): workers read those files at their
absolute paths, so on a cluster every node must see them there (a shared filesystem).
"""

from __future__ import annotations

import functools
import json
import shutil
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

import torch

from ssl_models import checkpoint, dist
from ssl_models.data.shards import ShardedImages
from ssl_models.engine import EpochCallback, TrainConfig, TrainResult, train
from ssl_models.methods.base import SSLMethod
from tasks import paths
from tasks.config import DistributedParams
from tasks.io import write_json
from tasks.ray_runtime import init_ray, on_cluster

CHECKPOINT_FILE = "pretrain.pt"  # the engine's checkpoint, inside each reported checkpoint directory
STEPS_FILE = "steps.json"  # rank 0's per-step metrics up to the checkpoint's step
SUMMARY_KEYS = ("steps", "epochs", "images_per_sec", "wall_seconds", "resumed_from_step")

T = TypeVar("T")

#: builds the method in a worker from the training images (the same seed, so the same weights, in each)
MethodBuilder = Callable[[torch.Tensor], SSLMethod]


@dataclass
class DistributedRun:
    """What a run on workers gives back to the driver.

    Attributes:
        result: the engine's result, as rank 0 saw it in the last attempt (after a restart its
            ``resumed_from_step`` is the step it restarted from).
        state_dict: the method's final weights.
        steps: rank 0's ``on_step`` records ``(step, metrics)``, from the first step of the run.
        worker_nodes: the Ray node id each worker ran on, by rank (in the last attempt).
    """

    result: TrainResult
    state_dict: dict[str, torch.Tensor]
    steps: list[tuple[int, dict[str, float]]]
    worker_nodes: list[str]


def storage_path(cfg: DistributedParams) -> str:
    """Where checkpoints go: ``cfg.storage_path`` (a directory or URI), else ``.sslpipe/ray`` (absolute:
    Ray Train resolves relative paths against its own directory, not the project's)."""
    return cfg.storage_path or str(paths.RAY_RESULTS.resolve())


def _check_placement(cfg: DistributedParams, section: str) -> None:
    """Fail fast where the run could only wait forever (more GPUs asked of a local Ray than this
    machine has), and warn where checkpoints would land on one machine's disk on a cluster."""
    cluster = on_cluster()
    if cfg.use_gpu and not cluster and torch.cuda.device_count() < cfg.workers:
        raise ValueError(f"{section}.distributed: {cfg.workers} GPU workers on a local Ray, but this machine has "
                         f"{torch.cuda.device_count()} GPU(s): lower {section}.distributed.workers, set use_gpu: false, "
                         f"or set RAY_ADDRESS to a cluster with enough GPUs")
    if cluster and cfg.storage_path is None:
        warnings.warn(f"{section}.distributed.storage_path is null: checkpoints go to {storage_path(cfg)} on the machine "
                      f"rank 0 runs on; on a cluster of several machines set it to a shared directory or a URI "
                      f"(s3://...) so that a restarted worker and this driver can read them", stacklevel=3)


def _network_hint(error: str) -> str:
    """What to do when the workers' process group could not connect: gloo binds the address this
    host's name resolves to, which is loopback where /etc/hosts maps the hostname to 127.0.x.x."""
    if "Gloo" not in error and "gloo" not in error:
        return ""
    return ("\nThe workers could not connect to each other (gloo). Where a node's hostname resolves to a loopback "
            "address, set GLOO_SOCKET_IFNAME to the interface of the node's own address (e.g. eth0) in the "
            "environment of `ray start` on every node, then start the nodes again")


def _threads(cfg: DistributedParams) -> int:
    return max(1, int(cfg.resources_per_worker.get("CPU", 1)))


def _ship(images: torch.Tensor | ShardedImages) -> Any:
    """What travels to the workers for ``images``: a tensor's array through the object store
    (zero-copy for workers on the same node), or a shard-streamed pool as it is (its reader pickles
    to the shard files' absolute paths)."""
    import ray

    if isinstance(images, torch.Tensor):
        return ray.put(images.numpy())
    if on_cluster():
        warnings.warn("the training images are streamed from the dataset's shard files on this machine: every node "
                      "of the cluster must see them at the same absolute paths (a shared filesystem), or raise "
                      "ingest.in_memory_max_mb so that they travel through Ray's object store", stacklevel=3)
    return images


def _receive(shipped: Any) -> torch.Tensor | ShardedImages:
    """The worker's side of ``_ship``."""
    import ray

    return torch.from_numpy(ray.get(shipped)) if isinstance(shipped, ray.ObjectRef) else shipped


def _restore(local: Path) -> list[list[Any]]:
    """Copy the last reported checkpoint (if any) into ``local``, where the engine resumes from it;
    return its per-step records."""
    import ray.train

    restored = ray.train.get_checkpoint()
    if restored is None:
        return []
    with restored.as_directory() as d:
        shutil.copy(Path(d) / CHECKPOINT_FILE, local / CHECKPOINT_FILE)
        steps = Path(d) / STEPS_FILE
        return json.loads(steps.read_text()) if steps.exists() else []


def _record(steps: list[list[Any]], step: int, metrics: dict[str, float]) -> None:
    """Append rank 0's ``on_step`` record; records at or after ``step`` are another start's (a
    checkpoint of another config, which the engine did not resume) and are dropped first."""
    while steps and steps[-1][0] >= step:
        steps.pop()
    steps.append([step, metrics])


def _worker_nodes() -> list[str]:
    """The Ray node id of every worker, by rank: each worker's own, all-gathered over the process
    group (so rank 0 can report where the run ran)."""
    import ray

    node = ray.get_runtime_context().get_node_id()
    if not dist.is_distributed():
        return [node]
    nodes: list[Any] = [None] * dist.world_size()
    torch.distributed.all_gather_object(nodes, node)
    return nodes


def _worker_loop(config: dict[str, Any]) -> None:
    """One worker: build the method, restore the last checkpoint, run the engine; rank 0 hands every
    checkpoint to Ray Train, and at the end one with the run's summary as its metrics."""
    import ray.train
    from ray.train import Checkpoint

    torch.set_num_threads(config["threads"])
    cfg: TrainConfig = config["train"]
    if config["use_gpu"]:
        from ray.train.torch import get_device

        torch.cuda.set_device(get_device())
        cfg = replace(cfg, device="cuda")  # the current device: this worker's GPU
    images = _receive(config["images"])
    method = config["build"](images)
    main = ray.train.get_context().get_world_rank() == 0
    nodes = _worker_nodes()
    local = Path(tempfile.mkdtemp(prefix="sslpipe-pretrain-"))
    try:
        steps = _restore(local)

        def report(metrics: dict[str, Any]) -> None:
            """Every worker reports (it is a barrier); rank 0's directory is the checkpoint."""
            if main:
                write_json(local / STEPS_FILE, steps)
            ray.train.report(metrics, checkpoint=Checkpoint.from_directory(str(local)) if main else None)

        result = train(method, images, cfg, local / CHECKPOINT_FILE,
                       on_step=functools.partial(_record, steps) if main else None,
                       on_epoch=config["on_epoch"] if main else None, progress=False,
                       on_checkpoint=lambda step: report({"step": step}))
        report({"step": result.steps, **{k: getattr(result, k) for k in SUMMARY_KEYS}, "worker_nodes": nodes})
    finally:
        shutil.rmtree(local, ignore_errors=True)


def fit_on_workers(loop: Callable[[dict[str, Any]], None], loop_config: Callable[[], dict[str, Any]],
                   dist_cfg: DistributedParams,
                   *, section: str, name: str, read: Callable[[Path], T]) -> tuple[dict[str, Any], T]:
    """Run ``loop`` on ``dist_cfg.workers`` Ray Train workers (a ``TorchTrainer``: the process group
    is up when ``loop`` starts) on a local Ray or the cluster at ``RAY_ADDRESS``, and read rank 0's
    last reported checkpoint.

    Args:
        loop: the worker's function; its config is what ``loop_config()`` returns (called once Ray
            is up, so it may put objects in the store) plus ``threads`` (its torch threads) and
            ``use_gpu``.
        section: the params section (``pretrain``, ``finetune``), named in errors.
        name: the run's name under the storage path.
        read: reads the checkpoint directory (on the driver, before Ray stops).

    Returns:
        Rank 0's last reported metrics and what ``read`` returned.

    Raises:
        RuntimeError: the workers failed more than ``dist_cfg.max_failures`` times.
    """
    import ray
    from ray.train import (
        CheckpointConfig,
        FailureConfig,
        RunConfig,
        ScalingConfig,
        TrainingFailedError,
    )
    from ray.train.torch import TorchTrainer

    storage = storage_path(dist_cfg)
    gpus = dist_cfg.workers if dist_cfg.use_gpu else 0
    _check_placement(dist_cfg, section)
    started = init_ray(dist_cfg.workers * float(dist_cfg.resources_per_worker.get("CPU", 1)), gpus)
    try:
        trainer = TorchTrainer(
            loop,
            train_loop_config={**loop_config(), "threads": _threads(dist_cfg), "use_gpu": dist_cfg.use_gpu},
            scaling_config=ScalingConfig(num_workers=dist_cfg.workers, use_gpu=dist_cfg.use_gpu,
                                         resources_per_worker=dict(dist_cfg.resources_per_worker)),
            run_config=RunConfig(name=name, storage_path=storage,
                                 failure_config=FailureConfig(max_failures=dist_cfg.max_failures),
                                 checkpoint_config=CheckpointConfig(num_to_keep=2)),
        )
        try:
            result = trainer.fit()
        except TrainingFailedError as e:
            raise RuntimeError(f"{section} on {dist_cfg.workers} workers failed after {dist_cfg.max_failures} "
                               f"restarts: {e}\nThe last checkpoint is in {storage}/{name}: run the stage again "
                               f"to resume from it{_network_hint(str(e))}") from e
        with result.checkpoint.as_directory() as d:
            return result.metrics, read(Path(d))
    finally:
        if started:
            ray.shutdown()


def train_on_workers(
    build: MethodBuilder,
    images: torch.Tensor | ShardedImages,
    cfg: TrainConfig,
    dist_cfg: DistributedParams,
    *,
    name: str = "pretrain",
    on_epoch: EpochCallback | None = None,
    progress: bool = True,
) -> DistributedRun:
    """Run ``engine.train`` on ``dist_cfg.workers`` Ray Train workers (even one: the distributed path
    itself, which the pretrain stage takes from two workers on).

    Args:
        build: makes the method in each worker (picklable: it travels to the workers).
        images: (N, C, H, W) uint8: a tensor (shipped once through Ray's object store) or a
            shard-streamed pool (``ShardedImages``, read by the workers from its files).
        cfg: the engine's config; ``batch_size`` is the global batch.
        dist_cfg: workers, resources, storage and restarts.
        name: the run's name under the storage path (a rerun with the same name resumes it).
        on_epoch: the engine's epoch callback, called in rank 0 (picklable).
        progress: print where the run goes and how it ended.

    Returns:
        The summary, final weights and per-step metrics of rank 0.

    Raises:
        RuntimeError: the workers failed more than ``dist_cfg.max_failures`` times; the message names
            the storage holding the last checkpoint, from which a rerun resumes.
    """
    if progress:
        print(f"pretrain on {dist_cfg.workers} Ray Train workers ({'GPU' if dist_cfg.use_gpu else 'CPU'}), "
              f"batch {cfg.batch_size // dist_cfg.workers} each; checkpoints in {storage_path(dist_cfg)}/{name}",
              flush=True)

    def read(d: Path) -> tuple[dict[str, Any], list[tuple[int, dict[str, float]]]]:
        steps = [(int(s), m) for s, m in json.loads((d / STEPS_FILE).read_text())]
        return checkpoint.load(d / CHECKPOINT_FILE), steps

    metrics, (state, steps) = fit_on_workers(
        _worker_loop, lambda: {"train": cfg, "build": build, "on_epoch": on_epoch, "images": _ship(images)}, dist_cfg,
        section="pretrain", name=name, read=read)
    summary = {k: metrics[k] for k in SUMMARY_KEYS}
    train_result = TrainResult(**summary, history=list(state["history"]))
    nodes = list(metrics["worker_nodes"])
    if progress:
        print(f"pretrain: {train_result.steps} steps on {dist_cfg.workers} workers "
              f"({len(set(nodes))} Ray node(s)), {train_result.images_per_sec:.0f} images/s", flush=True)
    return DistributedRun(train_result, state["method"], steps, nodes)

