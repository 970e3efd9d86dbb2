"""Ingest into shards: parallel decoding writes the same bytes as serial decoding, re-runs decode
only new or changed files, undecodable files stop ingest or are skipped and reported, and the
streamed pool reads exactly what the in-memory split holds."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from ssl_models.data import DataError
from ssl_models.data.shards import ShardedImages, shard_files
from tasks import paths
from tasks.config import IngestParams, ValidateParams
from tasks.dataset import load_dataset, open_images
from tasks.ingest import ingest
from tasks.io import read_json
from tasks.validate import validate
from tests.tasks.conftest import ingest_params

SIZE = 12  # the stored side: 3 x 12 x 12 = 432 bytes an image, 9 a shard of 4 KiB


def write_photos(root: Path, classes: dict[str, int], seed: int = 0) -> None:
    """``root/<class>/*.{png,jpg}``: images of random sizes and aspect ratios, gray and colour."""
    rng = np.random.default_rng(seed)
    for name, count in classes.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            h, w = rng.integers(8, 40, size=2)
            shape = (h, w) if i % 3 == 0 else (h, w, 3)
            Image.fromarray(rng.integers(0, 256, size=shape, dtype=np.uint8)).save(root / name / f"{i:03d}.{('png', 'jpg')[i % 2]}")


def folder_params(image_size: int = SIZE, **kw) -> IngestParams:
    base = {"source": "image_folder", "shard_mb": 4 / 1024, "workers": 1,
            "image_folder": {"train_dir": "photos/train", "image_size": image_size, "channels": 3, "test_fraction": 0.25}}
    return IngestParams(**{**base, **kw})


def files_of(directory: Path) -> dict[str, bytes]:
    return {p.relative_to(directory).as_posix(): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


@pytest.fixture
def photos(project: Path) -> Path:
    """The train folder, as the params name it: relative to the project (the working directory)."""
    write_photos(project / "photos" / "train", {"ant": 12, "bee": 10, "cat": 11})
    return Path("photos/train")


def test_parallel_ingest_writes_the_bytes_serial_ingest_writes(photos: Path) -> None:
    serial = ingest(folder_params(workers=1), Path("serial"))
    parallel = ingest(folder_params(workers=2), Path("parallel"))
    assert serial.decoded == parallel.decoded == 33 and serial.version == parallel.version
    assert len(shard_files(Path("parallel/shards"))) == 4  # 33 images, 9 a shard: both workers had work
    assert files_of(Path("serial")) == files_of(Path("parallel"))


def test_the_streamed_pool_reads_what_the_in_memory_split_holds(project: Path, fashion_dir: Path) -> None:
    ingest(ingest_params(fashion_dir, shard_mb=16 * 16 * 37 / 2**20))  # 37 images a shard: 8 shards
    validate(ValidateParams())
    assert len(shard_files(paths.SHARDS)) == 8
    for split in ("train", "test"):
        x, y = load_dataset().split(split)  # small: in memory
        pool, y_pool = load_dataset(in_memory_max_mb=0).split(split)
        assert isinstance(x, torch.Tensor) and isinstance(pool, ShardedImages)
        assert pool.shape == x.shape and torch.equal(y_pool, y)
        idx = torch.randint(0, len(x), (64,), generator=torch.Generator().manual_seed(0))
        assert torch.equal(pool[idx], x[idx]) and torch.equal(pool.load(), x)
    train, _ = load_dataset().split("train")
    assert torch.equal(train, torch.from_numpy(open_images()[: len(train)]))  # train rows come first


def test_an_undecodable_file_stops_ingest_with_its_path(photos: Path) -> None:
    bad = photos / "bee" / "broken.jpg"
    bad.write_bytes(b"not a jpeg")
    for workers in (1, 2):  # raised in a worker process too
        with pytest.raises(DataError, match=str(bad)):
            ingest(folder_params(workers=workers))
    assert not paths.DATASET_DIR.exists()


def test_skipped_files_are_left_out_and_every_one_is_in_the_validation_report(photos: Path) -> None:
    broken = [photos / "bee" / "broken.jpg", photos / "cat" / "empty.png", photos / "ant" / "half.png"]
    broken[0].write_bytes(b"not a jpeg")
    broken[1].write_bytes(b"")
    whole = (photos / "ant" / "000.png").read_bytes()
    broken[2].write_bytes(whole[: len(whole) // 2])

    result = ingest(folder_params(on_bad_file="skip", workers=2))

    assert sorted(s["path"] for s in result.skipped) == sorted(map(str, broken))
    meta_sources = set(pd.read_parquet(paths.METADATA, columns=["source"])["source"])
    assert len(meta_sources) == 33 and not meta_sources & set(map(str, broken))
    report = validate(ValidateParams(max_examples=1))  # fewer examples than skipped files: all listed anyway
    check = next(c for c in report["checks"] if c["name"] == "sources.skipped")
    assert check["passed"] and check["failures"] == 3 and "warnings" in report and "sources.skipped" in report["warnings"]
    assert sorted(e["path"] for e in check["examples"]) == sorted(map(str, broken))
    markdown = paths.VALIDATION_SUMMARY.read_text()
    assert all(str(p) in markdown for p in broken)


def test_a_grown_folder_decodes_only_its_new_and_changed_files(photos: Path) -> None:
    first = ingest(folder_params())
    assert (first.decoded, first.reused) == (33, 0)

    write_photos(photos.parent / "more", {"ant": 2, "bee": 2}, seed=5)
    for path in (photos.parent / "more").rglob("*.*"):
        path.rename(photos / path.parent.name / f"new-{path.name}")
    changed = photos / "cat" / "004.png"
    Image.fromarray(np.zeros((20, 20), dtype=np.uint8)).save(changed)  # new size and mtime
    os.utime(changed, ns=(0, 10**18))
    grown = ingest(folder_params())
    assert (grown.decoded, grown.reused) == (5, 32)

    fresh = ingest(folder_params(), Path("fresh"))  # decoding every file gives the same dataset
    assert fresh.decoded == 37
    assert files_of(paths.DATASET_DIR) == files_of(Path("fresh"))

    again = ingest(folder_params(image_size=SIZE + 2))  # other settings: nothing can be reused
    assert (again.decoded, again.reused) == (37, 0)


def test_shards_hold_about_shard_mb(photos: Path) -> None:
    ingest(folder_params(shard_mb=4 / 1024))
    sizes = [len(np.load(p)) for p in shard_files(paths.SHARDS)]
    assert sizes == [9, 9, 9, 6] and read_json(paths.DATASET_INFO)["image_shape"] == [3, SIZE, SIZE]
