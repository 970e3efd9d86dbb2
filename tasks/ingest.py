"""Stage 1 -- ingest: images from Fashion-MNIST IDX files or an image folder -> ``data/dataset``
(``shards/NNNNN.npy`` + ``metadata.parquet`` + ``info.json``), written atomically.

Image folders are decoded in parallel: the files, in their final order, are cut into shards of
``shard_mb``, and each shard is one task for a pool of ``workers`` processes that decodes its files
and writes its shard. The cut does not depend on the number of workers, so neither do the bytes
written. Ingest is incremental: a file whose path, size and mtime match a row of the dataset
already in ``out_dir``, decoded with the same settings, is copied from that dataset's shards instead
of being decoded again.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ssl_models.data import FASHION_MNIST_CLASSES, DataError, read_fashion_mnist
from ssl_models.data.fashion_mnist import download_fashion_mnist
from ssl_models.data.image_folder import DECODER, list_image_folder, load_image
from ssl_models.data.shards import ShardReader, rows_per_shard, shard_name
from tasks import paths
from tasks.config import IngestParams
from tasks.dataset import SHARDS, stratified_pick
from tasks.io import atomic_dir, read_json, write_json


@dataclass
class Split:
    """The images of one split, in order: decoded already (``images``), or files to decode."""

    labels: np.ndarray  # int64 (N,), -1 = unlabeled
    sources: list[str]
    images: np.ndarray | None = None  # uint8 (N, C, H, W); None: decode ``sources``

    def pick(self, idx: np.ndarray) -> Split:
        return Split(self.labels[idx], [self.sources[i] for i in idx], None if self.images is None else self.images[idx])


@dataclass
class IngestResult:
    num_train: int
    num_test: int
    num_labeled_train: int
    classes: list[str]
    image_shape: list[int]
    version: str
    decoded: int = 0  # image files decoded by this run
    reused: int = 0  # image files copied from the previous dataset (unchanged path, size and mtime)
    skipped: list[dict[str, str]] = field(default_factory=list)  # {"path", "error"}; with on_bad_file: skip


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
        name: Split(labels, [f"{directory}/{name}#{i}" for i in range(len(images))], images)
        for name, (images, labels) in splits.items()
    }
    return out, list(FASHION_MNIST_CLASSES)


def _folder(root: str, classes: list[str] | None, labeled: bool = True) -> tuple[Split, list[str]]:
    files, classes = list_image_folder(root, classes, labeled)
    return Split(np.array([label for _, label in files], dtype=np.int64), [p for p, _ in files]), classes


def _image_folder(cfg: IngestParams) -> tuple[dict[str, Split], list[str]]:
    """The files of the configured folders and their labels, in order; nothing is decoded here."""
    f = cfg.image_folder
    if not f.train_dir and not f.unlabeled_dir:
        raise DataError("ingest.image_folder: set train_dir (root/<class>/*.png) and/or unlabeled_dir")
    classes = f.classes
    parts: list[Split] = []
    if f.train_dir:
        train, classes = _folder(f.train_dir, classes)
        parts.append(train)
    if f.test_dir:
        test, _ = _folder(f.test_dir, classes)
    elif parts:
        train = parts[0]
        held = stratified_pick(train.labels, f.test_fraction, np.random.default_rng(cfg.seed))
        test, parts[0] = train.pick(held), train.pick(np.setdiff1d(np.arange(len(train.labels)), held))
    else:
        raise DataError("ingest.image_folder: a labeled train_dir or test_dir is needed to evaluate on")
    if f.unlabeled_dir:
        parts.append(_folder(f.unlabeled_dir, classes, labeled=False)[0])
    train = Split(np.concatenate([p.labels for p in parts]), [s for p in parts for s in p.sources])
    if not classes:
        raise DataError("ingest.image_folder: no classes found; put labeled images in train_dir/<class>/")
    return {"train": train, "test": test}, list(classes)


def _limit(split: Split, limit: int | None, seed: int) -> Split:
    if limit is None or limit >= len(split.labels):
        return split
    return split.pick(stratified_pick(split.labels, limit / len(split.labels), np.random.default_rng(seed))[:limit])


# ------------------------------------------------------------------------------- writing shards
@dataclass
class ShardJob:
    """One shard to write: the files to decode (or rows of the previous dataset to copy)."""

    path: Path
    sources: list[str]
    stats: list[tuple[int, int]]  # (size, mtime_ns) per file, read before decoding
    reuse: np.ndarray  # row of each file in ``previous``, -1: decode it
    previous: ShardReader | None
    image_size: int
    channels: int
    skip_bad: bool


@dataclass
class ShardDone:
    kept: list[int]  # positions in the job of the images written (all but skipped files)
    sha1: list[str]
    skipped: list[dict[str, str]]
    decoded: int


def write_shard(job: ShardJob) -> ShardDone:
    """Decode (or copy) one shard's images and write the shard; run in a worker process."""
    n, side = len(job.sources), job.image_size
    images = np.empty((n, job.channels, side, side), dtype=np.uint8)
    copy = job.reuse >= 0
    copied = iter(job.previous.read(job.reuse[copy]) if copy.any() and job.previous else ())
    kept, skipped, decoded = [], [], 0
    for i, path in enumerate(job.sources):
        if copy[i]:
            images[len(kept)] = next(copied)
        else:
            try:
                images[len(kept)] = load_image(path, side, job.channels)
                decoded += 1
            except DataError as e:
                if not job.skip_bad:
                    raise
                skipped.append({"path": path, "error": str(e)})
                continue
        kept.append(i)
    images = images[: len(kept)]
    if len(kept):
        np.save(job.path, images)
    return ShardDone(kept, [hashlib.sha1(row.tobytes()).hexdigest() for row in images], skipped, decoded)


