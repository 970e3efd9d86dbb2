"""Stage 4 -- tune: Ray Tune over each arm's fine-tuning hyperparameters (``tasks/arms.py``), every
arm with the same number of trials and the same epoch choices. Trials train on a labeled fraction
and are scored on a validation split carved from those labels -- never on the test split.
Writes ``models/tune/best.json``, and ``models/tune/best_models.pt``: each arm's best trial's model
with the recipe of its training (``tasks.arms.recipe``), which finetune uses where it would train
exactly that recipe again (at ``tune.label_fraction``, same seeds and steps) instead of repeating it.

Reproducible: the search is seeded (``tune.seed``: every arm's configurations come from a stream of
its own), every trial trains with that seed on one thread, and no decision depends on timing -- each
trial runs its epochs to the end (no early stopping, whose decisions would hang on which trial
reports first) and the best is the highest last-epoch validation top-1, ties to the earlier draw.
Same params and data, same configs.

Fast: the arms' trials run in one Tuner, the costliest first, so that no core idles while one arm's
last trial finishes before the next arm starts (an arm that distils runs after its teacher's arm).
"""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ssl_models import checkpoint
from ssl_models.classifier import Classifier
from tasks import paths
from tasks.arms import (
    ARMS,
    TUNED_KEYS,
    arm_config,
    new_classifier,
    recipe,
    relative_step_cost,
    train_arm,
)
from tasks.config import FinetuneParams, TuneParams
from tasks.dataset import load_dataset
from tasks.io import read_json, write_json
from tasks.models import cpu_state
from tasks.ray_runtime import init_ray, on_cluster

METRIC = "val_top1"
MODEL_FILE = "model.pt"  # in a trial's Tune checkpoint


@dataclass
class TuneResult:
    best: dict[str, dict[str, Any]]
    trials: int


def trial_setup(config: dict[str, Any], data: dict[str, Any]) -> tuple[Classifier, Any, Classifier | None]:
    """What a trial of ``config`` on ``data`` (``trial_data``) starts from: its classifier (the
    initial weights), its training config and the trained teacher of an arm that distils."""
    arm = config["arm"]
    finetune_cfg = FinetuneParams.model_validate(data["finetune"])
    model = new_classifier(arm, data["encoder"], data["num_classes"], data["seed"])
    train_cfg = arm_config(arm, config, finetune_cfg, batch_size=data["batch_size"], min_steps=0, seed=data["seed"])
    teacher = None
    if ARMS[arm].teacher:
        teacher = new_classifier(ARMS[arm].teacher, data["encoder"], data["num_classes"], data["seed"])
        teacher.load_state_dict(data["teachers"][ARMS[arm].teacher])
    return model, train_cfg, teacher


def train_trial(config: dict[str, Any], data: dict[str, Any],
                on_epoch: Callable[[int, dict[str, float]], None] | None = None) -> tuple[list[dict[str, float]], Classifier]:
    """Train ``config["arm"]`` with ``config`` on ``data`` (``trial_data``), scored on its
    validation split every epoch: what one trial runs, with or without Ray. Returns the per-epoch
    history and the trained model."""
    model, train_cfg, teacher = trial_setup(config, data)
    history = train_arm(config["arm"], model, data["x_train"], data["y_train"], data["pool"], train_cfg,
                        teacher=teacher, val=(data["x_val"], data["y_val"]), on_epoch=on_epoch)
    return history, model


def trial_recipe(config: dict[str, Any], data: dict[str, Any]) -> str:
    """``tasks.arms.recipe`` of the training a trial of ``config`` runs."""
    model, train_cfg, teacher = trial_setup(config, data)
    return recipe(config["arm"], train_cfg, model, data["x_train"], data["y_train"], data["data_version"], teacher)


