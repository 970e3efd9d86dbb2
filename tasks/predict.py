"""``sslpipe predict``: classify image files with a registered model, loaded through MLflow
pyfunc exactly as ``mlflow models serve`` loads it.

Errors name what is wrong: a missing path or an empty folder, an image that cannot be decoded, a
model that cannot be loaded. An unreadable image is skipped (and named) unless ``strict``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ssl_models.data import DataError


class ModelLoadError(RuntimeError):
    """The model URI cannot be loaded (no such model, alias or version; an unreachable store)."""


@dataclass
class Predictions:
    rows: list[tuple[Path, str, float]]  # (file, class name, its probability) per readable image
    skipped: list[str] = field(default_factory=list)  # "FILE: why" per unreadable image


def model_uri(model: str, name: str) -> str:
    """``champion`` -> ``models:/NAME@champion``; ``3`` -> ``models:/NAME/3``; a URI stays as is."""
    if ":" in model:
        return model
    return f"models:/{name}/{model}" if model.isdigit() else f"models:/{name}@{model}"


def image_files(inputs: list[Path]) -> list[Path]:
    """The images named, and those under each folder named (sorted), with ingest's suffixes.

    Raises:
        FileNotFoundError: a path that does not exist.
        DataError: a folder without images.
    """
    from ssl_models.data.image_folder import IMAGE_SUFFIXES
    from ssl_models.data.image_folder import image_files as images_under

    out = []
    for p in inputs:
        if p.is_dir():
            found = images_under(p)
            if not found:
                raise DataError(f"{p}: no images ({', '.join(IMAGE_SUFFIXES)}) in this folder or below")
            out += found
        elif p.exists():
            out.append(p)
        else:
            raise FileNotFoundError(f"{p}: no such file or folder")
    return out


@contextmanager
def load_model(uri: str) -> Iterator[Any]:
    """The pyfunc model at ``uri`` (``tasks.registry.open_model``: its files removed on exit).

    Raises:
        ModelLoadError: naming the URI and MLflow's reason.
    """
    from tasks.registry import open_model

    with ExitStack() as stack:
        try:
            model = stack.enter_context(open_model(uri))
        except Exception as e:  # noqa: BLE001 -- MLflow's errors for a missing model, alias or store
            raise ModelLoadError(f"{uri}: {e}") from None
        yield model


def input_shape(model: Any) -> tuple[int, int, int]:
    """(C, H, W) the model takes, from its signature."""
    schema = model.metadata.get_input_schema()
    shape = schema.inputs[0].shape  # (-1, C, H, W)
    return int(shape[1]), int(shape[2]), int(shape[3])


def load_images(files: list[Path], shape: tuple[int, int, int], strict: bool = False) -> tuple[np.ndarray, list[Path], list[str]]:
    """Decode images as ingest does (``ssl_models.data.load_image``: same conversion and resize).

    Returns:
        float32 (N, C, H, W) in [0, 1] of the readable files, those files, and "FILE: why" for each
        file skipped as unreadable.

    Raises:
        DataError: naming the image, for the first unreadable one when ``strict``, or when none is readable.
    """
    from ssl_models.data.image_folder import load_image

    c, h, w = shape
    if h != w:
        raise ValueError(f"the model takes {h}x{w} images; sslpipe models take square ones")
    images, readable, skipped = [], [], []
    for f in files:
        try:
            images.append(load_image(f, h, c))
            readable.append(f)
        except DataError as e:
            if strict:
                raise
            skipped.append(str(e))
    if not images:
        raise DataError(skipped[0] if len(skipped) == 1 else
                        f"none of the {len(skipped)} images could be read; the first: {skipped[0]}")
    return np.stack(images).astype(np.float32) / 255, readable, skipped


def predict_files(uri: str, files: list[Path], strict: bool = False, batch_size: int = 256) -> Predictions:
    """Classify ``files`` with the model at ``uri``; unreadable images are skipped unless ``strict``."""
    from tasks.registry import class_probabilities

    with load_model(uri) as model:
        x, readable, skipped = load_images(files, input_shape(model), strict)
        probs, classes = [], None
        for i in range(0, len(x), batch_size):
            p, classes = class_probabilities(model.predict(x[i : i + batch_size]))
            probs.append(p)
        classes = classes or (model.metadata.metadata or {}).get("classes")  # versions whose output names none
    rows = []
    for f, p in zip(readable, np.concatenate(probs)):
        k = int(p.argmax())
        rows.append((f, classes[k] if classes else str(k), float(p[k])))
    return Predictions(rows, skipped)
