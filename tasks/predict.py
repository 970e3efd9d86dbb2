"""``sslpipe predict``: classify image files with a registered model, loaded through MLflow
pyfunc exactly as ``mlflow models serve`` loads it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

def model_uri(model: str, name: str) -> str:
    """``champion`` -> ``models:/NAME@champion``; ``3`` -> ``models:/NAME/3``; a URI stays as is."""
    if ":" in model:
        return model
    return f"models:/{name}/{model}" if model.isdigit() else f"models:/{name}@{model}"


def image_files(inputs: list[Path]) -> list[Path]:
    """The images named, and those under each folder named (sorted), with ingest's suffixes."""
    from ssl_models.data.image_folder import image_files as images_under

    out = []
    for p in inputs:
        if p.is_dir():
            out += images_under(p)
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
    """Decode images as ingest does (``ssl_models.data.load_image``: same conversion and resize)
    into float32 (N, C, H, W) in [0, 1]."""
    from ssl_models.data.image_folder import load_image

    c, h, w = shape
    if h != w:
        raise ValueError(f"the model takes {h}x{w} images; sslpipe models take square ones")
    return np.stack([load_image(f, h, c) for f in files]).astype(np.float32) / 255


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