def run_jobs(jobs: list[ShardJob], workers: int) -> list[ShardDone]:
    """``write_shard`` over ``jobs``, in order, with ``workers`` processes (1: in this process).

    Workers are forked: they start in milliseconds (a spawned one would import pandas again, ~0.5 s)
    and only decode with PIL and numpy, none of the parent's threaded libraries."""
    if workers <= 1 or len(jobs) <= 1:
        return [write_shard(job) for job in jobs]
    with ProcessPoolExecutor(min(workers, len(jobs)), mp_context=multiprocessing.get_context("fork")) as pool:
        return list(pool.map(write_shard, jobs))


def _stat(source: str) -> tuple[int, int]:
    try:
        st = os.stat(source)
    except OSError as e:
        raise DataError(f"{source}: cannot read ({e.strerror}); remove the file or fix its permissions") from None
    return st.st_size, st.st_mtime_ns


def decode_settings(cfg: IngestParams) -> dict[str, Any]:
    """What an image's pixels depend on besides its file: equal settings let ingest reuse a row."""
    f = cfg.image_folder
    return {"image_size": f.image_size, "channels": f.channels, "decoder": DECODER}


def previous_rows(out_dir: Path, settings: dict[str, Any]) -> tuple[ShardReader | None, dict[tuple[str, int, int], int]]:
    """The dataset already in ``out_dir`` and its rows by (path, size, mtime_ns) of their files;
    nothing when it is missing, unreadable, or decoded with other settings."""
    try:
        info = read_json(out_dir / "info.json")
        if info.get("decode") != settings:
            return None, {}
        meta = pd.read_parquet(out_dir / "metadata.parquet", columns=["index", "source", "source_size", "source_mtime_ns"])
        reader = ShardReader.open(out_dir / SHARDS)
    except (OSError, ValueError, KeyError, DataError):
        return None, {}
    meta = meta.dropna()
    keys = zip(meta["source"], meta["source_size"].astype(np.int64), meta["source_mtime_ns"].astype(np.int64))
    return reader, {(s, int(size), int(mtime)): int(i) for (s, size, mtime), i in zip(keys, meta["index"])}


def _decode_all(sources: list[str], cfg: IngestParams, out_dir: Path, shards: Path) -> tuple[list[ShardDone], list[ShardJob], int]:
    """Write the shards of image files ``sources`` (in order) into ``shards``."""
    f = cfg.image_folder
    settings = decode_settings(cfg)
    previous, known = previous_rows(out_dir, settings)
    stats = [_stat(s) for s in sources]
    reuse = np.array([known.get((s, *st), -1) for s, st in zip(sources, stats)], dtype=np.int64)
    rows = rows_per_shard((f.channels, f.image_size, f.image_size), cfg.shard_mb)
    jobs = [ShardJob(shards / shard_name(k), sources[a : a + rows], stats[a : a + rows], reuse[a : a + rows],
                     previous, f.image_size, f.channels, cfg.on_bad_file == "skip")
            for k, a in enumerate(range(0, len(sources), rows))]
    workers = cfg.workers or os.cpu_count() or 1
    return run_jobs(jobs, workers), jobs, int((reuse >= 0).sum())


