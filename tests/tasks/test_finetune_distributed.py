"""Fine-tuning on Ray Train workers (tasks/distributed_finetune.py), with real processes: two
workers train a supervised arm to the end, and their first step's loss is the one process's loss on
the same global batch (each worker crops the whole batch as one process does, steps on its half,
BatchNorm synchronised); the finetune stage sends the fractions with enough labels there."""

from __future__ import annotations

import copy
import json
import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from tasks.config import DistributedParams, FinetuneDistributedParams, FinetuneParams

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


def test_only_arms_that_learn_from_labels_alone_and_large_fractions_go_to_workers() -> None:
    from tasks.finetune import on_workers

    two = FinetuneDistributedParams(workers=2, min_labels=100)
    assert [a for a in ("ssl_finetune", "ssl_fixmatch", "ssl_distill", "supervised", "fixmatch")
            if on_workers(a, two, 100)] == ["ssl_finetune", "supervised"]
    assert not on_workers("supervised", two, 99)
    assert not on_workers("supervised", FinetuneDistributedParams(workers=1, min_labels=0), 10**6)


@pytest.mark.e2e  # real processes: a local Ray and Ray Train workers
@pytest.mark.xdist_group("ray_train")
def test_the_stage_sends_large_fractions_to_the_workers(local_ray, pretrained: Path) -> None:
    """``finetune`` with 2 workers and ``min_labels`` between the two fractions' label counts:
    the supervised arm trains on the workers at the large fraction only, FixMatch always in this
    process; the report says where each ran and every classifier is written."""
    from tasks import paths
    from tasks.finetune import finetune
    from tasks.models import load_classifier
    from tests.tasks.test_stages import BEST, finetune_params

    paths.BEST_CONFIG.parent.mkdir(parents=True)
    paths.BEST_CONFIG.write_text(json.dumps(BEST))
    cfg = finetune_params(arms=["supervised", "fixmatch"],
                          distributed={"workers": WORKERS, "min_labels": 50, "storage_path": str(pretrained / "ray")})
    report = finetune(cfg, progress=False, log_mlflow=False).fractions
    assert {f: report[f]["num_train"] for f in report} == {"0.1": 10, "0.5": 80}
    assert {f: {a: row["workers"] for a, row in report[f]["arms"].items()} for f in report} == \
        {"0.1": {"supervised": 1, "fixmatch": 1}, "0.5": {"supervised": WORKERS, "fixmatch": 1}}
    for fraction in (0.1, 0.5):
        for arm in ("supervised", "fixmatch"):
            _, blob = load_classifier(paths.classifier_path(arm, fraction))
            assert math.isfinite(blob["val_top1"]) and blob["val_top1"] == report[f"{fraction:g}"]["arms"][arm]["val_top1"]