def _trial(config: dict[str, Any], data: dict[str, Any]) -> None:
    """One Ray Tune trial: ``train_trial`` on one thread per CPU, reporting val top-1 each epoch and
    the id of the Ray node it ran on; the last report carries the trained model as a Tune
    checkpoint (with ``data["keep_models"]``), for finetune to use instead of training it again.
    ``data`` came through Ray's object store: a trial may run on another machine of the cluster."""
    import ray
    from ray import tune

    node_id = ray.get_runtime_context().get_node_id()
    torch.set_num_threads(max(1, int(data["threads"])))
    held: list[dict[str, Any]] = []  # each epoch's report goes out when the next comes: the last one with the model

    def report(epoch: int, m: dict[str, float]) -> None:
        if held:
            tune.report(held.pop())
        held.append({METRIC: m[METRIC], "train_loss": m["train_loss"], "epoch": epoch, "node_id": node_id})

    _, model = train_trial(config, data, on_epoch=report)
    if not data["keep_models"]:
        tune.report(held.pop())
        return
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint.save_atomic({"state_dict": cpu_state(model)}, Path(tmp) / MODEL_FILE)
        tune.report(held.pop(), checkpoint=tune.Checkpoint.from_directory(tmp))


def search_space(cfg: TuneParams, arm: str) -> dict[str, Any]:
    from ray import tune

    s = cfg.search_space[arm]
    return {
        "arm": arm,
        "lr": tune.loguniform(*s.lr),
        "weight_decay": tune.loguniform(*s.weight_decay),
        "epochs": tune.choice(cfg.epochs),
        "encoder_lr_scale": tune.choice(s.encoder_lr_scale),
    }


def storage_path(cfg: TuneParams) -> str:
    """Where Tune keeps its experiment state: ``tune.storage_path`` as given when it is a URI
    (``s3://...``), else an absolute local path (relative ones from the project root); by default
    ``.sslpipe/ray``. A driver-local path serves a cluster too: trials save no checkpoint and
    sync no artifact, and the driver writes every trial's results."""
    if cfg.storage_path is None:
        return str(paths.RAY_RESULTS.resolve())
    if "://" in cfg.storage_path:
        return cfg.storage_path
    return str(Path(cfg.storage_path).expanduser().resolve())


def trial_resources(cfg: TuneParams) -> dict[str, float]:
    """What one trial asks Ray for: its CPUs and GPUs, plus ``tune.resources_per_trial``'s
    custom resources (node labels) that place it."""
    return {"cpu": cfg.cpus_per_trial, "gpu": cfg.gpus_per_trial, **cfg.resources_per_trial}


def _check_placement(cfg: TuneParams, local: bool) -> None:
    """Say so before searching when no live node can hold a trial (Tune would wait for one
    forever): an error on a local Ray, which no node will join; a warning on a cluster, where an
    autoscaler may still add one."""
    import ray

    wanted = {"CPU": cfg.cpus_per_trial, "GPU": cfg.gpus_per_trial, **cfg.resources_per_trial}
    nodes = [n["Resources"] for n in ray.nodes() if n["Alive"]]
    if any(all(node.get(k, 0) >= v for k, v in wanted.items() if v) for node in nodes):
        return
    have = "; ".join(", ".join(f"{k}={v:g}" for k, v in sorted(node.items()) if "node:" not in k) for node in nodes)
    msg = (f"no Ray node can hold a tune trial, which asks for {trial_resources(cfg)} "
           f"(tune.cpus_per_trial, tune.gpus_per_trial, tune.resources_per_trial); the nodes have: {have}")
    if local:
        hint = (" Custom resources are node labels of a cluster: set RAY_ADDRESS to a cluster whose nodes were "
                "started with them (`ray start --resources`), or set tune.resources_per_trial={}."
                if cfg.resources_per_trial else " Ask for what this machine has.")
        raise ValueError(f"{msg}.{hint}")
    print(f"warning: {msg}; trials wait until such a node joins", file=sys.stderr, flush=True)


