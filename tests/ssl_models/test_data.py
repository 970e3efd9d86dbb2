"""Data readers: IDX files (plain and gzip), Fashion-MNIST's four files, image folders (EXIF
orientation, aspect ratio), image shards read a batch at a time in bounded memory; every
unreadable input is a DataError naming the file."""

from __future__ import annotations

import gzip
import os
import pickle
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ssl_models.data import (
    FASHION_MNIST_FILES,
    DataError,
    read_fashion_mnist,
    read_idx,
    read_image_folder,
)
from ssl_models.data.image_folder import load_image
from ssl_models.data.shards import ShardedImages, ShardReader, shard_files, write_shards
from tests.fixtures import (
    idx_bytes,
    write_fashion_mnist,
    write_idx,
    write_image_folder,
    write_png,
)


# ----------------------------------------------------------------------------------------- IDX
@pytest.mark.parametrize("gz", [True, False])
@pytest.mark.parametrize(
    "array",
    [
        np.arange(3 * 5 * 7, dtype=np.uint8).reshape(3, 5, 7),
        np.array([0, 9, 3, 3, 1], dtype=np.uint8),
        np.arange(-6, 6, dtype=np.int8).reshape(4, 3),
        np.array([[1, -70000], [2**30, 5]], dtype=np.int32),
        np.linspace(-1, 1, 10, dtype=np.float32).reshape(2, 5),
    ],
    ids=["uint8-3d", "uint8-1d", "int8", "int32", "float32"],
)
def test_read_idx_round_trip(tmp_path: Path, array: np.ndarray, gz: bool) -> None:
    path = write_idx(tmp_path / ("a.idx.gz" if gz else "a.idx"), array, gz=gz)
    out = read_idx(path)
    assert out.shape == array.shape
    assert out.dtype == array.dtype  # native byte order, whatever the file's
    np.testing.assert_array_equal(out, array)
    assert out.flags.writeable  # a copy, not a view of the file's bytes


def test_read_idx_gzip_detected_by_content_not_name(tmp_path: Path) -> None:
    array = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    path = write_idx(tmp_path / "no-suffix", array, gz=True)
    np.testing.assert_array_equal(read_idx(path), array)


def test_read_idx_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope-idx1-ubyte.gz"
    with pytest.raises(DataError, match="not found") as e:
        read_idx(path)
    assert str(path) in str(e.value)


def test_read_idx_truncated_gzip(tmp_path: Path) -> None:
    blob = gzip.compress(idx_bytes(np.zeros((50, 8, 8), dtype=np.uint8)))
    path = tmp_path / "images.gz"
    path.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(DataError, match="truncated or corrupt") as e:
        read_idx(path)
    assert str(path) in str(e.value)


@pytest.mark.parametrize(
    "blob",
    [b"\x01\x00\x08\x01\x00\x00\x00\x01x", b"\x00\x00\x42\x01\x00\x00\x00\x01x", b"\x00\x00", b"PNG garbage"],
    ids=["nonzero-lead", "unknown-type", "too-short", "text"],
)
def test_read_idx_bad_magic(tmp_path: Path, blob: bytes) -> None:
    path = tmp_path / "bad.idx"
    path.write_bytes(blob)
    with pytest.raises(DataError, match="not an IDX file") as e:
        read_idx(path)
    assert str(path) in str(e.value)


@pytest.mark.parametrize("delta", [-1, +3], ids=["short", "long"])
@pytest.mark.parametrize("gz", [True, False])
def test_read_idx_size_mismatch(tmp_path: Path, delta: int, gz: bool) -> None:
    data = idx_bytes(np.zeros((4, 6, 6), dtype=np.uint8))
    data = data[:delta] if delta < 0 else data + b"\x00" * delta
    path = tmp_path / "images.idx"
    path.write_bytes(gzip.compress(data) if gz else data)
    with pytest.raises(DataError, match=r"shape \(4, 6, 6\)") as e:
        read_idx(path)
    assert str(path) in str(e.value)


def test_read_idx_truncated_header(tmp_path: Path) -> None:
    path = tmp_path / "images.idx"
    path.write_bytes(b"\x00\x00\x08\x03\x00\x00\x00\x02")  # 3 dimensions announced, 1 given
    with pytest.raises(DataError, match="header truncated") as e:
        read_idx(path)
    assert str(path) in str(e.value)


