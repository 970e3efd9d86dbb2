"""Readers that turn files on disk into uint8 image arrays (N, C, H, W) and labels."""

from ssl_models.data.errors import DataError
from ssl_models.data.idx import read_idx
from ssl_models.data.image_folder import ImageFolderData, read_image_folder
from ssl_models.data.fashion_mnist import FASHION_MNIST_CLASSES, FASHION_MNIST_FILES, read_fashion_mnist

__all__ = [
    "DataError",
    "FASHION_MNIST_CLASSES",
    "FASHION_MNIST_FILES",
    "ImageFolderData",
    "read_fashion_mnist",
    "read_idx",
    "read_image_folder",
]