def _trial_printer():
    """A Ray Tune callback printing one line per finished trial (Ray's own tables are too chatty
    for the Prefect log)."""
    from ray.tune import Callback

    class TrialLine(Callback):
        def on_trial_complete(self, iteration, trials, trial, **info):
            r, c = trial.last_result or {}, trial.config
            print(f"  trial {trial.trial_id} [{c['arm']} #{c['draw']}] lr={c['lr']:.2e} wd={c['weight_decay']:.1e} "
                  f"epochs={c['epochs']} encoder_lr_scale={c['encoder_lr_scale']}: "
                  f"{METRIC}={r.get(METRIC, float('nan')):.4f}", flush=True)

        def on_trial_error(self, iteration, trials, trial, **info):
            print(f"  trial {trial.trial_id} failed: see {trial.local_path}/error.txt", flush=True)

    return TrialLine()


def _mlflow_callback(parent_run_id: str):
    """Tune's MLflow callback: a nested run per trial under the stage's, tagged with its arm."""
    import mlflow
    from ray.air.integrations.mlflow import MLflowLoggerCallback

    class PerArm(MLflowLoggerCallback):
        def log_trial_start(self, trial):
            self.tags = {**self.tags, "sslpipe.arm": trial.config["arm"]}
            super().log_trial_start(trial)

    return PerArm(tracking_uri=mlflow.get_tracking_uri(),
                  experiment_name=mlflow.get_experiment(mlflow.active_run().info.experiment_id).name,
                  tags={"mlflow.parentRunId": parent_run_id, "sslpipe.stage": "tune-trial"}, save_artifact=False)


def draw_configs(cfg: TuneParams, arm: str) -> list[dict[str, Any]]:
    """The arm's ``cfg.num_samples`` configurations, ``draw`` numbering them: Ray Tune's random
    search (``search_space``) from the arm's own seeded stream, so that adding an arm changes no
    other arm's draws."""
    import numpy as np
    from ray.tune.search.variant_generator import generate_variants

    rng = np.random.default_rng(cfg.seed * 1000 + list(ARMS).index(arm))  # what BasicVariantGenerator(random_state=) holds
    space = {"config": search_space(cfg, arm)}
    return [{**next(generate_variants(space, random_state=rng))[1]["config"], "draw": i} for i in range(cfg.num_samples)]


def waves(arms: list[str]) -> list[list[str]]:
    """``arms`` in rounds of one Tuner each: an arm that distils after the round that tunes its teacher."""
    rounds: list[list[str]] = []
    for arm in arms:  # teachers come first in finetune.arms
        teacher = ARMS[arm].teacher
        after = next((i for i, r in enumerate(rounds) if teacher in r), -1) if teacher else -1
        if after + 1 == len(rounds):
            rounds.append([])
        rounds[after + 1].append(arm)
    return rounds


def costliest_first(configs: list[dict[str, Any]], finetune_cfg: FinetuneParams) -> list[dict[str, Any]]:
    """``configs`` by decreasing cost, epochs x ``relative_step_cost`` (ties keep their order):
    with the long trials started first, the last to finish are short and no core idles long."""
    return sorted(configs, key=lambda c: -c["epochs"] * relative_step_cost(c["arm"], finetune_cfg))


def tune_arms(cfg: TuneParams, arms: list[str], finetune_cfg: FinetuneParams, data: dict[str, Any], name: str,
              parent_run_id: str | None, progress: bool):
    """Every trial of ``arms`` in one Tuner, at most ``max_concurrent_trials`` at once, each run to
    its end, the costliest first."""
    from ray import tune
    from ray.tune.schedulers import FIFOScheduler
    from ray.tune.search.basic_variant import BasicVariantGenerator

    points = costliest_first([c for arm in arms for c in draw_configs(cfg, arm)], finetune_cfg)
    callbacks = [_trial_printer()] if progress else []
    if parent_run_id:
        callbacks.append(_mlflow_callback(parent_run_id))
    trainable = tune.with_resources(tune.with_parameters(_trial, data=data), trial_resources(cfg))
    tuner = tune.Tuner(
        trainable,
        param_space=dict.fromkeys(points[0]),  # every value comes from ``points``, drawn above
        tune_config=tune.TuneConfig(
            metric=METRIC, mode="max", num_samples=len(points),
            # the generator holds the concurrency limit (Tune ignores max_concurrent_trials beside it)
            search_alg=BasicVariantGenerator(points_to_evaluate=points, max_concurrent=cfg.max_concurrent_trials),
            scheduler=FIFOScheduler(),
            reuse_actors=True,  # a trial re-seeds everything it uses: a warm process, not a new torch import
        ),
        run_config=tune.RunConfig(name=name, storage_path=storage_path(cfg), callbacks=callbacks, verbose=0),
    )
    return tuner.fit()


