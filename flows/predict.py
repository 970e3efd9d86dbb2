"""``sslpipe predict``: classify image files with a registered model, loaded through MLflow
pyfunc exactly as ``mlflow models serve`` loads it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


def model_uri(model: str, name: str) -> str:
    """``champion`` -> ``models:/NAME@champion``; ``3`` -> ``models:/NAME/3``; a URI stays as is."""
    if ":" in model:
        return model
    return f"models:/{name}/{model}" if model.isdigit() else f"models:/{name}@{model}"


def image_files(inputs: list[Path]) -> list[Path]:
    """The images named, and those under each folder named (sorted)."""
    out = []
    for p in inputs:
        if p.is_dir():
            out += sorted(f for f in p.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES)
        elif p.exists():
            out.append(p)
        else:
            raise FileNotFoundError(f"{p}: no such file or folder")
    return out


def input_shape(model: Any) -> tuple[int, int, int]:
    """(C, H, W) the model takes, from its signature."""
    schema = model.metadata.get_input_schema()
    shape = schema.inputs[0].shape  # (-1, C, H, W)
    return int(shape[1]), int(shape[2]), int(shape[3])


def load_images(files: list[Path], shape: tuple[int, int, int]) -> np.ndarray:
    """Read, convert (grey or RGB) and resize images to float32 (N, C, H, W) in [0, 1]."""
    from PIL import Image

    c, h, w = shape
    arrays = []
    for f in files:
        with Image.open(f) as im:
            im = im.convert("L" if c == 1 else "RGB")
            if im.size != (w, h):
                im = im.resize((w, h), Image.BILINEAR)
            a = np.asarray(im, dtype=np.uint8)
        arrays.append(a[None] if c == 1 else a.transpose(2, 0, 1))  # (C, H, W)
    return np.stack(arrays).astype(np.float32) / 255


def predict_files(uri: str, files: list[Path], batch_size: int = 256) -> list[tuple[Path, str, float]]:
    """(file, class name, probability) per image."""
    import mlflow

    model = mlflow.pyfunc.load_model(uri)
    classes = (model.metadata.metadata or {}).get("classes")
    x = load_images(files, input_shape(model))
    probs = np.concatenate([np.asarray(model.predict(x[i : i + batch_size])) for i in range(0, len(x), batch_size)])
    out = []
    for f, p in zip(files, probs):
        k = int(p.argmax())
        out.append((f, classes[k] if classes else str(k), float(p[k])))
    return out