def _store_arrays(images: np.ndarray, cfg: IngestParams, shards: Path) -> list[str]:
    """Write decoded images (Fashion-MNIST) as shards; their hashes."""
    rows = rows_per_shard(images.shape[1:], cfg.shard_mb)
    for k, a in enumerate(range(0, len(images), rows)):
        np.save(shards / shard_name(k), np.ascontiguousarray(images[a : a + rows]))
    return [hashlib.sha1(row.tobytes()).hexdigest() for row in images.reshape(len(images), -1)]


def build_metadata(splits: dict[str, Split], sha1: list[str], stats: list[tuple[int, int]] | None,
                   image_shape: tuple[int, int, int]) -> pd.DataFrame:
    """One row per stored image: the splits' images in order, each with its hash (and, for image
    files, the size and mtime that incremental ingest matches)."""
    rows, offset = [], 0
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
    meta["sha1"] = sha1
    meta["channels"], meta["height"], meta["width"] = image_shape
    sizes, mtimes = zip(*stats) if stats else ([None] * len(meta), [None] * len(meta))
    meta["source_size"] = pd.array(sizes, dtype="Int64")
    meta["source_mtime_ns"] = pd.array(mtimes, dtype="Int64")
    return meta


def dataset_version(meta: pd.DataFrame) -> str:
    """A content fingerprint: the hashes, splits and labels of every image, in order."""
    digest = hashlib.sha256()
    for col in ("sha1", "split", "label"):
        digest.update("\n".join(str(v) for v in meta[col]).encode())  # NA -> "<NA>" (astype(str) keeps NaN)
    return digest.hexdigest()[:16]


def _kept(splits: dict[str, Split], done: list[ShardDone], jobs: list[ShardJob]) -> tuple[dict[str, Split], list[tuple[int, int]]]:
    """The splits without the skipped files, and the (size, mtime_ns) of each image kept."""
    positions = np.array([a + i for a, d in zip(np.cumsum([0] + [len(j.sources) for j in jobs]), done) for i in d.kept],
                         dtype=np.int64)
    stats = [st for j, d in zip(jobs, done) for st in (j.stats[i] for i in d.kept)]
    out, offset = {}, 0
    for name, s in splits.items():
        mine = positions[(positions >= offset) & (positions < offset + len(s.labels))] - offset
        out[name], offset = s.pick(mine), offset + len(s.labels)
    return out, stats


def ingest(cfg: IngestParams, out_dir: Path = paths.DATASET_DIR) -> IngestResult:
    """Read the configured source and write the dataset to ``out_dir`` atomically.

    Raises:
        DataError: naming the file that cannot be read, and what to do.
    """
    splits, classes = _fashion_mnist(cfg) if cfg.source == "fashion_mnist" else _image_folder(cfg)
    splits["train"] = _limit(splits["train"], cfg.limit_train, cfg.seed)
    splits["test"] = _limit(splits["test"], cfg.limit_test, cfg.seed)
    decoded = reused = 0
    skipped: list[dict[str, str]] = []
    stats = None
    with atomic_dir(out_dir) as tmp:
        shards = tmp / SHARDS
        shards.mkdir()
        if cfg.source == "fashion_mnist":
            images = np.concatenate([s.images for s in splits.values()])
            shape = images.shape[1:]
            sha1 = _store_arrays(images, cfg, shards)
            del images
        else:
            f = cfg.image_folder
            shape = (f.channels, f.image_size, f.image_size)
            done, jobs, reused = _decode_all([s for split in splits.values() for s in split.sources], cfg, out_dir, shards)
            splits, stats = _kept(splits, done, jobs)
            sha1 = [h for d in done for h in d.sha1]
            decoded = sum(d.decoded for d in done)
            skipped = [s for d in done for s in d.skipped]
            if not sha1:
                raise DataError(f"ingest.image_folder: none of the {len(skipped)} images could be decoded; "
                                f"the first: {skipped[0]['error'] if skipped else '-'}")
        meta = build_metadata(splits, sha1, stats, tuple(shape))
        result = IngestResult(
            num_train=int((meta["split"] == "train").sum()),
            num_test=int((meta["split"] == "test").sum()),
            num_labeled_train=int(((meta["split"] == "train") & meta["label"].notna()).sum()),
            classes=classes, image_shape=list(shape), version=dataset_version(meta),
            decoded=decoded, reused=reused, skipped=skipped,
        )
        meta.to_parquet(tmp / "metadata.parquet", index=False)
        content = {k: v for k, v in asdict(result).items() if k not in ("decoded", "reused")}  # the same for any run
        write_json(tmp / "info.json", {**content, "source": cfg.source, "in_memory_max_mb": cfg.in_memory_max_mb,
                                       **({"decode": decode_settings(cfg)} if cfg.source == "image_folder" else {})})
    return result
