"""Stage 6 -- evaluate, on the held-out test split: kNN top-1 (k=20, cosine) and linear-probe
top-1 on frozen SSL features, with raw pixels and a random-init encoder as references; fine-tuned
and supervised-baseline top-1 per label fraction; per-class accuracy; plots.

Works on splits streamed from the shards (``ingest.in_memory_max_mb``) with memory bounded by the
batch sizes plus the (N, D) features: images are read a batch at a time, raw-pixel kNN compares
chunks of the test split with chunks of the train bank."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ssl_models.classifier import predict_logits
from ssl_models.evaluation import FlatPixels, extract_features, knn_top1, linear_probe
from ssl_models.evaluation.knn import Features
from tasks import paths, plots
from tasks.config import EvaluateParams, FinetuneParams
from tasks.dataset import load_dataset
from tasks.io import write_csv, write_json
from tasks.metrics import flat_metrics
from tasks.models import build_encoder, load_classifier, load_encoder
from tasks.arms import choose


def _confusion(y_true: np.ndarray, y_pred: np.ndarray, k: int) -> np.ndarray:
    return np.bincount(y_true * k + y_pred, minlength=k * k).reshape(k, k)


def evaluate(cfg: EvaluateParams, finetune_cfg: FinetuneParams, log_mlflow: bool = True) -> dict[str, Any]:
    """Compute every metric, write ``reports/metrics.json`` and ``reports/plots/``."""
    data = load_dataset()
    # tensors, or pools streamed from the shards when bigger than ingest.in_memory_max_mb: every
    # pass below reads them a batch at a time, so the same numbers come out either way
    x_bank, y_bank = data.split("train", labeled=True)
    x_test, y_test = data.split("test")
    k = data.num_classes

    def knn(bank: Features, test: Features) -> float:
        return knn_top1(bank, y_bank, test, y_test, k, cfg.knn_k, cfg.knn_temperature)

    encoder, blob = load_encoder(paths.ENCODER)
    f_bank, f_test = extract_features(encoder, x_bank), extract_features(encoder, x_test)
    torch.manual_seed(0)
    random_encoder = build_encoder(blob["spec"])
    metrics: dict[str, Any] = {
        "knn_top1": knn(f_bank, f_test),
        "linear_top1": float((linear_probe(f_bank, y_bank, f_test, k, cfg.linear_l2)[0] == y_test).float().mean()),
        "knn_top1_raw_pixels": knn(FlatPixels(x_bank), FlatPixels(x_test)),  # chunked: N x pixels floats may not fit
        "knn_top1_random_init": knn(extract_features(random_encoder, x_bank), extract_features(random_encoder, x_test)),
        "num_test": len(y_test),
    }
    fractions: dict[str, Any] = {}
    predictions: dict[str, np.ndarray] = {}
    for fraction in finetune_cfg.label_fractions:
        arms: dict[str, dict[str, float]] = {}
        for arm in finetune_cfg.arms:
            model, saved = load_classifier(paths.classifier_path(arm, fraction))
            # fp32, as the registered model is served (tasks/served_model.py) and scored by the
            # registry: the model card's test top-1 is the one `sslpipe models` shows (bf16 moved
            # the default run's figures by up to 0.0006)
            pred = predict_logits(model, x_test, precision="fp32").argmax(1).numpy()
            predictions[f"{arm}_{fraction:g}"] = pred
            arms[arm] = {"val_top1": float(saved["val_top1"]), "test_top1": float((pred == y_test.numpy()).mean())}
        choice = choose(arms)
        fractions[f"{fraction:g}"] = {"num_labels": len(data.labeled_subset(fraction, finetune_cfg.seed)),
                                      "num_val": int(saved["num_val"]), "arms": arms, **choice}
    metrics["fractions"] = fractions
    largest = fractions[f"{max(finetune_cfg.label_fractions):g}"]
    # the model that gets registered: the validation-best arm at the largest fraction
    metrics["selected_arm"] = largest["selected"]
    metrics["pretraining_paid_off"] = largest["pretraining_paid_off"]
    metrics["model_top1"] = largest["arms"][largest["selected"]]["test_top1"]

    pred = predictions[f"{largest['selected']}_{max(finetune_cfg.label_fractions):g}"]
    cm = _confusion(y_test.numpy(), pred, k)
    per_class = {name: float(cm[i, i] / max(cm[i].sum(), 1)) for i, name in enumerate(data.classes)}
    write_json(paths.PER_CLASS, per_class)
    write_json(paths.METRICS, metrics)

    # plots: a CSV DVC can render (`dvc plots show`), PNGs for people and MLflow
    write_csv(paths.PLOTS / "confusion.csv", ["actual", "predicted"],
              zip((data.classes[i] for i in y_test.tolist()), (data.classes[i] for i in pred.tolist())))
    cm_fig = plots.confusion_matrix_figure(cm, data.classes, f"{metrics['selected_arm']}, {max(finetune_cfg.label_fractions):g} of labels: "
                                                f"top-1 {metrics['model_top1']:.3f}")
    n_emb = min(cfg.embedding_plot_images, len(y_test))
    emb_fig = plots.embedding_figure(f_test[:n_emb], y_test[:n_emb].numpy(), data.classes, "SSL features of test images (PCA)")
    if log_mlflow:
        import mlflow

        mlflow.log_metrics(flat_metrics(metrics, per_class))
        mlflow.log_figure(cm_fig, "plots/confusion_matrix.png")
        mlflow.log_figure(emb_fig, "plots/embeddings_pca.png")
        mlflow.log_dict(metrics, "metrics.json")
    plots.save(cm_fig, paths.PLOTS / "confusion_matrix.png")
    plots.save(emb_fig, paths.PLOTS / "embeddings_pca.png")
    return metrics
