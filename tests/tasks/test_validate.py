"""Data validation: after a good ingest, each kind of corruption on disk is rejected with a message
and a report naming the failing check and example rows, and the next stages then refuse the data."""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ssl_models.data import FASHION_MNIST_FILES, DataError
from ssl_models.data.shards import write_shards
from tasks import paths
from tasks.config import ValidateParams
from tasks.dataset import DatasetError, load_dataset, open_images
from tasks.duplicates import signatures
from tasks.ingest import dataset_version, ingest
from tasks.io import read_json, write_json
from tasks.validate import ValidationFailed, validate
from tests.fixtures import balanced_labels, write_idx
from tests.tasks.conftest import N_TEST, N_TRAIN, SIDE, ingest_params
from tests.tasks.test_duplicates import blob_images, jpeg, pixels_changed, resized


def _images() -> np.ndarray:
    return open_images()[:]


def _meta() -> pd.DataFrame:
    return pd.read_parquet(paths.METADATA)


def _save_images(images: np.ndarray) -> None:
    """Replace the dataset's shards by ``images`` in shards of 64 rows (several, as ingest writes)."""
    shutil.rmtree(paths.SHARDS)
    write_shards(paths.SHARDS, images, rows=64)


def _save_meta(meta: pd.DataFrame) -> None:
    """Write the table and keep info.json's version consistent with it, as ingest would."""
    meta.to_parquet(paths.METADATA, index=False)
    info = read_json(paths.DATASET_INFO)
    info["version"] = dataset_version(meta)
    write_json(paths.DATASET_INFO, info)


def _set_image(row: int, image: np.ndarray) -> None:
    """Replace the image of metadata row ``row`` and its hash, as ingest would have written them."""
    images, meta = _images(), _meta()
    images[meta.loc[row, "index"]] = image
    _save_images(images)
    meta.loc[row, "sha1"] = hashlib.sha1(np.ascontiguousarray(image).tobytes()).hexdigest()
    _save_meta(meta)


def _train_rows(meta: pd.DataFrame) -> pd.Index:
    return meta.index[meta["split"] == "train"]


def _test_rows(meta: pd.DataFrame) -> pd.Index:
    return meta.index[meta["split"] == "test"]


# each corruption returns the id (or label) that the report's examples must show
def wrong_height_width() -> str:
    images = _images()
    _save_images(np.ascontiguousarray(images[:, :, :12, :]))
    return ""


def fewer_rows_than_metadata() -> str:
    _save_images(_images()[:-7])
    return ""


def nan_pixel() -> str:
    images = _images().astype(np.float32) / 255
    images[17, 0, 3, 4] = np.nan
    images[40, 0, 0, 0] = np.inf
    _save_images(images)
    return _meta()["id"].iloc[17]


def pixel_above_one() -> str:
    images = _images().astype(np.float32) / 255
    images[23, 0, 5, 5] = 1.5
    _save_images(images)
    return _meta()["id"].iloc[23]


def negative_pixel() -> str:
    images = _images().astype(np.float32) / 255
    images[9, 0, 1, 1] = -0.2
    _save_images(images)
    return _meta()["id"].iloc[9]


def label_out_of_range() -> str:
    meta = _meta()
    meta.loc[31, "label"] = 12
    _save_meta(meta)
    return "12"


def duplicate_ids() -> str:
    meta = _meta()
    meta.loc[5, "id"] = meta.loc[4, "id"]
    _save_meta(meta)
    return meta.loc[4, "id"]


def unlabeled_test_image() -> str:
    meta = _meta()
    row = _test_rows(meta)[3]
    meta.loc[row, "label"] = pd.NA
    _save_meta(meta)
    return meta.loc[row, "id"]


def unknown_split() -> str:
    meta = _meta()
    meta.loc[2, "split"] = "validation"
    _save_meta(meta)
    return "validation"


def train_test_leakage() -> str:
    images, meta = _images(), _meta()
    train_row, test_row = _train_rows(meta)[10], _test_rows(meta)[0]
    images[meta.loc[test_row, "index"]] = images[meta.loc[train_row, "index"]]
    _save_images(images)
    meta.loc[test_row, "sha1"] = meta.loc[train_row, "sha1"]  # ingest's hash of the new content
    _save_meta(meta)
    return meta.loc[test_row, "id"]


