"""Stage 1 -- ingest: images from Fashion-MNIST IDX files or an image folder -> ``data/dataset``
(``images.npy`` + ``metadata.parquet`` + ``info.json``), written atomically."""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ssl_models.data import FASHION_MNIST_CLASSES, DataError, read_fashion_mnist, read_image_folder
from ssl_models.data.fashion_mnist import download_fashion_mnist
from tasks import paths
from tasks.config import IngestParams
from tasks.dataset import stratified_pick
from tasks.io import atomic_dir, write_json


@dataclass
class Split:
    images: np.ndarray  # uint8 (N, C, H, W)
    labels: np.ndarray  # int64 (N,), -1 = unlabeled
    sources: list[str]


@dataclass
class IngestResult:
    num_train: int
    num_test: int
    num_labeled_train: int
    classes: list[str]
    image_shape: list[int]
    version: str


def _fashion_mnist(cfg: IngestParams) -> tuple[dict[str, Split], list[str]]:
    directory = Path(cfg.fashion_mnist_dir)
    try:
        splits = read_fashion_mnist(directory)
    except DataError:
        if not cfg.download:
            raise
        directory = download_fashion_mnist(paths.DOWNLOADS)
        splits = read_fashion_mnist(directory)
    out = {
        name: Split(images, labels, [f"{directory}/{name}#{i}" for i in range(len(images))])
        for name, (images, labels) in splits.items()
    }
    return out, list(FASHION_MNIST_CLASSES)


def _image_folder(cfg: IngestParams) -> tuple[dict[str, Split], list[str]]:
    f = cfg.image_folder
    if not f.train_dir and not f.unlabeled_dir:
        raise DataError("ingest.image_folder: set train_dir (root/<class>/*.png) and/or unlabeled_dir")
    classes = f.classes
    parts: list[Split] = []
    if f.train_dir:
        data, classes = read_image_folder(f.train_dir, f.image_size, f.channels, classes)
        parts.append(Split(data.images, data.labels, data.paths))
    if f.test_dir:
        data, _ = read_image_folder(f.test_dir, f.image_size, f.channels, classes)
        test = Split(data.images, data.labels, data.paths)
    elif parts:
        train = parts[0]
        held = stratified_pick(train.labels, f.test_fraction, np.random.default_rng(cfg.seed))
        keep = np.setdiff1d(np.arange(len(train.labels)), held)
        test = Split(train.images[held], train.labels[held], [train.sources[i] for i in held])
        parts[0] = Split(train.images[keep], train.labels[keep], [train.sources[i] for i in keep])
    else:
        raise DataError("ingest.image_folder: a labeled train_dir or test_dir is needed to evaluate on")
    if f.unlabeled_dir:
        data, _ = read_image_folder(f.unlabeled_dir, f.image_size, f.channels, classes, labeled=False)
        parts.append(Split(data.images, data.labels, data.paths))
    train = Split(
        np.concatenate([p.images for p in parts]),
        np.concatenate([p.labels for p in parts]),
        [s for p in parts for s in p.sources],
    )
    if not classes:
        raise DataError("ingest.image_folder: no classes found; put labeled images in train_dir/<class>/")
    return {"train": train, "test": test}, list(classes)


def _limit(split: Split, limit: int | None, seed: int) -> Split:
    if limit is None or limit >= len(split.labels):
        return split
    idx = stratified_pick(split.labels, limit / len(split.labels), np.random.default_rng(seed))[:limit]
    return Split(split.images[idx], split.labels[idx], [split.sources[i] for i in idx])


def build_metadata(splits: dict[str, Split]) -> tuple[np.ndarray, pd.DataFrame]:
    """Stack the splits into one array and describe each image in a table."""
    images = np.concatenate([s.images for s in splits.values()])
    flat = images.reshape(len(images), -1)
    rows = []
    offset = 0
    for name, s in splits.items():
        n = len(s.labels)
        rows.append(pd.DataFrame({
            "id": [f"{name}-{i:06d}" for i in range(n)],
            "index": np.arange(offset, offset + n, dtype=np.int64),
            "split": name,
            "label": pd.array(np.where(s.labels >= 0, s.labels, -1), dtype="Int64"),
            "source": s.sources,
        }))
        offset += n
    meta = pd.concat(rows, ignore_index=True)
    meta.loc[meta["label"] < 0, "label"] = pd.NA
    meta["sha1"] = [hashlib.sha1(row.tobytes()).hexdigest() for row in flat]
    c, h, w = images.shape[1:]
    meta["channels"], meta["height"], meta["width"] = c, h, w
    return images, meta


def dataset_version(meta: pd.DataFrame) -> str:
    """A content fingerprint: the hashes, splits and labels of every image, in order."""
    digest = hashlib.sha256()
    for col in ("sha1", "split", "label"):
        digest.update("\n".join(str(v) for v in meta[col]).encode())  # NA -> "<NA>" (astype(str) keeps NaN)
    return digest.hexdigest()[:16]


def ingest(cfg: IngestParams, out_dir: Path = paths.DATASET_DIR) -> IngestResult:
    """Read the configured source and write the dataset to ``out_dir`` atomically.

    Raises:
        DataError: naming the file that cannot be read, and what to do.
    """
    splits, classes = _fashion_mnist(cfg) if cfg.source == "fashion_mnist" else _image_folder(cfg)
    splits["train"] = _limit(splits["train"], cfg.limit_train, cfg.seed)
    splits["test"] = _limit(splits["test"], cfg.limit_test, cfg.seed)
    images, meta = build_metadata(splits)
    version = dataset_version(meta)
    result = IngestResult(
        num_train=int((meta["split"] == "train").sum()),
        num_test=int((meta["split"] == "test").sum()),
        num_labeled_train=int(((meta["split"] == "train") & meta["label"].notna()).sum()),
        classes=classes,
        image_shape=list(images.shape[1:]),
        version=version,
    )
    with atomic_dir(out_dir) as tmp:
        np.save(tmp / "images.npy", images)
        meta.to_parquet(tmp / "metadata.parquet", index=False)
        write_json(tmp / "info.json", {**asdict(result), "source": cfg.source})
    return result
