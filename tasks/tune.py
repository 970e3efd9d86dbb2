"""Stage 4 -- tune: Ray Tune with ASHA over the fine-tuning hyperparameters, for both arms:
``finetune`` (from the SSL encoder) and ``supervised`` (the same architecture from scratch), each
with the same trial budget. Trials train on a labeled fraction and are scored on a validation
split carved from those labels -- never on the test split. Writes ``models/tune/best.json``."""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from typing import Any

import torch

from tasks import paths
from tasks.config import FinetuneParams, TuneParams
from tasks.dataset import load_dataset
from tasks.io import read_json, write_json
from tasks.models import TUNED_KEYS

ARMS = ("finetune", "supervised")


@dataclass
class TuneResult:
    best: dict[str, dict[str, Any]]
    trials: int


def _trial(config: dict[str, Any], data: dict[str, Any]) -> None:
    """One Ray Tune trial: train a classifier with ``config`` and report val top-1 each epoch."""
    from ray import tune

    from ssl_models import checkpoint
    from ssl_models.classifier import Classifier, train_classifier
    from tasks.models import build_encoder, finetune_config

    torch.set_num_threads(max(1, int(data["threads"])))
    blob = checkpoint.load(data["encoder_path"])
    encoder = build_encoder(blob["spec"])
    if config["arm"] == "finetune":
        encoder.load_state_dict(blob["state_dict"])
    model = Classifier(encoder, data["num_classes"])
    cfg = finetune_config(config, batch_size=data["batch_size"], min_steps=0, seed=data["seed"])
    train_classifier(
        model, data["x_train"], data["y_train"], cfg, val=(data["x_val"], data["y_val"]),
        on_epoch=lambda epoch, m: tune.report({"val_top1": m["val_top1"], "train_loss": m["train_loss"], "epoch": epoch}),
    )


def search_space(cfg: TuneParams, arm: str) -> dict[str, Any]:
    from ray import tune

    s = cfg.search_space
    return {
        "arm": arm,
        "lr": tune.loguniform(*s.lr),
        "weight_decay": tune.loguniform(*s.weight_decay),
        "epochs": tune.choice(s.epochs),
        # a model trained from scratch has nothing worth freezing
        "freeze_encoder": tune.choice(s.freeze_encoder) if arm == "finetune" else False,
    }


def _init_ray(cfg: TuneParams) -> None:
    import ray

    if ray.is_initialized():
        return
    address = os.environ.get("RAY_ADDRESS")
    kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
    if not address:  # a local Ray instance sized to this machine
        kwargs["num_cpus"] = max(int(cfg.cpus_per_trial * cfg.max_concurrent_trials), 1)
        kwargs["num_gpus"] = int(torch.cuda.is_available())
    ray.init(address=address or None, **kwargs)


def _trial_printer():
    """A Ray Tune callback printing one line per finished trial (Ray's own tables are too chatty
    for the Prefect log)."""
    from ray.tune import Callback

    class TrialLine(Callback):
        def on_trial_complete(self, iteration, trials, trial, **info):
            r, c = trial.last_result or {}, trial.config
            print(f"  trial {trial.trial_id} [{c['arm']}] lr={c['lr']:.2e} wd={c['weight_decay']:.1e} "
                  f"epochs={c['epochs']} frozen={c['freeze_encoder']}: val_top1={r.get('val_top1', float('nan')):.4f} "
                  f"after {r.get('training_iteration', 0)} epochs", flush=True)

        def on_trial_error(self, iteration, trials, trial, **info):
            print(f"  trial {trial.trial_id} failed: see {trial.local_path}/error.txt", flush=True)

    return TrialLine()