def class_imbalance() -> str:
    meta = _meta()
    rows = meta.index[(meta["split"] == "train") & (meta["label"] == 1)]
    meta.loc[rows[: len(rows) - 2], "label"] = 0  # class 1 nearly gone, class 0 doubled
    _save_meta(meta)
    return "Trouser"  # the class name of label 1


def bad_sha1() -> str:
    meta = _meta()
    meta.loc[7, "sha1"] = "not-a-hash"
    _save_meta(meta)
    return "not-a-hash"


def split_shapes_disagree() -> str:
    meta = _meta()
    meta.loc[_test_rows(meta), ["channels", "height", "width"]] = [3, 32, 32]  # what another test set would say
    _save_meta(meta)
    return meta.loc[_test_rows(meta)[0], "id"]


def blank_images() -> str:
    meta, images = _meta(), _images()
    train = _train_rows(meta)
    _set_image(train[3], np.zeros_like(images[0]))
    _set_image(train[4], np.full_like(images[0], 255))
    return meta.loc[train[3], "id"]


CORRUPTIONS: dict[str, tuple[Callable[[], str], list[str], str]] = {
    # name: (corrupt, failing checks that must be reported, words the message must contain)
    "wrong_shape": (wrong_height_width, ["images.image_shape", "metadata.height"], "info.json says"),
    "fewer_rows": (fewer_rows_than_metadata, ["images.shape"], "one metadata row per image"),
    "nan_inf": (nan_pixel, ["pixels.nonfinite"], "nonfinite"),
    "above_one": (pixel_above_one, ["pixels.max"], "less_than_or_equal_to(1.0)"),
    "negative": (negative_pixel, ["pixels.min"], "greater_than_or_equal_to(0.0)"),
    "label_range": (label_out_of_range, ["metadata.label"], "in_range"),
    "duplicate_ids": (duplicate_ids, ["metadata.id"], "field_uniqueness"),
    "unlabeled_test": (unlabeled_test_image, ["metadata.table"], "every test image needs a label"),
    "unknown_split": (unknown_split, ["metadata.split"], "isin"),
    "leakage": (train_test_leakage, ["leakage.train_test"], "also in train"),
    "imbalance": (class_imbalance, ["labels.class_balance"], "class shares outside"),
    "bad_sha1": (bad_sha1, ["metadata.sha1"], "str_matches"),
    "split_shapes": (split_shapes_disagree, ["splits.shape", "metadata.channels"],
                     f"train images are (1, {SIDE}, {SIDE}) but test images are (3, 32, 32)"),
    "degenerate": (blank_images, ["pixels.degenerate"], "2 constant images"),
}


@pytest.mark.parametrize("kind", sorted(CORRUPTIONS))
def test_validate_rejects_corruption(validated, kind: str) -> None:
    corrupt, expected_checks, words = CORRUPTIONS[kind]
    load_dataset()  # accepted before the corruption
    example = corrupt()
    with pytest.raises(ValidationFailed) as e:
        validate(ValidateParams())
    message = str(e.value)
    for name in expected_checks:
        assert f"- {name}:" in message, message
    assert words in message, message
    assert str(paths.VALIDATION_SUMMARY) in message  # says where to look

    report = read_json(paths.VALIDATION)
    assert report["passed"] is False
    failed = {c["name"]: c for c in report["checks"] if not c["passed"]}
    assert set(expected_checks) <= set(failed), sorted(failed)
    for name in expected_checks:
        assert failed[name]["failures"] >= 1 and failed[name]["message"]
    if example:
        shown = [str(v) for name in expected_checks for ex in failed[name]["examples"] or [] for v in ex.values()]
        assert any(example in v for v in shown), (example, shown)
    summary = paths.VALIDATION_SUMMARY.read_text()
    assert "FAILED" in summary and all(name in summary for name in expected_checks)

    with pytest.raises(DatasetError, match="not passed validation"):
        load_dataset()


