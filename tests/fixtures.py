"""Synthetic data on disk for the tests: IDX files, a Fashion-MNIST-format directory whose classes
are easy to tell apart, and image folders of PNGs. Plain functions; the conftest files wrap them
in fixtures."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
from PIL import Image

from ssl_models.data import FASHION_MNIST_FILES

IDX_TYPE_CODES = {np.dtype(np.uint8): 0x08, np.dtype(np.int8): 0x09, np.dtype(">i4"): 0x0C, np.dtype(">f4"): 0x0D}


def idx_bytes(array: np.ndarray) -> bytes:
    """The IDX encoding of ``array`` (uint8, int8, big-endian int32 or float32)."""
    array = np.asarray(array)
    if array.dtype.kind in "if" and array.dtype.itemsize == 4:
        array = array.astype(array.dtype.newbyteorder(">"))
    code = IDX_TYPE_CODES[array.dtype]
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}i", *array.shape)
    return header + np.ascontiguousarray(array).tobytes()


def write_idx(path: Path, array: np.ndarray, gz: bool | None = None) -> Path:
    """Write ``array`` as IDX to ``path`` (gzip-compressed when the name ends in .gz or ``gz``)."""
    path = Path(path)
    data = idx_bytes(array)
    if gz if gz is not None else path.suffix == ".gz":
        data = gzip.compress(data, mtime=0)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def balanced_labels(n: int, num_classes: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` labels, every class (almost) equally often, in random order."""
    return rng.permutation(np.arange(n) % num_classes).astype(np.uint8)


def separable_images(labels: np.ndarray, side: int, rng: np.random.Generator) -> np.ndarray:
    """uint8 (N, side, side): dim noise plus a bright square whose position encodes the class."""
    images = rng.integers(0, 60, size=(len(labels), side, side), dtype=np.uint8)
    cell = side // 4
    for i, label in enumerate(labels):
        r, c = divmod(int(label), 4)
        images[i, r * cell : (r + 1) * cell, c * cell : (c + 1) * cell] = rng.integers(200, 256, size=(cell, cell))
    return images


def write_fashion_mnist(
    directory: Path,
    n_train: int = 200,
    n_test: int = 60,
    side: int = 16,
    seed: int = 0,
    gz: bool = True,
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The four Fashion-MNIST IDX files with separable synthetic images of 10 classes.

    Returns:
        What was written: ``{"train": (images (N, H, W), labels (N,)), "test": ...}``.
    """
    rng = np.random.default_rng(seed)
    written = {}
    for split, n in (("train", n_train), ("test", n_test)):
        labels = balanced_labels(n, 10, rng)
        images = separable_images(labels, side, rng)
        image_stem, label_stem = FASHION_MNIST_FILES[split]
        suffix = ".gz" if gz else ""
        write_idx(Path(directory) / f"{image_stem}{suffix}", images, gz=gz)
        write_idx(Path(directory) / f"{label_stem}{suffix}", labels, gz=gz)
        written[split] = (images, labels)
    return written


def write_png(path: Path, array: np.ndarray) -> Path:
    """Save a uint8 (H, W) or (H, W, 3) array as PNG."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def write_image_folder(
    root: Path,
    classes: dict[str, int],
    seed: int = 0,
    sizes: tuple[int, ...] = (12, 20, 33),
    labeled: bool = True,
) -> Path:
    """``root/<class>/<i>.png`` (or ``root/<i>.png`` with ``labeled=False``): per class the given
    count of images, alternating grayscale and RGB and cycling through ``sizes``."""
    rng = np.random.default_rng(seed)
    for name, count in classes.items():
        folder = root / name if labeled else root
        for i in range(count):
            side = sizes[i % len(sizes)]
            shape = (side, side) if i % 2 == 0 else (side, side, 3)
            write_png(folder / f"{name}_{i:03d}.png", rng.integers(0, 256, size=shape, dtype=np.uint8))
    return root
