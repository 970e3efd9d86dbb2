"""Where each stage reads and writes, relative to the project root (DVC runs stages there)."""

from __future__ import annotations

from pathlib import Path

SOURCES = Path("data/sources.json")  # the manifest of the files ingest reads (path, size, mtime)
DATASET_DIR = Path("data/dataset")
SHARDS = DATASET_DIR / "shards"  # the images: .npy shards, uint8 (n, C, H, W) each, in name order
METADATA = DATASET_DIR / "metadata.parquet"  # one row per image
DATASET_INFO = DATASET_DIR / "info.json"  # classes, counts, content version

REPORTS = Path("reports")
VALIDATION = REPORTS / "validation.json"
VALIDATION_SUMMARY = REPORTS / "validation.md"
PRETRAIN_HISTORY = REPORTS / "pretrain.json"
TUNE_REPORT = REPORTS / "tune.json"
FINETUNE_REPORT = REPORTS / "finetune.json"
METRICS = REPORTS / "metrics.json"  # the headline figures: what `dvc metrics show` prints
PER_CLASS = REPORTS / "per_class.json"  # the shipped model's top-1 per class
REGISTRATION = REPORTS / "registration.json"
PLOTS = REPORTS / "plots"

MODELS = Path("models")
ENCODER = MODELS / "encoder.pt"
BEST_CONFIG = MODELS / "tune" / "best.json"
TUNED_MODELS = MODELS / "tune" / "best_models.pt"  # each arm's best trial's model, with its training's recipe
CLASSIFIERS = MODELS / "classifiers"

STATE = Path(".sslpipe")  # scratch that survives runs but is no result: checkpoints, Ray results
PRETRAIN_CHECKPOINT = STATE / "checkpoints" / "pretrain.pt"
RAY_RESULTS = STATE / "ray"
DOWNLOADS = STATE / "downloads"  # Fashion-MNIST fetched by torchvision (ingest.download: true)
STAGE_RESULTS = STATE / "stage_results"  # each stage's summary, for the run's table


def classifier_path(arm: str, fraction: float) -> Path:
    """Where finetune writes ``arm``'s model at label ``fraction``."""
    return CLASSIFIERS / f"{arm}_{fraction:g}.pt"