@pytest.mark.parametrize("kind", ["label_range", "nan_inf", "degenerate"])
def test_only_the_corrupted_check_fails(validated, kind: str) -> None:
    corrupt, expected_checks, _ = CORRUPTIONS[kind]
    corrupt()
    with pytest.raises(ValidationFailed):
        validate(ValidateParams())
    failed = {c["name"] for c in read_json(paths.VALIDATION)["checks"] if not c["passed"]}
    assert failed == set(expected_checks)


def test_max_examples_limits_report(validated) -> None:
    meta = _meta()
    meta.loc[:9, "label"] = 12  # ten bad rows
    _save_meta(meta)
    with pytest.raises(ValidationFailed, match=r"metadata.label: .*\(10 failing\)"):
        validate(ValidateParams(max_examples=3))
    check = next(c for c in read_json(paths.VALIDATION)["checks"] if c["name"] == "metadata.label")
    assert check["failures"] == 10 and len(check["examples"]) == 3
    assert {e["id"] for e in check["examples"]} <= set(meta.loc[:9, "id"])


def test_class_balance_tolerance_is_configurable(validated) -> None:
    class_imbalance()
    with pytest.raises(ValidationFailed):
        validate(ValidateParams(class_balance_tolerance=0.5))
    assert validate(ValidateParams(class_balance_tolerance=1.5))["passed"]  # a looser bound accepts it