# -------------------------------------------------------------------------------- Fashion-MNIST
@pytest.mark.parametrize("gz", [True, False])
def test_read_fashion_mnist(tmp_path: Path, gz: bool) -> None:
    written = write_fashion_mnist(tmp_path, n_train=60, n_test=20, side=28, seed=3, gz=gz)
    out = read_fashion_mnist(tmp_path)
    assert set(out) == {"train", "test"}
    for split, n in (("train", 60), ("test", 20)):
        images, labels = out[split]
        assert images.shape == (n, 1, 28, 28) and images.dtype == np.uint8
        assert labels.shape == (n,) and labels.dtype == np.int64
        assert set(labels.tolist()) <= set(range(10))
        np.testing.assert_array_equal(images[:, 0], written[split][0])
        np.testing.assert_array_equal(labels, written[split][1])


def test_read_fashion_mnist_prefers_gz_but_accepts_plain_mix(tmp_path: Path) -> None:
    write_fashion_mnist(tmp_path, n_train=20, n_test=10, side=8, gz=True)
    # one file uncompressed only: found under its plain name
    stem = FASHION_MNIST_FILES["test"][1]
    labels = read_idx(tmp_path / f"{stem}.gz")
    (tmp_path / f"{stem}.gz").unlink()
    write_idx(tmp_path / stem, labels, gz=False)
    np.testing.assert_array_equal(read_fashion_mnist(tmp_path)["test"][1], labels)


def test_read_fashion_mnist_missing_file_names_it(tmp_path: Path) -> None:
    write_fashion_mnist(tmp_path, n_train=20, n_test=10, side=8)
    (tmp_path / f"{FASHION_MNIST_FILES['train'][1]}.gz").unlink()
    with pytest.raises(DataError, match=FASHION_MNIST_FILES["train"][1]) as e:
        read_fashion_mnist(tmp_path)
    assert "fashion_mnist_dir" in str(e.value)  # says what to do


def test_read_fashion_mnist_label_count_mismatch(tmp_path: Path) -> None:
    write_fashion_mnist(tmp_path, n_train=20, n_test=10, side=8)
    label_path = tmp_path / f"{FASHION_MNIST_FILES['test'][1]}.gz"
    write_idx(label_path, np.zeros(9, dtype=np.uint8))
    with pytest.raises(DataError, match="9 labels for 10 images") as e:
        read_fashion_mnist(tmp_path)
    assert str(label_path) in str(e.value)


def test_read_fashion_mnist_rejects_non_image_array(tmp_path: Path) -> None:
    write_fashion_mnist(tmp_path, n_train=20, n_test=10, side=8)
    image_path = tmp_path / f"{FASHION_MNIST_FILES['train'][0]}.gz"
    write_idx(image_path, np.zeros((20, 64), dtype=np.uint8))  # 2-D: not (N, H, W)
    with pytest.raises(DataError, match="expected uint8 images") as e:
        read_fashion_mnist(tmp_path)
    assert str(image_path) in str(e.value)


# --------------------------------------------------------------------------------- image folder
@pytest.mark.parametrize("channels", [1, 3])
def test_read_image_folder_labeled(tmp_path: Path, channels: int) -> None:
    root = write_image_folder(tmp_path / "train", {"cat": 3, "ant": 4, "bee": 2})
    data, classes = read_image_folder(root, image_size=16, channels=channels)
    assert classes == ["ant", "bee", "cat"]  # sorted folder names
    assert data.images.shape == (9, channels, 16, 16) and data.images.dtype == np.uint8
    assert data.labels.dtype == np.int64
    assert sorted(data.labels.tolist()) == [0] * 4 + [1] * 2 + [2] * 3
    assert len(data.paths) == 9
    for path, label in zip(data.paths, data.labels):
        assert Path(path).parent.name == classes[label]


def test_read_image_folder_resizes_and_converts(tmp_path: Path) -> None:
    # one RGB image of constant colour, bigger than the target: resized and gray-converted exactly
    write_png(tmp_path / "root" / "a" / "x.png", np.full((40, 30, 3), (200, 100, 50), dtype=np.uint8))
    rgb, _ = read_image_folder(tmp_path / "root", image_size=8, channels=3)
    gray, _ = read_image_folder(tmp_path / "root", image_size=8, channels=1)
    assert rgb.images.shape == (1, 3, 8, 8)
    np.testing.assert_array_equal(rgb.images[0, :, 0, 0], [200, 100, 50])
    assert (rgb.images[0] == rgb.images[0, :, :1, :1]).all()
    expected_gray = round(0.299 * 200 + 0.587 * 100 + 0.114 * 50)
    assert gray.images.shape == (1, 1, 8, 8)
    assert abs(int(gray.images[0, 0, 3, 3]) - expected_gray) <= 1


