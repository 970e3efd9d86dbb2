"""The dataset on disk, as the stages after ingest read it.

``data/dataset/shards/`` holds the images as ``.npy`` shards (``ssl_models.data.shards``),
``metadata.parquet`` one row per image, ``info.json`` the classes, counts and content version.
A split small enough (``ingest.in_memory_max_mb``) is read into RAM, the fastest path; a larger
one is a ``ShardedImages`` pool that reads the rows each batch needs, so memory does not grow
with the number of images.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from ssl_models.data.shards import ShardedImages, ShardReader
from tasks import paths
from tasks.io import read_json

if TYPE_CHECKING:  # torch is imported where tensors are made: ingest and validate never need it
    import torch

SHARDS = paths.SHARDS.relative_to(paths.DATASET_DIR)  # the images' directory inside a dataset directory
META_COLUMNS = ("index", "split", "label")  # what ``Dataset`` reads of the metadata table


class DatasetError(RuntimeError):
    """The dataset is missing or was not validated."""


@dataclass
class Dataset:
    """``images`` every image (N, C, H, W) uint8, read from the shards on demand; ``meta`` one row
    per image (``META_COLUMNS``: index, split, label, NA when unlabeled), ``classes`` the label
    names; a split up to ``in_memory_max_mb`` is loaded into RAM by ``split``."""

    images: ShardedImages
    meta: pd.DataFrame
    classes: list[str]
    version: str
    in_memory_max_mb: float = 1024.0

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def split(self, name: str, labeled: bool = False,
              stream: bool = False) -> tuple[torch.Tensor | ShardedImages, torch.Tensor]:
        """(images uint8 (n, C, H, W), labels int64 (n,), -1 where unlabeled) of one split, in index
        order; with ``labeled``, only its labeled images.

        The images are a tensor when they fit in ``in_memory_max_mb`` (and not ``stream``), else a
        ``ShardedImages`` pool (``pool[idx]`` reads a batch): callers that need a tensor of all of
        them should iterate ``pool.split(n)`` instead, and callers that read a sample of the split
        pass ``stream`` to read only the sample.
        """
        import torch

        mask = self.meta["split"] == name
        if labeled:
            mask &= self.meta["label"].notna()
        rows = self.meta[mask]
        labels = torch.from_numpy(rows["label"].fillna(-1).to_numpy(dtype=np.int64))
        index = rows["index"].to_numpy()
        return (self.images.subset(index) if stream else self.pool(index)), labels

    def pool(self, index: np.ndarray) -> torch.Tensor | ShardedImages:
        """The images at ``index``: read into RAM when they fit in ``in_memory_max_mb``, else a
        ``ShardedImages`` view that reads them a batch at a time."""
        pool = self.images.subset(index)
        return pool.load() if pool.nbytes <= self.in_memory_max_mb * 2**20 else pool

    def take(self, index: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """(images, labels) of the images at ``index``, in memory: for subsets known to be small."""
        import torch

        labels = self.meta.set_index("index").loc[index, "label"].fillna(-1).to_numpy(dtype=np.int64)
        return self.images.subset(index).load(), torch.from_numpy(labels)

    def labeled_subset(self, fraction: float, seed: int) -> np.ndarray:
        """Image indices of a stratified, seeded ``fraction`` of the labeled train images (at least
        one per class). Subsets are nested: a smaller fraction's images are in a larger one's."""
        train = self.meta[(self.meta["split"] == "train") & self.meta["label"].notna()]
        index = train["index"].to_numpy()
        return index[stratified_pick(train["label"].to_numpy(dtype=np.int64), fraction, np.random.default_rng(seed))]

    def stratified_split(self, index: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """Split ``index`` into (rest, held-out ``fraction``), stratified by label, at least one held
        out per class that has two images or more."""
        labels = self.meta.set_index("index").loc[index, "label"].to_numpy(dtype=np.int64)
        held_out = index[stratified_pick(labels, fraction, np.random.default_rng(seed + 1), min_group=2)]
        return np.setdiff1d(index, held_out), held_out


def stratified_pick(labels: np.ndarray, fraction: float, rng: np.random.Generator, min_group: int = 1) -> np.ndarray:
    """Positions of a stratified random ``fraction`` of ``labels``: for each label value (in
    sorted order) ``max(1, round(fraction * n))`` of its ``n`` members, in ascending order.
    Label values with fewer than ``min_group`` members give none."""
    chosen = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        members = members[rng.permutation(len(members))]
        if len(members) >= min_group:
            chosen.append(members[: max(1, round(fraction * len(members)))])
    return np.sort(np.concatenate(chosen)) if chosen else np.array([], dtype=np.int64)


def load_dataset(directory: Path = paths.DATASET_DIR, require_validation: bool = True,
                 in_memory_max_mb: float | None = None) -> Dataset:
    """Open the dataset written by ingest (reading no image yet).

    Args:
        require_validation: refuse unless ``reports/validation.json`` says it passed, so that no
            stage after validate ever trains on data that failed validation.
        in_memory_max_mb: the largest split ``split`` loads into RAM; default: ``ingest``'s
            setting, which the dataset records.
    """
    if not (directory / "info.json").exists() or not (directory / SHARDS).is_dir():
        raise DatasetError(f"{directory}: no dataset; run `sslpipe stage ingest` (or `dvc repro ingest`) first")
    info = read_json(directory / "info.json")
    if require_validation:
        if not paths.VALIDATION.exists():
            raise DatasetError(f"{paths.VALIDATION}: missing; run `sslpipe stage validate` first")
        report = read_json(paths.VALIDATION)
        if not report.get("passed") or report.get("data_version") != info["version"]:
            raise DatasetError(
                f"{paths.VALIDATION}: the dataset (version {info['version']}) has not passed validation; "
                f"see {paths.VALIDATION_SUMMARY} and fix the data"
            )
    images = ShardedImages(open_images(directory))
    meta = read_metadata(directory / "metadata.parquet")
    limit = in_memory_max_mb if in_memory_max_mb is not None else info.get("in_memory_max_mb", 1024.0)
    return Dataset(images, meta, list(info["classes"]), info["version"], float(limit))


def read_metadata(path: Path, columns: Sequence[str] = META_COLUMNS) -> pd.DataFrame:
    """The ``columns`` of a dataset's metadata table, with ``split`` as a categorical.

    Only what the stages use is read: the paths and hashes of a million images would cost
    hundreds of MB of strings, and pyarrow's allocator keeps the peak of a full read resident
    (measured: ~0.5 KB an image for all columns, ~0.15 KB for these three).
    """
    return pd.read_parquet(path, columns=list(columns), read_dictionary=["split"] if "split" in columns else None,
                           use_threads=False)


def open_images(directory: Path = paths.DATASET_DIR) -> ShardReader:
    """Every image of the dataset in ``directory`` as one array-like (numpy level, any dtype)."""
    return ShardReader.open(Path(directory) / SHARDS)