def test_truncated_gzip_is_caught_by_ingest(project: Path, fashion_dir: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(fashion_dir, broken)
    bad = broken / "train-labels-idx1-ubyte.gz"
    bad.write_bytes(bad.read_bytes()[:-10])
    with pytest.raises(DataError, match="truncated or corrupt") as e:
        ingest(ingest_params(broken))
    assert str(bad) in str(e.value)
    assert not paths.DATASET_DIR.exists()
    assert not Path("data").exists() or list(Path("data").iterdir()) == []
    with pytest.raises(DatasetError, match="no dataset"):
        load_dataset()


def test_report_summary_on_good_data(validated) -> None:
    report = read_json(paths.VALIDATION)
    s = report["summary"]
    assert (s["num_train"], s["num_test"], s["num_labeled_train"]) == (N_TRAIN, N_TEST, N_TRAIN)
    assert sum(s["class_counts"].values()) == N_TRAIN and len(s["class_counts"]) == 10
    assert s["dtype"] == "uint8" and 0 < s["pixel_mean"] < 255


# ------------------------------------------------- near-duplicates, duplicates in the pool, shapes
@pytest.fixture(scope="module")
def blob_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Fashion-MNIST-format files of 28x28 photo-like images (``blob_images``), all distinct."""
    directory = tmp_path_factory.mktemp("blobs")
    rng = np.random.default_rng(0)
    for split, n in (("train", N_TRAIN), ("test", N_TEST)):
        image_stem, label_stem = FASHION_MNIST_FILES[split]
        write_idx(directory / f"{image_stem}.gz", blob_images(n, 28, rng)[:, 0])
        write_idx(directory / f"{label_stem}.gz", balanced_labels(n, 10, rng))
    return directory


@pytest.fixture
def blobs_validated(project: Path, blob_dir: Path) -> None:
    ingest(ingest_params(blob_dir))
    report = validate(ValidateParams())
    assert not report["warnings"]  # distinct images: nothing near, nothing degenerate


def _check(name: str) -> dict:
    return next(c for c in read_json(paths.VALIDATION)["checks"] if c["name"] == name)


COPIES = {"jpeg90": jpeg, "resized": resized, "5_pixels": lambda im: pixels_changed(im, np.random.default_rng(0))}


def _plant_copy(kind: str, train_at: int = 10, test_at: int = 0) -> tuple[str, str]:
    """Make a test image a (changed) copy of a train image; returns (test id, train id)."""
    meta, images = _meta(), _images()
    train, test = _train_rows(meta)[train_at], _test_rows(meta)[test_at]
    _set_image(test, COPIES[kind](images[meta.loc[train, "index"]]))
    return meta.loc[test, "id"], meta.loc[train, "id"]


@pytest.mark.parametrize("kind", sorted(COPIES))
def test_near_copy_in_test_split_is_caught(blobs_validated, kind: str) -> None:
    test_id, train_id = _plant_copy(kind)
    with pytest.raises(ValidationFailed) as e:
        validate(ValidateParams())
    assert "- leakage.near_duplicates: 1 test images" in str(e.value) and test_id in str(e.value)
    report = read_json(paths.VALIDATION)
    assert {c["name"] for c in report["checks"] if not c["passed"]} == {"leakage.near_duplicates"}  # no exact copy
    [example] = _check("leakage.near_duplicates")["examples"]
    assert (example["test_id"], example["train_id"]) == (test_id, train_id)
    assert example["similarity"] >= ValidateParams().near_duplicate_similarity
    assert example["test_source"].endswith("#0") and example["train_source"].endswith("#10")
    summary = paths.VALIDATION_SUMMARY.read_text()
    assert test_id in summary and train_id in summary
    with pytest.raises(DatasetError, match="not passed validation"):
        load_dataset()  # nothing downstream runs


def test_near_copies_within_tolerance_pass_as_warning(blobs_validated) -> None:
    test_id, _ = _plant_copy("jpeg90")
    report = validate(ValidateParams(max_near_duplicate_fraction=0.05))  # 1 of 60 test images allowed
    assert report["passed"] and report["warnings"] == ["leakage.near_duplicates"]
    assert _check("leakage.near_duplicates")["examples"][0]["test_id"] == test_id
    assert "| leakage.near_duplicates | warn | 1 |" in paths.VALIDATION_SUMMARY.read_text()
    with pytest.raises(ValidationFailed, match="leakage.near_duplicates"):
        validate(ValidateParams(max_near_duplicate_fraction=0.05, near_duplicate_similarity=0.9))  # looser: more
    assert _check("leakage.near_duplicates")["failures"] > 1


def test_similar_but_distinct_images_are_not_near_duplicates(validated) -> None:
    """The synthetic images of one class share their bright square and differ only in noise."""
    images, meta = _images(), _meta()
    sigs = signatures(images)
    train, test = meta["split"].eq("train").to_numpy(), meta["split"].eq("test").to_numpy()
    closest = (sigs[:, test] @ sigs[:, train].transpose(0, 2, 1)).max()
    assert 0.98 < closest < ValidateParams().near_duplicate_similarity  # similar, not the same
    for name in ("leakage.near_duplicates", "duplicates.train"):
        assert _check(name)["passed"] and _check(name)["failures"] == 0


def test_duplicates_in_the_pool_are_reported(blobs_validated) -> None:
    meta, images = _meta(), _images()
    train = _train_rows(meta)
    _set_image(train[6], images[meta.loc[train[5], "index"]])  # an exact copy
    _set_image(train[8], jpeg(images[meta.loc[train[7], "index"]]))  # a re-encoded one
    report = validate(ValidateParams())  # 2 of 200: under the default 5 %
    assert report["passed"] and report["warnings"] == ["duplicates.train"]
    check = _check("duplicates.train")
    assert check["failures"] == 2 and "(1 exact, 1 near" in check["message"]
    pairs = {(e["train_id"], e["earlier_id"]) for e in check["examples"]}
    assert pairs == {(meta.loc[train[6], "id"], meta.loc[train[5], "id"]), (meta.loc[train[8], "id"], meta.loc[train[7], "id"])}
    with pytest.raises(ValidationFailed, match=r"- duplicates.train: 2 train images \(1.00%\)"):
        validate(ValidateParams(max_train_duplicate_fraction=0.005))


def test_degenerate_images_under_threshold_pass_as_warning(validated) -> None:
    blank_images()
    with pytest.raises(ValidationFailed, match="pixels.degenerate"):
        validate(ValidateParams())  # 2 of 260 > 0.1 %
    kinds = {e["kind"] for e in _check("pixels.degenerate")["examples"]}
    assert kinds == {"blank (all 0)", "blank (all 255)"}
    report = validate(ValidateParams(max_degenerate_fraction=0.01))
    assert report["passed"] and report["warnings"] == ["pixels.degenerate"]
