"""Data validation: after a good ingest, each kind of corruption on disk is rejected with a message
and a report naming the failing check and example rows, and the next stages then refuse the data."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ssl_models.data import DataError
from tasks import paths
from tasks.config import ValidateParams
from tasks.dataset import DatasetError, load_dataset
from tasks.ingest import dataset_version, ingest
from tasks.io import read_json, write_json
from tasks.validate import ValidationFailed, validate
from tests.tasks.conftest import N_TEST, N_TRAIN, ingest_params


def _images() -> np.ndarray:
    return np.load(paths.IMAGES)


def _meta() -> pd.DataFrame:
    return pd.read_parquet(paths.METADATA)


def _save_images(images: np.ndarray) -> None:
    paths.IMAGES.unlink()  # the old file is read-only-ish memory-mapped elsewhere; replace it
    np.save(paths.IMAGES, images)


def _save_meta(meta: pd.DataFrame) -> None:
    """Write the table and keep info.json's version consistent with it, as ingest would."""
    meta.to_parquet(paths.METADATA, index=False)
    info = read_json(paths.DATASET_INFO)
    info["version"] = dataset_version(meta)
    write_json(paths.DATASET_INFO, info)


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


@pytest.mark.parametrize("kind", ["label_range", "nan_inf"])
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