def tune_arm(cfg: TuneParams, arm: str, data: dict[str, Any], parent_run_id: str | None, progress: bool):
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    callbacks = [_trial_printer()] if progress else []
    if parent_run_id:
        from ray.air.integrations.mlflow import MLflowLoggerCallback

        import mlflow

        callbacks.append(MLflowLoggerCallback(
            tracking_uri=mlflow.get_tracking_uri(),
            experiment_name=mlflow.get_experiment(mlflow.active_run().info.experiment_id).name,
            tags={"mlflow.parentRunId": parent_run_id, "sslpipe.stage": "tune-trial", "sslpipe.arm": arm},
            save_artifact=False,
        ))
    trainable = tune.with_resources(
        tune.with_parameters(_trial, data=data), {"cpu": cfg.cpus_per_trial, "gpu": cfg.gpus_per_trial}
    )
    max_epochs = max(cfg.search_space.epochs)
    tuner = tune.Tuner(
        trainable,
        param_space=search_space(cfg, arm),
        tune_config=tune.TuneConfig(
            metric="val_top1", mode="max", num_samples=cfg.num_samples,
            max_concurrent_trials=cfg.max_concurrent_trials,
            scheduler=ASHAScheduler(time_attr="training_iteration", max_t=max_epochs,
                                    grace_period=min(cfg.grace_period, max_epochs), reduction_factor=cfg.reduction_factor),
        ),
        run_config=tune.RunConfig(
            name=f"tune-{arm}", storage_path=str(paths.RAY_RESULTS.resolve()), callbacks=callbacks,
            verbose=0,
        ),
    )
    return tuner.fit()


def tune_stage(cfg: TuneParams, finetune_cfg: FinetuneParams, progress: bool = True, log_mlflow: bool = True) -> TuneResult:
    """Search both arms and write the best config of each to ``models/tune/best.json``."""
    import ray

    random.seed(cfg.seed)
    data_set = load_dataset()
    labeled = data_set.labeled_subset(cfg.label_fraction, finetune_cfg.seed)
    train_idx, val_idx = data_set.stratified_split(labeled, cfg.val_fraction, cfg.seed)
    x_train, y_train = data_set.take(train_idx)
    x_val, y_val = data_set.take(val_idx)
    data = {
        "x_train": x_train, "y_train": y_train, "x_val": x_val, "y_val": y_val,
        "num_classes": data_set.num_classes, "encoder_path": str(paths.ENCODER.resolve()),
        "batch_size": cfg.batch_size, "seed": cfg.seed, "threads": cfg.cpus_per_trial,
    }
    if not paths.ENCODER.exists():
        raise FileNotFoundError(f"{paths.ENCODER}: no encoder; run `sslpipe stage pretrain` first")
    parent = None
    if log_mlflow:
        import mlflow

        parent = mlflow.active_run().info.run_id
    _init_ray(cfg)
    best, trials, table = {}, 0, []
    try:
        for arm in ARMS:
            if progress:
                print(f"tune {arm}: {cfg.num_samples} trials, at most {cfg.max_concurrent_trials} at once", flush=True)
            results = tune_arm(cfg, arm, data, parent, progress)
            errors = [r.error for r in results if r.error]
            if errors and len(errors) == len(results):
                raise RuntimeError(f"every {arm} trial failed; first error: {errors[0]}")
            top = results.get_best_result(metric="val_top1", mode="max", scope="all")
            best[arm] = {k: top.config[k] for k in TUNED_KEYS}
            best[arm]["val_top1"] = float(top.metrics_dataframe["val_top1"].max())
            trials += len(results)
            df = results.get_dataframe(filter_metric="val_top1", filter_mode="max")
            for _, row in df.iterrows():
                table.append({"arm": arm, **{k: row.get(f"config/{k}") for k in TUNED_KEYS},
                              "val_top1": float(row["val_top1"]), "epochs_run": int(row["training_iteration"])})
    finally:
        if not os.environ.get("RAY_ADDRESS"):
            ray.shutdown()
    write_json(paths.BEST_CONFIG, {**best, "label_fraction": cfg.label_fraction,
                                   "num_train": len(train_idx), "num_val": len(val_idx)})
    write_json(paths.TUNE_REPORT, {"best": best, "trials": table})
    if log_mlflow:
        import mlflow

        mlflow.log_metrics({f"tune/{arm}_best_val_top1": best[arm]["val_top1"] for arm in best})
        mlflow.log_dict({"best": best, "trials": table}, "tune/trials.json")
    return TuneResult(best, trials)


def load_best() -> dict[str, Any]:
    if not paths.BEST_CONFIG.exists():
        raise FileNotFoundError(f"{paths.BEST_CONFIG}: no tuned config; run `sslpipe stage tune` first")
    return read_json(paths.BEST_CONFIG)
