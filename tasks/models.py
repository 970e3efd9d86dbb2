"""Model files: an encoder or classifier saved as its architecture + state dict (loaded with
``weights_only=True``; no pickled code)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ssl_models import checkpoint
from ssl_models.backbones import Encoder, build_backbone
from ssl_models.classifier import Classifier


def encoder_spec(backbone: str, in_channels: int, width: int, mean: list[float], std: list[float],
                 stem_stride: int = 1) -> dict[str, Any]:
    return {"backbone": backbone, "in_channels": in_channels, "width": width, "stem_stride": stem_stride,
            "mean": mean, "std": std}


def build_encoder(spec: dict[str, Any]) -> Encoder:
    # files written before ``stem_stride`` existed have none: their small_cnn had stride 1
    backbone = build_backbone(spec["backbone"], spec["in_channels"], spec["width"], spec.get("stem_stride", 1))
    return Encoder(backbone, spec["mean"], spec["std"])


def save_encoder(encoder: Encoder, spec: dict[str, Any], path: Path, extra: dict[str, Any] | None = None) -> None:
    state = {k: v.detach().cpu() for k, v in encoder.state_dict().items()}
    checkpoint.save_atomic({"spec": spec, "state_dict": state, **(extra or {})}, path)


def load_encoder(path: Path) -> tuple[Encoder, dict[str, Any]]:
    if not Path(path).exists():
        raise FileNotFoundError(f"{path}: no encoder; run `sslpipe stage pretrain` first")
    blob = checkpoint.load(path)
    encoder = build_encoder(blob["spec"])
    encoder.load_state_dict(blob["state_dict"])
    return encoder, blob


def cpu_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """``model``'s state dict as contiguous CPU tensors, detached: what a file or another process gets."""
    return {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}


def save_classifier(model: Classifier, spec: dict[str, Any], num_classes: int, path: Path, extra: dict[str, Any] | None = None) -> None:
    checkpoint.save_atomic({"spec": spec, "num_classes": num_classes, "state_dict": cpu_state(model), **(extra or {})}, path)


def load_classifier(path: Path) -> tuple[Classifier, dict[str, Any]]:
    if not Path(path).exists():
        raise FileNotFoundError(f"{path}: no classifier; run `sslpipe stage finetune` first")
    blob = checkpoint.load(path)
    model = Classifier(build_encoder(blob["spec"]), blob["num_classes"])
    model.load_state_dict(blob["state_dict"])
    return model.eval(), blob