def best_of(results: Any, arms: list[str]) -> tuple[dict[str, dict[str, Any]], list[dict[str, Any]]]:
    """Each arm's best configuration (highest last-epoch val top-1; ties: the earlier draw) and
    every trial's row, with the id of the Ray node the trial ran on."""
    rows = []
    for r in results:
        if r.error or not r.metrics or METRIC not in r.metrics:
            continue
        rows.append({**{k: r.config[k] for k in TUNED_KEYS}, "arm": r.config["arm"], "draw": r.config["draw"],
                     METRIC: float(r.metrics[METRIC]), "epochs_run": int(r.metrics.get("training_iteration", 0)),
                     "node_id": r.metrics.get("node_id")})
    best = {}
    for arm in arms:
        mine = [row for row in rows if row["arm"] == arm]
        if not mine:
            error = next((r.error for r in results if r.error and r.config.get("arm") == arm), None)
            raise RuntimeError(f"every {arm} trial failed; first error: {error}")
        top = max(mine, key=lambda row: (row[METRIC], -row["draw"]))
        best[arm] = {**{k: top[k] for k in TUNED_KEYS}, METRIC: top[METRIC], "draw": top["draw"]}
    return best, rows


def best_models(results: Any, best: dict[str, dict[str, Any]], data: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each arm's best trial's model (its Tune checkpoint), with the recipe of its training
    (``trial_recipe``) and its per-epoch history: what finetune uses instead of training the
    same recipe again. An arm whose checkpoint is not here (none kept, or on another node's
    disk) is left out, and finetune trains it."""
    models = {}
    for arm, config in best.items():
        r = next(r for r in results if r.config["arm"] == arm and r.config["draw"] == config["draw"])
        if r.checkpoint is None:
            continue
        try:
            with r.checkpoint.as_directory() as directory:
                state = checkpoint.load(Path(directory) / MODEL_FILE)["state_dict"]
        except (OSError, KeyError) as err:
            print(f"  {arm}: the best trial's model cannot be read here ({err}); finetune trains it again", flush=True)
            continue
        history = r.metrics_dataframe.sort_values("epoch")
        models[arm] = {"recipe": trial_recipe({"arm": arm, **config}, data), "draw": config["draw"],
                       "state_dict": state, "train_loss": [float(v) for v in history["train_loss"]]}
    return models


def _teacher_state(arm: str, best: dict[str, Any], data: dict[str, Any], models: dict[str, dict[str, Any]]) -> dict:
    """The teacher the trials of ``arm``'s students distil from: ``arm`` trained with its best
    configuration on the tuning labels -- the best trial's model, or that training again when its
    model is not at hand (the same model finetune would train on these labels)."""
    if arm in models:
        return models[arm]["state_dict"]
    model, train_cfg, _ = trial_setup({"arm": arm, **best}, data)
    train_arm(arm, model, data["x_train"], data["y_train"], data["pool"], train_cfg)
    return cpu_state(model)


def trial_data(cfg: TuneParams, finetune_cfg: FinetuneParams) -> dict[str, Any]:
    """What every trial reads, in memory, so that Ray's object store can take it to any node: the
    tuning labels split into train and validation images, the unlabeled pool, the encoder's
    state, the settings. Arms that distil get their teacher's state in ``teachers`` later."""
    if not paths.ENCODER.exists():
        raise FileNotFoundError(f"{paths.ENCODER}: no encoder; run `sslpipe stage pretrain` first")
    data_set = load_dataset()
    labeled = data_set.labeled_subset(cfg.label_fraction, finetune_cfg.seed)
    train_idx, val_idx = data_set.stratified_split(labeled, cfg.val_fraction, cfg.seed)
    x_train, y_train = data_set.take(train_idx)
    x_val, y_val = data_set.take(val_idx)
    return {
        "x_train": x_train, "y_train": y_train, "x_val": x_val, "y_val": y_val, "pool": _pool(data_set),
        "num_classes": data_set.num_classes, "encoder": checkpoint.load(paths.ENCODER),
        "finetune": finetune_cfg.model_dump(), "teachers": {}, "data_version": data_set.version,
        "batch_size": cfg.batch_size, "seed": cfg.seed, "threads": cfg.cpus_per_trial,
        # a trial's model goes to storage the driver reads: a URI, or this machine's disk with a local Ray
        "keep_models": "://" in storage_path(cfg) or not on_cluster(),
    }


def _pool(data_set: Any) -> Any:
    """The unlabeled pool (the train split's images): a tensor, which travels in the object store;
    or, when it is too big for RAM, shards streamed from the project's files -- which only the
    driver's machine has: on a cluster (RAY_ADDRESS) that is an error saying what to do."""
    pool = data_set.split("train")[0]
    if isinstance(pool, torch.Tensor) or not on_cluster():
        return pool
    raise ValueError(f"tune on a cluster: the unlabeled pool ({pool.nbytes / 2**20:.0f} MB, over "
                     f"ingest.in_memory_max_mb) is read from shard files on this machine, which trials on "
                     f"other nodes cannot open; raise ingest.in_memory_max_mb above {pool.nbytes / 2**20:.0f} so it "
                     f"travels through Ray's object store, or run tune without RAY_ADDRESS")


def tune_stage(cfg: TuneParams, finetune_cfg: FinetuneParams, progress: bool = True, log_mlflow: bool = True) -> TuneResult:
    """Search every arm of ``finetune.arms`` and write the best config of each to ``models/tune/best.json``."""
    import ray

    data = trial_data(cfg, finetune_cfg)
    parent = None
    if log_mlflow:
        import mlflow

        parent = mlflow.active_run().info.run_id
    started = init_ray(cfg.cpus_per_trial * cfg.max_concurrent_trials, int(torch.cuda.is_available()))
    best: dict[str, dict[str, Any]] = {}
    models: dict[str, dict[str, Any]] = {}
    table: list[dict[str, Any]] = []
    try:
        _check_placement(cfg, local=started and not on_cluster())
        for i, arms in enumerate(waves(finetune_cfg.arms)):
            if progress:
                print(f"tune {', '.join(arms)}: {cfg.num_samples} trials each, at most {cfg.max_concurrent_trials} "
                      "at once", flush=True)
            results = tune_arms(cfg, arms, finetune_cfg, data, "tune" if i == 0 else f"tune-{i + 1}", parent, progress)
            found, rows = best_of(results, arms)
            best.update(found)
            models.update(best_models(results, found, data))
            table += rows
            for arm in arms:
                if any(ARMS[a].teacher == arm for a in finetune_cfg.arms):
                    data["teachers"][arm] = _teacher_state(arm, best[arm], data, models)
    finally:
        if started:  # a local Ray stops; on a cluster this driver only disconnects, the cluster runs on
            ray.shutdown()
    table.sort(key=lambda row: (finetune_cfg.arms.index(row["arm"]), row["draw"]))
    checkpoint.save_atomic({"arms": models}, paths.TUNED_MODELS)
    write_json(paths.BEST_CONFIG, {**best, "label_fraction": cfg.label_fraction,
                                   "num_train": len(data["y_train"]), "num_val": len(data["y_val"])})
    write_json(paths.TUNE_REPORT, {"best": best, "trials": table})
    if log_mlflow:
        import mlflow

        mlflow.log_metrics({f"tune/{arm}_best_{METRIC}": best[arm][METRIC] for arm in best})
        mlflow.log_dict({"best": best, "trials": table}, "tune/trials.json")
    return TuneResult(best, len(table))


def load_best() -> dict[str, Any]:
    if not paths.BEST_CONFIG.exists():
        raise FileNotFoundError(f"{paths.BEST_CONFIG}: no tuned config; run `sslpipe stage tune` first")
    return read_json(paths.BEST_CONFIG)
