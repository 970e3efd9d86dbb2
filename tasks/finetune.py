"""Stage 5 -- finetune: for each label fraction, fine-tune the SSL encoder with the best tuned
config, and train the same architecture from scratch on the same labels with the same budget
(the supervised baseline, with its own tuned config). Writes ``models/classifiers/*.pt``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ssl_models import checkpoint
from ssl_models.classifier import Classifier, train_classifier
from tasks import paths
from tasks.config import FinetuneParams
from tasks.dataset import load_dataset
from tasks.io import write_json
from tasks.models import build_encoder, finetune_config, save_classifier
from tasks.tune import ARMS, load_best


@dataclass
class FinetuneResult:
    fractions: dict[str, dict[str, Any]]


def finetune(cfg: FinetuneParams, progress: bool = True, log_mlflow: bool = True) -> FinetuneResult:
    data = load_dataset()
    best = load_best()
    blob = checkpoint.load(paths.ENCODER)
    report: dict[str, dict[str, Any]] = {}
    for fraction in cfg.label_fractions:
        idx = data.labeled_subset(fraction, cfg.seed)
        x, y = data.take(idx)
        report[f"{fraction:g}"] = {"num_labels": len(idx)}
        for arm in ARMS:
            encoder = build_encoder(blob["spec"])
            if arm == "finetune":
                encoder.load_state_dict(blob["state_dict"])
            torch.manual_seed(cfg.seed)
            model = Classifier(encoder, data.num_classes)
            hp = best[arm]
            ft_cfg = finetune_config(hp, batch_size=cfg.batch_size, min_steps=cfg.min_steps, seed=cfg.seed)
            history = train_classifier(model, x, y, ft_cfg)
            model.cpu().to(memory_format=torch.contiguous_format)
            save_classifier(model, blob["spec"], data.num_classes, paths.classifier_path(arm, fraction),
                            {"arm": arm, "fraction": fraction, "config": hp, "data_version": data.version})
            report[f"{fraction:g}"][arm] = {"epochs": len(history), "final_train_loss": history[-1]["train_loss"], **hp}
            if progress:
                print(f"  {arm:<10} {fraction:>5g} ({len(idx)} labels): {len(history)} epochs, "
                      f"train loss {history[-1]['train_loss']:.3f}")
            if log_mlflow:
                import mlflow

                for h in history:
                    mlflow.log_metric(f"finetune/{arm}_{fraction:g}/train_loss", h["train_loss"], step=h["epoch"])
    write_json(paths.FINETUNE_REPORT, report)
    return FinetuneResult(report)
