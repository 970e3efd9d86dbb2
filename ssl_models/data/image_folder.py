"""Users' own images: ``root/<class>/*.png|jpg`` for labeled images, any tree for unlabeled ones."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from ssl_models.data.errors import DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def image_files(directory: Path) -> list[Path]:
    """Every image file under ``directory`` (recursively, by suffix), sorted."""
    return sorted(p for p in directory.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


@dataclass
class ImageFolderData:
    """Decoded images: uint8 (N, C, H, W), labels (N,) with -1 for unlabeled, and source paths."""

    images: np.ndarray
    labels: np.ndarray
    paths: list[str] = field(default_factory=list)


def load_image(path: Path, image_size: int, channels: int) -> np.ndarray:
    """Decode one image, convert to ``channels`` and resize to a square ``image_size``: the one
    decoder for ingest (training data) and prediction (served data).

    Returns:
        uint8 (C, H, W).

    Raises:
        DataError: naming the file when it cannot be decoded.
    """
    try:
        with Image.open(path) as img:
            img = img.convert("L" if channels == 1 else "RGB")
            if img.size != (image_size, image_size):
                img = img.resize((image_size, image_size), Image.Resampling.BILINEAR)
            array = np.asarray(img, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise DataError(f"{path}: cannot decode image ({e}); remove or replace the file") from None
    return array[None] if array.ndim == 2 else array.transpose(2, 0, 1)


def read_image_folder(
    root: str | Path,
    image_size: int,
    channels: int,
    classes: Sequence[str] | None = None,
    labeled: bool = True,
) -> tuple[ImageFolderData, list[str]]:
    """Read a folder of images.

    Args:
        root: ``root/<class>/*.png`` when ``labeled``, else any tree of images (all unlabeled).
        image_size: side of the square the images are resized to.
        channels: 1 (grayscale) or 3 (RGB).
        classes: class names in label order; default: the sorted sub-directory names of ``root``.
        labeled: whether the sub-directories name classes.

    Returns:
        The decoded data and the class names.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: image folder not found")
    if labeled:
        found = sorted(p.name for p in root.iterdir() if p.is_dir())
        classes = list(classes) if classes else found
        unknown = sorted(set(found) - set(classes))
        if unknown:
            raise DataError(f"{root}: class folders {unknown} are not among the classes {classes}")
        files = [(p, label) for label, name in enumerate(classes) if (root / name).is_dir()
                 for p in image_files(root / name)]
    else:
        classes = list(classes or [])
        files = [(p, -1) for p in image_files(root)]
    if not files:
        raise DataError(f"{root}: no images ({', '.join(IMAGE_SUFFIXES)}) found")
    images = np.empty((len(files), channels, image_size, image_size), dtype=np.uint8)
    for i, (path, _) in enumerate(files):
        images[i] = load_image(path, image_size, channels)
    labels = np.array([label for _, label in files], dtype=np.int64)
    return ImageFolderData(images, labels, [str(p) for p, _ in files]), list(classes)
