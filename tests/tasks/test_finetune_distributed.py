"""Fine-tuning on Ray Train workers (tasks/distributed_finetune.py), with real processes: two
workers train a supervised arm to the end, and their first step's loss is the one process's loss on
the same global batch (each worker crops the whole batch as one process does, steps on its half,
BatchNorm synchronised)."""

from __future__ import annotations

import copy
import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from tasks.config import DistributedParams, FinetuneParams

WORKERS = 2
TUNED = {"lr": 1e-3, "weight_decay": 1e-4, "epochs": 2, "encoder_lr_scale": 1.0}


def labeled(root: Path, arm: str) -> tuple:
    """32 labeled train images (one global batch: an epoch is one step), 40 validation ones, a
    fresh ``arm`` classifier on the project's encoder, and its config (fp32 on the CPU)."""
    from ssl_models import checkpoint
    from tasks.arms import arm_config, new_classifier
    from tasks.dataset import load_dataset

    data = load_dataset()
    idx = data.labeled_subset(1.0, 0)
    (x, y), val = data.take(idx[:32]), data.take(idx[32:72])
    model = new_classifier(arm, checkpoint.load(root / "models" / "encoder.pt"), data.num_classes, seed=0)
    cfg = arm_config(arm, TUNED, FinetuneParams(), batch_size=32, min_steps=0, seed=0)
    return model, x, y, val, replace(cfg, precision="fp32", device="cpu")


@pytest.mark.e2e  # real processes: a local Ray and Ray Train workers
@pytest.mark.xdist_group("ray_train")
def test_two_workers_train_an_arm_as_one_process_does(local_ray, pretrained_template: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """The supervised arm, 2 epochs of one step on 2 workers: it trains to the end, the driver's
    model gets the trained weights, and step 1's loss is one process's on the same global batch."""
    from ssl_models.classifier import train_classifier
    from tasks.distributed_finetune import train_classifier_on_workers

    monkeypatch.chdir(pretrained_template)  # read only
    model, x, y, val, cfg = labeled(pretrained_template, "supervised")
    single = copy.deepcopy(model)  # the same initial weights, for one process
    history = train_classifier_on_workers(model, x, y, cfg, DistributedParams(workers=WORKERS, storage_path=str(tmp_path)),
                                          val=val, name="finetune-supervised")
    assert [h["epoch"] for h in history] == [1, 2]  # to the end
    assert all(math.isfinite(h["val_top1"]) and math.isfinite(h["train_loss"]) for h in history)
    initial = single.state_dict()
    assert any(not torch.equal(v, initial[k]) for k, v in model.state_dict().items()), "no trained weights came back"

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        expected = train_classifier(single, x, y, cfg, val=val)
    finally:
        torch.set_num_threads(threads)
    assert history[0]["train_loss"] == pytest.approx(expected[0]["train_loss"], rel=1e-5)  # step 1: the global batch's


def test_the_global_batch_must_split_over_the_workers() -> None:
    with pytest.raises(ValueError, match=r"batch_size 30 does not split over 4 workers.*distributed\.workers"):
        FinetuneParams(batch_size=30, distributed={"workers": 4})


def test_only_arms_that_learn_from_labels_alone_go_to_workers() -> None:
    from tasks.finetune import on_workers

    two = DistributedParams(workers=2)
    assert [a for a in ("ssl_finetune", "ssl_fixmatch", "ssl_distill", "supervised", "fixmatch")
            if on_workers(a, two)] == ["ssl_finetune", "supervised"]
    assert not on_workers("supervised", DistributedParams(workers=1))
