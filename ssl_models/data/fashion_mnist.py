"""Fashion-MNIST (Xiao et al., 2017, arXiv:1708.07747) from its four IDX files."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ssl_models.data.errors import DataError
from ssl_models.data.idx import read_idx

FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
FASHION_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def _find(directory: Path, stem: str) -> Path:
    for name in (f"{stem}.gz", stem):
        if (directory / name).is_file():
            return directory / name
    raise DataError(
        f"{directory / (stem + '.gz')}: file not found. Install the Debian package "
        "`dataset-fashion-mnist`, point `ingest.fashion_mnist_dir` at a directory holding the "
        "four IDX files, or set `ingest.download: true` on a machine with internet."
    )


def read_fashion_mnist(directory: str | Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Read the train and test splits.

    Args:
        directory: holds the four IDX files, gzip-compressed or not.

    Returns:
        ``{"train": (images, labels), "test": (images, labels)}`` with images uint8 (N, 1, 28, 28)
        and labels int64 (N,).
    """
    directory = Path(directory)
    out = {}
    for split, (image_stem, label_stem) in FASHION_MNIST_FILES.items():
        image_path, label_path = _find(directory, image_stem), _find(directory, label_stem)
        images, labels = read_idx(image_path), read_idx(label_path)
        if images.ndim != 3 or images.dtype != np.uint8:
            raise DataError(f"{image_path}: expected uint8 images (N, H, W), got {images.dtype} {images.shape}")
        if labels.shape != (len(images),):
            raise DataError(
                f"{label_path}: {labels.shape[0] if labels.ndim else 0} labels for "
                f"{len(images)} images in {image_path.name}"
            )
        out[split] = (images[:, None], labels.astype(np.int64))
    return out


def download_fashion_mnist(directory: str | Path) -> Path:
    """Download the IDX files with torchvision (needs internet). Returns the directory holding them."""
    from torchvision.datasets import FashionMNIST

    for train in (True, False):
        FashionMNIST(root=str(directory), train=train, download=True)
    return Path(directory) / "FashionMNIST" / "raw"