def test_read_image_folder_explicit_class_order(tmp_path: Path) -> None:
    root = write_image_folder(tmp_path / "train", {"a": 2, "b": 3})
    data, classes = read_image_folder(root, image_size=8, channels=1, classes=["b", "a", "c"])
    assert classes == ["b", "a", "c"]
    assert sorted(data.labels.tolist()) == [0, 0, 0, 1, 1]


def test_read_image_folder_unknown_class_folder(tmp_path: Path) -> None:
    root = write_image_folder(tmp_path / "train", {"a": 1, "zebra": 1})
    with pytest.raises(DataError, match="zebra"):
        read_image_folder(root, image_size=8, channels=1, classes=["a"])


def test_read_image_folder_corrupt_png_names_file(tmp_path: Path) -> None:
    root = write_image_folder(tmp_path / "train", {"a": 2, "b": 2})
    bad = root / "b" / "broken.png"
    good = (root / "a" / "a_000.png").read_bytes()
    bad.write_bytes(good[: len(good) // 2])  # truncated PNG
    with pytest.raises(DataError) as e:
        read_image_folder(root, image_size=8, channels=3)
    assert str(bad) in str(e.value)

    bad.write_bytes(b"this is not an image")
    with pytest.raises(DataError) as e:
        read_image_folder(root, image_size=8, channels=3)
    assert str(bad) in str(e.value)


def test_read_image_folder_unlabeled(tmp_path: Path) -> None:
    root = tmp_path / "pool"
    write_image_folder(root, {"x": 3}, labeled=False)
    write_image_folder(root / "deeper" / "tree", {"y": 2}, labeled=False)
    (root / "notes.txt").write_text("not an image")
    data, classes = read_image_folder(root, image_size=12, channels=3, labeled=False)
    assert classes == []
    assert data.images.shape == (5, 3, 12, 12)
    assert (data.labels == -1).all()


def test_read_image_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found"):
        read_image_folder(tmp_path / "missing", image_size=8, channels=1)
    (tmp_path / "empty" / "a").mkdir(parents=True)
    with pytest.raises(DataError, match="no images") as e:
        read_image_folder(tmp_path / "empty", image_size=8, channels=1)
    assert str(tmp_path / "empty") in str(e.value)


# ------------------------------------------------------------------ decoding real-world photos
RED, BLUE, GREEN = (255, 0, 0), (0, 0, 255), (0, 160, 0)


def test_load_image_applies_the_exif_orientation(tmp_path: Path) -> None:
    # stored 20 wide x 10 high, left half red, right half blue; EXIF 6: "rotate 90 degrees clockwise
    # to display", so the photo is 10 wide x 20 high with red on top
    stored = np.zeros((10, 20, 3), dtype=np.uint8)
    stored[:, :10], stored[:, 10:] = RED, BLUE
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation
    path = tmp_path / "sideways.png"
    Image.fromarray(stored).save(path, exif=exif)
    image = load_image(path, 8, 3)  # (3, 8, 8): the centre square of the upright photo
    np.testing.assert_array_equal(image[:, 0, 4], RED)
    np.testing.assert_array_equal(image[:, 7, 4], BLUE)

    Image.fromarray(stored).save(path)  # without the tag: the centre square is red left, blue right
    image = load_image(path, 8, 3)
    np.testing.assert_array_equal(image[:, 4, 0], RED)
    np.testing.assert_array_equal(image[:, 4, 7], BLUE)


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_load_image_resizes_the_short_side_and_crops_the_centre(tmp_path: Path, suffix: str) -> None:
    # 200 wide x 100 high: black | green square | white. Kept aspect ratio: all green. Stretched, the
    # black and white bands would show at the sides.
    photo = np.zeros((100, 200, 3), dtype=np.uint8)
    photo[:, 50:150], photo[:, 150:] = GREEN, 255
    path = tmp_path / f"wide{suffix}"
    Image.fromarray(photo).save(path, **({"quality": 95} if suffix == ".jpg" else {}))
    inner = 0 if suffix == ".png" else 24  # JPEG's own loss; the outer columns also ring at the edges
    tall = tmp_path / f"tall{suffix}"
    Image.fromarray(np.ascontiguousarray(photo.transpose(1, 0, 2))).save(tall)  # 100 wide x 200 high
    for image, across in ((load_image(path, 16, 3), 2), (load_image(tall, 16, 3), 1)):
        assert image.shape == (3, 16, 16)
        error = np.abs(image.astype(int) - np.array(GREEN)[:, None, None])
        assert error.max() < 100  # stretched, the outer quarters would be black (160 off) and white
        assert np.delete(error, [0, 15], axis=across).max() <= inner


# ---------------------------------------------------------------------------------- shards
def _shards(tmp_path: Path, n: int = 50, rows: int = 8, shape: tuple[int, ...] = (2, 3, 3)) -> tuple[np.ndarray, Path]:
    images = np.random.default_rng(0).integers(0, 256, size=(n, *shape), dtype=np.uint8)
    write_shards(tmp_path / "shards", images, rows)
    return images, tmp_path / "shards"


def test_shard_reader_returns_the_rows_asked_for(tmp_path: Path) -> None:
    images, directory = _shards(tmp_path)
    reader = ShardReader.open(directory)
    assert len(shard_files(directory)) == 7 and reader.shape == images.shape and reader.dtype == np.uint8
    rng = np.random.default_rng(1)
    for rows in (rng.integers(0, 50, 40), np.arange(50), np.array([7, 8, 9, 8, 7, 49, 0, 0]),  # across shards, repeats
                 np.array([-1, -50]), np.array([], dtype=np.int64)):
        np.testing.assert_array_equal(reader[rows], images[rows])
    np.testing.assert_array_equal(reader[5:23], images[5:23])
    np.testing.assert_array_equal(reader[::-3], images[::-3])
    np.testing.assert_array_equal(reader[13], images[13])
    with pytest.raises(IndexError, match="50 out of range"):
        reader[np.array([3, 50])]


def test_sharded_images_index_like_a_tensor(tmp_path: Path) -> None:
    images, directory = _shards(tmp_path)
    tensor = torch.from_numpy(images)
    rows = np.arange(3, 45)
    pool = ShardedImages(ShardReader.open(directory)).subset(rows)  # a split: a view of some rows
    view = tensor[torch.from_numpy(rows)]
    assert pool.shape == view.shape and len(pool) == len(view)
    idx = torch.randint(0, len(view), (30,), generator=torch.Generator().manual_seed(0))
    assert torch.equal(pool[idx], view[idx])
    mask = torch.arange(len(view)) % 3 == 0
    assert torch.equal(pool[mask], view[mask])
    assert torch.equal(pool[4:11], view[4:11]) and torch.equal(pool[-1], view[-1])
    assert all(torch.equal(a, b) for a, b in zip(pool.split(16), view.split(16), strict=True))
    assert torch.equal(pool.load(), view)
    again = pickle.loads(pickle.dumps(pool))  # sent to another process as paths and row numbers
    assert torch.equal(again[idx], view[idx])


def test_a_truncated_shard_is_named(tmp_path: Path) -> None:
    _, directory = _shards(tmp_path)
    shard = shard_files(directory)[2]
    shard.write_bytes(shard.read_bytes()[:-5])
    reader = ShardReader.open(directory)
    with pytest.raises(DataError, match=str(shard)):
        reader[np.arange(50)]


def _rss_bytes() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_reading_a_pool_holds_a_batch_not_the_pool(tmp_path: Path) -> None:
    """A 48 MiB pool read in random batches of 256, then in chunks, as training and feature
    extraction read it: Python allocates about a batch at a time, and the resident memory does not
    grow towards the pool's size (the bytes stay in the page cache, outside the process)."""
    n, shape = 12 * 1024, (1, 64, 64)  # 4 KiB images
    block = np.random.default_rng(0).integers(0, 256, size=(1024, *shape), dtype=np.uint8)
    for k in range(n // 1024):  # 12 shards of 4 MiB, written without holding the pool
        write_shards(tmp_path / "shards", block, rows=1024, first=k)
    pool = ShardedImages(ShardReader.open(tmp_path / "shards"))
    assert pool.nbytes == 48 * 2**20
    order = torch.randperm(n, generator=torch.Generator().manual_seed(0))
    total = 0
    rss_before = _rss_bytes()
    tracemalloc.start()
    try:
        for batch in order.split(256):
            total += int(pool[batch][:, 0, 0, 0].sum())
        for chunk in pool.split(256):
            total += int(chunk[:, 0, 0, 0].sum())
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    rss_growth = _rss_bytes() - rss_before
    assert total == 2 * 12 * int(block[:, 0, 0, 0].sum())  # every image was read, twice
    assert peak < 4 * 2**20, f"{peak / 2**20:.1f} MiB allocated at once reading a 48 MiB pool"
    assert rss_growth < 12 * 2**20, f"resident memory grew {rss_growth / 2**20:.1f} MiB reading a 48 MiB pool"
