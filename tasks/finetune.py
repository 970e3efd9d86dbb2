"""Stage 5 -- finetune: for each label fraction, train every arm of ``finetune.arms`` (``tasks/arms.py``:
the SSL encoder fine-tuned, with FixMatch, distilled; the supervised and FixMatch baselines from
scratch) with its tuned config, on the same labels and with the same budget. A stratified
``finetune.val_fraction`` of each fraction's labels is held out: every arm is scored on it, and
that score -- never the test split -- chooses the model that ships. Where tune's best trial of an
arm trained exactly what finetune would (the same ``tasks.arms.recipe``: labels, config, steps,
initial weights, teacher -- at ``tune.label_fraction`` with the same seeds), its model is taken
instead of training it again. Writes ``models/classifiers/``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ssl_models import checkpoint
from ssl_models.classifier import Classifier, accuracy
from tasks import paths
from tasks.arms import ARMS, TUNED_KEYS, arm_config, new_classifier, recipe, train_arm
from tasks.config import FinetuneDistributedParams, FinetuneParams
from tasks.dataset import load_dataset
from tasks.io import write_json
from tasks.models import save_classifier
from tasks.tune import load_best


@dataclass
class FinetuneResult:
    fractions: dict[str, dict[str, Any]]


def finetune(cfg: FinetuneParams, progress: bool = True, log_mlflow: bool = True) -> FinetuneResult:
    data = load_dataset()
    best = load_best()
    missing = [arm for arm in cfg.arms if arm not in best]
    if missing:
        raise FileNotFoundError(f"{paths.BEST_CONFIG}: no tuned config for {', '.join(missing)}; run `sslpipe stage tune`")
    blob = checkpoint.load(paths.ENCODER)
    tuned = checkpoint.load(paths.TUNED_MODELS)["arms"] if paths.TUNED_MODELS.exists() else {}
    pool, _ = data.split("train")
    report: dict[str, dict[str, Any]] = {}
    if progress and cfg.distributed.workers > 1:
        alone = [arm for arm in cfg.arms if not shardable(arm)]
        print(f"finetune on {cfg.distributed.workers} Ray Train workers at fractions with "
              f">= {cfg.distributed.min_labels} training labels: {', '.join(a for a in cfg.arms if a not in alone)}"
              + (f"; in one process: {', '.join(alone)} (FixMatch and distillation are not sharded)" if alone else ""),
              flush=True)
    for fraction in cfg.label_fractions:
        train_idx, val_idx = data.stratified_split(data.labeled_subset(fraction, cfg.seed), cfg.val_fraction, cfg.seed)
        (x, y), val = data.take(train_idx), data.take(val_idx)
        entry: dict[str, Any] = {"num_labels": len(train_idx) + len(val_idx), "num_train": len(train_idx),
                                 "num_val": len(val_idx), "arms": {}}
        trained: dict[str, Classifier] = {}
        for arm in cfg.arms:  # teachers first
            hp = {k: best[arm][k] for k in TUNED_KEYS}
            model = new_classifier(arm, blob, data.num_classes, cfg.seed)
            train_cfg = arm_config(arm, hp, cfg, batch_size=cfg.batch_size, min_steps=cfg.min_steps, seed=cfg.seed)
            workers = cfg.distributed.workers if on_workers(arm, cfg.distributed, len(train_idx)) else 1
            teacher = trained.get(ARMS[arm].teacher or "")
            kept = tuned.get(arm)
            if kept and kept["recipe"] == recipe(arm, train_cfg, model, x, y, data.version, teacher):
                model.load_state_dict(kept["state_dict"])  # tune trained this very recipe: no need to again
                history = [{"epoch": i + 1, "train_loss": loss} for i, loss in enumerate(kept["train_loss"])]
                workers, source = 0, f"tune trial #{kept['draw']}"
            else:
                history = _train(arm, model, x, y, pool, train_cfg, cfg, teacher, f"{fraction:g}", workers)
                source = "trained here"
            val_top1 = accuracy(model, *val) if len(val_idx) else float("nan")
            trained[arm] = model.cpu().to(memory_format=torch.contiguous_format).eval()
            save_classifier(trained[arm], blob["spec"], data.num_classes, paths.classifier_path(arm, fraction),
                            {"arm": arm, "fraction": fraction, "config": hp, "val_top1": val_top1,
                             "num_val": len(val_idx), "data_version": data.version})
            entry["arms"][arm] = {"epochs": len(history), "final_train_loss": history[-1]["train_loss"],
                                  "val_top1": val_top1, "workers": workers, "model": source, **hp}
            if progress:
                print(f"  {arm:<13} {fraction:>5g} ({len(train_idx)} labels, {len(val_idx)} for validation): "
                      f"{source}, {len(history)} epochs, train loss {history[-1]['train_loss']:.3f}, val top-1 {val_top1:.4f}")
            if log_mlflow:
                import mlflow

                for h in history:
                    mlflow.log_metric(f"finetune/{arm}_{fraction:g}/train_loss", h["train_loss"], step=h["epoch"])
                mlflow.log_metric(f"finetune/{arm}_{fraction:g}/val_top1", val_top1)
        report[f"{fraction:g}"] = entry
    write_json(paths.FINETUNE_REPORT, report)
    return FinetuneResult(report)


def shardable(arm: str) -> bool:
    """Whether ``arm`` can train on Ray Train workers: it learns from the labels alone
    (FixMatch's and distillation's batches are not sharded)."""
    return ARMS[arm].method == "supervised"


def on_workers(arm: str, dist_cfg: FinetuneDistributedParams, num_train: int) -> bool:
    """Whether ``arm`` trains on Ray Train workers under ``dist_cfg`` with ``num_train`` training
    labels: more than one worker, at least ``min_labels`` labels, and a ``shardable`` arm."""
    return dist_cfg.workers > 1 and num_train >= dist_cfg.min_labels and shardable(arm)


def _train(arm: str, model: Classifier, x: torch.Tensor, y: torch.Tensor, pool: Any, train_cfg: Any,
           cfg: FinetuneParams, teacher: Classifier | None, fraction: str, workers: int) -> list[dict[str, float]]:
    """Train one arm: on ``workers`` Ray Train workers (``tasks.distributed_finetune``) when more
    than one, else in this process."""
    if workers > 1:
        from tasks.distributed_finetune import train_classifier_on_workers

        return train_classifier_on_workers(model, x, y, train_cfg, cfg.distributed, name=f"finetune-{arm}-{fraction}")
    return train_arm(arm, model, x, y, pool, train_cfg, teacher=teacher)
