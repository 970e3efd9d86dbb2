"""Stage 3 -- pretrain: self-supervised training of the encoder on every train image (labels
unused), resuming from the last checkpoint if a run was killed. Writes ``models/encoder.pt``.

One process by default; with ``pretrain.distributed.workers`` > 1 the same engine loop runs on Ray
Train workers (``tasks.distributed``), and the encoder is written here, by the driver, all the same."""

from __future__ import annotations

import functools
import time
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import torch

from ssl_models.augment import ViewAugment, to_float
from ssl_models.engine import TrainConfig, TrainResult, train
from ssl_models.evaluation import extract_features, knn_top1
from ssl_models.methods import method_class
from tasks import paths, plots
from tasks.config import PretrainParams
from tasks.dataset import Dataset, load_dataset
from tasks.io import write_csv, write_json
from tasks.models import build_encoder, encoder_spec, save_encoder


@dataclass
class PretrainResult:
    method: str
    steps: int
    epochs: int
    final_loss: float
    knn_monitor_top1: float | None
    images_per_sec: float
    wall_seconds: float
    resumed_from_step: int
    # the Ray node id of each Ray Train worker, by rank; empty in one process (no Ray)
    worker_nodes: list[str] = field(default_factory=list)


def train_config(cfg: PretrainParams) -> TrainConfig:
    """The engine's config from the pretrain section: every field the section has comes from it
    (the typed config is the one source of defaults); the loss is logged every 10 steps."""
    shared = {f.name: getattr(cfg, f.name) for f in fields(TrainConfig) if f.name in PretrainParams.model_fields}
    return TrainConfig(**shared, log_every=10)


def build_method(cfg: PretrainParams, train_images: torch.Tensor):
    """The configured method around a fresh encoder normalized with the pool's statistics."""
    x = to_float(train_images[:10000])
    mean = x.mean(dim=(0, 2, 3)).tolist()
    std = x.std(dim=(0, 2, 3)).clamp(min=1e-3).tolist()
    spec = encoder_spec(cfg.backbone, int(train_images.shape[1]), cfg.width, mean, std, cfg.stem_stride)
    torch.manual_seed(cfg.seed)
    cls = method_class(cfg.method)
    augment = ViewAugment(**{**cls.default_augment, **cfg.augment.overrides()})
    return cls(build_encoder(spec), augment, **cfg.args), spec


def _worker_method(cfg: PretrainParams, train_images: torch.Tensor):
    """``build_method`` without the spec: what each Ray Train worker builds (the same weights in each)."""
    return build_method(cfg, train_images)[0]


