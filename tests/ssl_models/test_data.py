"""Data readers: IDX files (plain and gzip), Fashion-MNIST's four files, image folders; every
unreadable input is a DataError naming the file."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

from ssl_models.data import DataError, FASHION_MNIST_FILES, read_fashion_mnist, read_idx, read_image_folder
from tests.fixtures import idx_bytes, write_fashion_mnist, write_idx, write_image_folder, write_png


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
