"""Fine-tuning on several workers: a classifier arm's supervised training
(``ssl_models.classifier.train_classifier``) run in every worker of a Ray Train ``TorchTrainer``
(``tasks.distributed.fit_on_workers``: DDP, gloo on CPUs, NCCL on GPUs), on a local Ray or the
cluster at ``RAY_ADDRESS``. Each worker draws the same order and crops as one process and steps
on its slice of the global batch, so N workers train as one process does; rank 0 hands the final
weights back, and the driver writes the classifier as a single-process run does.

Arms learning from the labels alone (``ssl_finetune``, ``supervised``) take this path. The
FixMatch and distillation arms (``fixmatch``, ``ssl_fixmatch``, ``ssl_distill``) stay in one
process: their unlabeled batches and teacher are not sharded here. A fine-tuning run is short and
saves no checkpoint on the way: a worker that dies restarts the run from its start (up to
``max_failures`` times).
"""

from __future__ import annotations

import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ssl_models import checkpoint
from ssl_models.classifier import Classifier, FinetuneConfig, train_classifier
from tasks.config import DistributedParams
from tasks.distributed import fit_on_workers

STATE_FILE = "classifier.pt"  # rank 0's final weights and history, in the reported checkpoint


def _classifier_loop(config: dict[str, Any]) -> None:
    """One worker: train its copy of the classifier (the process group is up, so the training is
    DDP's); rank 0 reports the final weights and the history as the run's checkpoint."""
    import ray
    import ray.train
    from ray.train import Checkpoint

    torch.set_num_threads(config["threads"])
    cfg: FinetuneConfig = config["train"]
    if config["use_gpu"]:
        from ray.train.torch import get_device

        torch.cuda.set_device(get_device())
        cfg = replace(cfg, device="cuda")
    data = ray.get(config["data"])
    model: Classifier = data["model"]
    history = train_classifier(model, data["x"], data["y"], cfg, val=data["val"])
    if ray.train.get_context().get_world_rank() != 0:
        ray.train.report({"epochs": len(history)})  # every worker reports: it is a barrier
        return
    with tempfile.TemporaryDirectory(prefix="sslpipe-finetune-") as d:
        state = {k: v.cpu() for k, v in model.state_dict().items()}
        checkpoint.save_atomic({"state_dict": state, "history": history}, Path(d) / STATE_FILE)
        ray.train.report({"epochs": len(history)}, checkpoint=Checkpoint.from_directory(d))


def train_classifier_on_workers(model: Classifier, x: Tensor, y: Tensor, cfg: FinetuneConfig,
                                dist_cfg: DistributedParams, *, val: tuple[Tensor, Tensor] | None = None,
                                name: str = "finetune") -> list[dict[str, float]]:
    """``train_classifier`` on ``dist_cfg.workers`` Ray Train workers; ``model`` gets the final weights.

    Args:
        model: the classifier to train (it travels to the workers through Ray's object store, with
            the images, so other machines need no file of this one).
        x, y: labeled uint8 images (N, C, H, W) and labels (N,).
        cfg: the training config; ``batch_size`` is the global batch, split over the workers.
        dist_cfg: ``finetune.distributed``.
        val: optional (images, labels) scored after every epoch (``val_top1``).
        name: the run's name under the storage path.

    Returns:
        Rank 0's per-epoch history (the train loss is the global batch's).
    """
    import ray

    def read(d: Path) -> dict[str, Any]:
        return checkpoint.load(d / STATE_FILE)

    blob = {"model": model.cpu(), "x": x, "y": y, "val": val}
    _, state = fit_on_workers(_classifier_loop, lambda: {"train": cfg, "data": ray.put(blob)}, dist_cfg,
                              section="finetune", name=name, read=read)
    model.load_state_dict(state["state_dict"])
    return list(state["history"])