def knn_monitor(data: Dataset, n: int, seed: int, k: int = 20):
    """An epoch callback: kNN top-1 with ``n`` labeled train images as the bank and ``n // 4``
    other ones as queries (never the test split); with fewer than ``n + n // 4`` labeled images,
    four fifths of them are the bank and the rest the queries. None: too few labels to monitor."""
    labeled = data.labeled_subset(1.0, seed)
    n = min(n, len(labeled) * 4 // 5)
    if n < 1 or n // 4 < 1:
        return None
    g = torch.Generator().manual_seed(seed)
    pick = torch.from_numpy(labeled)[torch.randperm(len(labeled), generator=g)[: n + n // 4]].numpy()
    bank_x, bank_y = data.take(pick[:n])
    query_x, query_y = data.take(pick[n:])
    num_classes = data.num_classes  # the closure holds tensors only: it may travel to a Ray worker

    def on_epoch(epoch: int, method) -> dict[str, float]:
        device = next(method.parameters()).device
        bank = extract_features(method.encoder, bank_x, device=device)
        query = extract_features(method.encoder, query_x, device=device)
        return {"knn_monitor_top1": knn_top1(bank, bank_y, query, query_y, num_classes, k)}

    return on_epoch


def pretrain(cfg: PretrainParams, progress: bool = True, log_mlflow: bool = True) -> PretrainResult:
    """Train, checkpointing as it goes, and save the encoder. See ``PretrainParams``."""
    data = load_dataset()
    images, _ = data.split("train")
    method, spec = build_method(cfg, images)
    mlflow = None
    if log_mlflow:
        import mlflow

        plots.log(augment_preview(method, images[:8], cfg.seed), "plots/augment_preview.png")
    steps_log: list[tuple[int, float]] = []
    pending: list[Any] = []  # MLflow metrics, sent in batches: one call per step would cost ~10 ms

    def flush() -> None:
        if mlflow and pending:
            mlflow.MlflowClient().log_batch(mlflow.active_run().info.run_id, metrics=pending)
            pending.clear()

    def on_step(step: int, metrics: dict[str, float]) -> None:
        steps_log.append((step, metrics["loss"]))
        if mlflow:
            from mlflow.entities import Metric

            now = int(time.time() * 1000)
            pending.extend(Metric(f"pretrain/{k}", v, now, step) for k, v in metrics.items())
            if len(pending) >= 300:
                flush()

    monitor = knn_monitor(data, min(cfg.knn_monitor_images, len(images)), cfg.seed) if cfg.knn_monitor_images else None

    def on_epoch(epoch: int, m) -> dict[str, float]:
        out = monitor(epoch, m) if monitor else {}
        if mlflow and out:
            mlflow.log_metrics({f"pretrain/{k}": v for k, v in out.items()}, step=epoch)
        return out

    worker_nodes: list[str] = []
    if cfg.distributed.workers > 1:
        result, worker_nodes = _train_on_workers(cfg, method, images, monitor, on_step, progress)
        if mlflow:  # the monitor ran in a worker: its metrics are logged from the history
            for record in result.history:
                mlflow.log_metrics({f"pretrain/{k}": v for k, v in record.items() if k.startswith("knn")},
                                   step=int(record["epoch"]))
    else:
        result = train(method, images, train_config(cfg), paths.PRETRAIN_CHECKPOINT, on_step, on_epoch,
                       progress=progress)
    flush()
    history = result.history
    save_encoder(method.encoder.cpu().to(memory_format=torch.contiguous_format), spec, paths.ENCODER,
                 {"method": cfg.method, "history": history})
    out = PretrainResult(
        method=cfg.method, steps=result.steps, epochs=result.epochs,
        final_loss=history[-1]["loss"] if history else float("nan"),
        knn_monitor_top1=history[-1].get("knn_monitor_top1") if history else None,
        images_per_sec=result.images_per_sec, wall_seconds=result.wall_seconds,
        resumed_from_step=result.resumed_from_step, worker_nodes=worker_nodes,
    )
    write_json(paths.PRETRAIN_HISTORY, {"summary": asdict(out), "epochs": history})
    write_csv(paths.PLOTS / "pretrain_loss.csv", ["step", "loss"], steps_log)
    steps, losses = zip(*steps_log) if steps_log else ((), ())  # none: a run shorter than the log interval
    loss_fig = plots.loss_curve(steps, losses)
    if mlflow:
        mlflow.log_metrics({"pretrain/images_per_sec_mean": result.images_per_sec})
        mlflow.log_figure(loss_fig, "plots/pretrain_loss.png")
    plots.save(loss_fig, paths.PLOTS / "pretrain_loss.png")  # `dvc plots show` offline (the CSV's render needs a CDN)
    return out


def _train_on_workers(cfg: PretrainParams, method, images: torch.Tensor, monitor, on_step,
                      progress: bool) -> tuple[TrainResult, list[str]]:
    """Train on ``cfg.distributed.workers`` Ray Train workers; load the final weights into ``method``
    and replay rank 0's per-step metrics through ``on_step``. Returns the result and the Ray node
    id of each worker."""
    from tasks.distributed import train_on_workers

    run = train_on_workers(functools.partial(_worker_method, cfg), images, train_config(cfg), cfg.distributed,
                           on_epoch=monitor, progress=progress)
    method.load_state_dict(run.state_dict)
    for step, metrics in run.steps:
        on_step(step, metrics)
    return run.result, run.worker_nodes


def augment_preview(method, images: torch.Tensor, seed: int) -> Any:
    """A figure of a few images and the method's views of them."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        views = method.views(images, g)
    return plots.view_grid(to_float(images), views[:4], f"{method.name} views")
