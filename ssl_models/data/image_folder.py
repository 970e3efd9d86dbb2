"""Users' own images: ``root/<class>/*.png|jpg`` for labeled images, any tree for unlabeled ones."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ssl_models.data.errors import DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
# names what ``load_image`` does to a file; change it with the function, so that incremental ingest
# decodes every file again instead of keeping pixels decoded the old way
DECODER = "exif-transpose, short side to size, centre crop, bilinear, jpeg draft"


def image_files(directory: Path) -> list[Path]:
    """Every image file under ``directory`` (recursively, by suffix), sorted."""
    return sorted(p for p in directory.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


@dataclass
class ImageFolderData:
    """Decoded images: uint8 (N, C, H, W), labels (N,) with -1 for unlabeled, and source paths."""

    images: np.ndarray
    labels: np.ndarray
    paths: list[str] = field(default_factory=list)


def load_image(path: str | Path, image_size: int, channels: int) -> np.ndarray:
    """Decode one image as a square ``image_size`` picture: the one decoder for ingest (training
    data) and prediction (served data), so both see the same pixels.

    The EXIF orientation is applied (phone photos are stored sideways), the short side is resized
    to ``image_size`` and the centre square kept, so no image is stretched. JPEGs are decoded at a
    reduced scale (1/2 to 1/8, never below the target) where that suffices: several times faster
    on photos much larger than the target.

    Returns:
        uint8 (C, H, W).

    Raises:
        DataError: naming the file when it cannot be decoded.
    """
    try:
        with Image.open(path) as img:
            img.draft(None, (image_size, image_size))  # JPEG only; a no-op for other formats
            img = ImageOps.exif_transpose(img).convert("L" if channels == 1 else "RGB")
            array = np.asarray(center_square(img, image_size), dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise DataError(f"{path}: cannot decode image ({e}); remove or replace the file") from None
    return array[None] if array.ndim == 2 else array.transpose(2, 0, 1)


def center_square(img: Image.Image, side: int) -> Image.Image:
    """The centre square of ``img`` (side: its short side), resized to ``side`` x ``side``."""
    w, h = img.size
    m = min(w, h)
    if w != h:  # cropped before resizing: resize's ``box`` would blend in pixels from outside it
        left, top = (w - m) // 2, (h - m) // 2
        img = img.crop((left, top, left + m, top + m))
    return img if m == side else img.resize((side, side), Image.Resampling.BILINEAR)


def decode_files(paths: Sequence[str | Path], image_size: int, channels: int,
                 skip_bad: bool = False) -> tuple[np.ndarray, list[dict[str, str]]]:
    """Decode ``paths`` with ``load_image`` into one array.

    Args:
        skip_bad: leave undecodable files out (listed in the second value) instead of raising.

    Returns:
        uint8 (n, C, H, W) of the decodable files in order, and ``{"path", "error"}`` per skipped file.
    """
    images = np.empty((len(paths), channels, image_size, image_size), dtype=np.uint8)
    bad: list[dict[str, str]] = []
    n = 0
    for path in paths:
        try:
            images[n] = load_image(path, image_size, channels)
            n += 1
        except DataError as e:
            if not skip_bad:
                raise
            bad.append({"path": str(path), "error": str(e)})
    return images[:n], bad


def list_image_folder(root: str | Path, classes: Sequence[str] | None = None,
                      labeled: bool = True) -> tuple[list[tuple[str, int]], list[str]]:
    """The image files of a folder and their labels, in the order ingest stores them.

    Args:
        root: ``root/<class>/*.png`` when ``labeled``, else any tree of images (all unlabeled).
        classes: class names in label order; default: the sorted sub-directory names of ``root``.
        labeled: whether the sub-directories name classes.

    Returns:
        ``(path, label)`` per file (label -1 when unlabeled), and the class names.
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
        files = [(str(p), label) for label, name in enumerate(classes) if (root / name).is_dir()
                 for p in image_files(root / name)]
    else:
        classes = list(classes or [])
        files = [(str(p), -1) for p in image_files(root)]
    if not files:
        raise DataError(f"{root}: no images ({', '.join(IMAGE_SUFFIXES)}) found")
    return files, list(classes)


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
    files, classes = list_image_folder(root, classes, labeled)
    images, _ = decode_files([p for p, _ in files], image_size, channels)
    labels = np.array([label for _, label in files], dtype=np.int64)
    return ImageFolderData(images, labels, [p for p, _ in files]), list(classes)
