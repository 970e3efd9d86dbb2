"""Each stage function on tiny synthetic data, in a temporary project directory: what it writes,
that its outputs are consistent with its inputs, and that a failing stage leaves the previous
outputs untouched (atomic writes)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from ssl_models.data import DataError
from tasks import paths
from tasks.config import EvaluateParams, FinetuneParams, ImageFolderParams, IngestParams, ValidateParams
from tasks.dataset import DatasetError, load_dataset, open_images
from tasks.ingest import ingest
from tasks.io import read_json
from tasks.models import build_encoder, load_classifier, load_encoder
from tasks.validate import validate
from tests.fixtures import write_fashion_mnist, write_image_folder
from tests.tasks.conftest import N_TEST, N_TRAIN, SIDE, ingest_params, tiny_pretrain_params


def dataset_bytes(directory: Path = paths.DATASET_DIR) -> dict[str, bytes]:
    return {p.relative_to(directory).as_posix(): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


# ------------------------------------------------------------------------------------- ingest
def test_ingest_fashion_mnist(project: Path, fashion_dir: Path) -> None:
    result = ingest(ingest_params(fashion_dir))
    assert (result.num_train, result.num_test, result.num_labeled_train) == (N_TRAIN, N_TEST, N_TRAIN)
    assert result.image_shape == [1, SIDE, SIDE] and len(result.classes) == 10
    images = open_images()[:]
    meta = pd.read_parquet(paths.METADATA)
    info = read_json(paths.DATASET_INFO)
    assert images.shape == (N_TRAIN + N_TEST, 1, SIDE, SIDE) and images.dtype == np.uint8
    assert len(meta) == len(images) and meta["id"].is_unique
    assert (meta["index"].to_numpy() == np.arange(len(images))).all()
    assert meta["split"].value_counts().to_dict() == {"train": N_TRAIN, "test": N_TEST}
    assert info["version"] == result.version and info["source"] == "fashion_mnist"
    # the images and labels are the files' own, in order
    from ssl_models.data import read_fashion_mnist

    raw = read_fashion_mnist(fashion_dir)
    np.testing.assert_array_equal(images[:N_TRAIN], raw["train"][0])
    np.testing.assert_array_equal(meta["label"].to_numpy()[N_TRAIN:].astype(int), raw["test"][1])
    import hashlib

    assert meta["sha1"].iloc[5] == hashlib.sha1(images[5].tobytes()).hexdigest()
    # deterministic: the same files give the same version
    assert ingest(ingest_params(fashion_dir)).version == result.version
    assert [p.name for p in paths.DATASET_DIR.parent.iterdir()] == ["dataset"]  # no temp dirs


def test_ingest_limit_is_stratified(project: Path, fashion_dir: Path) -> None:
    result = ingest(ingest_params(fashion_dir, limit_train=50, limit_test=20))
    assert (result.num_train, result.num_test) == (50, 20)
    meta = pd.read_parquet(paths.METADATA)
    train_counts = meta.loc[meta["split"] == "train", "label"].value_counts()
    assert set(train_counts) == {5}  # 5 of each of the 10 classes
    assert len(open_images()) == 70
    other = ingest(ingest_params(fashion_dir, limit_train=50, limit_test=20, seed=1))
    assert other.version != result.version  # another sample


def test_ingest_image_folder(project: Path, tmp_path: Path) -> None:
    write_image_folder(tmp_path / "train", {"ant": 6, "bee": 6, "cat": 6}, seed=0)
    write_image_folder(tmp_path / "test", {"ant": 2, "bee": 2, "cat": 2}, seed=1)
    write_image_folder(tmp_path / "pool", {"u": 5}, seed=2, labeled=False)
    cfg = IngestParams(source="image_folder", image_folder=ImageFolderParams(
        train_dir=str(tmp_path / "train"), test_dir=str(tmp_path / "test"), unlabeled_dir=str(tmp_path / "pool"),
        image_size=8, channels=3))
    result = ingest(cfg)
    assert result.classes == ["ant", "bee", "cat"]
    assert (result.num_train, result.num_test, result.num_labeled_train) == (23, 6, 18)
    assert result.image_shape == [3, 8, 8]
    meta = pd.read_parquet(paths.METADATA)
    train = meta[meta["split"] == "train"]
    assert train["label"].isna().sum() == 5
    assert all("/pool/" in s for s in train.loc[train["label"].isna(), "source"])
    assert (meta.loc[meta["split"] == "test", "label"].value_counts() == 2).all()
    assert validate(ValidateParams())["passed"]
    data = load_dataset()
    x, y = data.split("train")
    assert x.shape == (23, 3, 8, 8) and (y == -1).sum() == 5


def test_ingest_image_folder_carves_test_split(project: Path, tmp_path: Path) -> None:
    write_image_folder(tmp_path / "train", {"a": 8, "b": 8}, seed=0)
    cfg = IngestParams(source="image_folder", image_folder=ImageFolderParams(
        train_dir=str(tmp_path / "train"), image_size=8, channels=1, test_fraction=0.25))
    result = ingest(cfg)
    assert (result.num_train, result.num_test) == (12, 4)
    meta = pd.read_parquet(paths.METADATA)
    assert (meta.loc[meta["split"] == "test", "label"].value_counts() == 2).all()
    assert not set(meta.loc[meta["split"] == "test", "source"]) & set(meta.loc[meta["split"] == "train", "source"])


def test_ingest_image_folder_needs_a_source(project: Path) -> None:
    with pytest.raises(DataError, match="train_dir"):
        ingest(IngestParams(source="image_folder"))


def _truncate_gzip(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_failed_ingest_keeps_previous_dataset(project: Path, fashion_dir: Path, tmp_path: Path) -> None:
    ingest(ingest_params(fashion_dir))
    before = dataset_bytes()
    broken = tmp_path / "broken"
    shutil.copytree(fashion_dir, broken)
    bad = broken / "t10k-images-idx3-ubyte.gz"
    _truncate_gzip(bad)
    with pytest.raises(DataError) as e:
        ingest(ingest_params(broken))
    assert str(bad) in str(e.value)
    assert dataset_bytes() == before
    assert [p.name for p in paths.DATASET_DIR.parent.iterdir()] == ["dataset"]


def test_crash_while_writing_keeps_previous_dataset(project: Path, fashion_dir: Path, monkeypatch) -> None:
    ingest(ingest_params(fashion_dir))
    before = dataset_bytes()

    def crash(self, *args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(pd.DataFrame, "to_parquet", crash)
    with pytest.raises(OSError, match="disk full"):
        ingest(ingest_params(fashion_dir, limit_train=50))  # would write a different dataset
    assert dataset_bytes() == before
    assert [p.name for p in paths.DATASET_DIR.parent.iterdir()] == ["dataset"]  # temp dir removed


# ----------------------------------------------------------------------------------- validate
def test_validate_passes_on_good_data(ingested) -> None:
    with pytest.raises(DatasetError, match="validate"):
        load_dataset()  # not validated yet
    report = validate(ValidateParams())
    assert report["passed"] and report["data_version"] == ingested.version
    assert all(c["passed"] for c in report["checks"])
    names = {c["name"] for c in report["checks"]}
    assert {"images.shape", "images.dtype", "leakage.train_test", "labels.class_balance"} <= names
    assert read_json(paths.VALIDATION) == json.loads(json.dumps(report, default=str))
    assert "PASSED" in paths.VALIDATION_SUMMARY.read_text()
    assert report["summary"]["num_images"] == N_TRAIN + N_TEST
    data = load_dataset()
    assert data.num_classes == 10 and data.version == ingested.version
    x, y = data.split("test")
    assert x.shape == (N_TEST, 1, SIDE, SIDE) and x.dtype == torch.uint8 and (y >= 0).all()


def test_validate_without_dataset(project: Path) -> None:
    with pytest.raises(FileNotFoundError, match="ingest"):
        validate(ValidateParams())


def test_dataset_refuses_after_reingest_until_validated(validated, fashion_dir: Path) -> None:
    load_dataset()
    ingest(ingest_params(fashion_dir, limit_train=50))  # new data, old report
    with pytest.raises(DatasetError, match="not passed validation"):
        load_dataset()


# ----------------------------------------------------------------------------------- pretrain
def test_the_knn_monitor_fits_a_small_labeled_set(validated) -> None:
    """Asked for a bank as big as the labeled set (a smoke run on a small folder), the monitor keeps
    a fifth of the labels as queries instead of scoring none; one label is too few to monitor."""
    from tasks.pretrain import knn_monitor

    data = load_dataset()
    n_labeled = len(data.labeled_subset(1.0, 0))
    method = type("M", (), {})()
    method.encoder = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(SIDE * SIDE, 8))
    method.parameters = method.encoder.parameters
    top1 = knn_monitor(data, n_labeled, seed=0)(1, method)["knn_monitor_top1"]
    assert 0 <= top1 <= 1
    assert knn_monitor(data, 1, seed=0) is None


def test_pretrain_writes_encoder(pretrained: Path) -> None:
    encoder, blob = load_encoder(paths.ENCODER)
    assert blob["spec"]["backbone"] == "small_cnn" and blob["spec"]["width"] == 4
    assert blob["spec"]["in_channels"] == 1 and blob["method"] == "simclr"
    out = encoder.eval()(torch.rand(3, 1, SIDE, SIDE))
    assert out.shape == (3, 16) and torch.isfinite(out).all()
    # trained: differs from the same seed's initial weights
    torch.manual_seed(0)
    init = build_encoder(blob["spec"])
    assert any(not torch.equal(v, init.state_dict()[k]) for k, v in encoder.state_dict().items()
               if v.is_floating_point())
    report = read_json(paths.PRETRAIN_HISTORY)
    summary = report["summary"]
    assert summary["steps"] == N_TRAIN // 32 and summary["epochs"] == 1 and summary["resumed_from_step"] == 0
    assert np.isfinite(summary["final_loss"]) and 0 <= summary["knn_monitor_top1"] <= 1
    assert len(report["epochs"]) == 1
    lines = (paths.PLOTS / "pretrain_loss.csv").read_text().splitlines()
    assert lines[0] == "step,loss" and int(lines[-1].split(",")[0]) == summary["steps"]  # the last step is logged
    assert paths.PRETRAIN_CHECKPOINT.exists()


def test_pretrain_rerun_resumes_finished_checkpoint(pretrained: Path) -> None:
    from tasks.pretrain import pretrain

    before = load_encoder(paths.ENCODER)[0].state_dict()
    result = pretrain(tiny_pretrain_params(), progress=False, log_mlflow=False)
    assert result.resumed_from_step == result.steps == N_TRAIN // 32
    after = load_encoder(paths.ENCODER)[0].state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_pretrain_refuses_unvalidated_data(ingested) -> None:
    from tasks.pretrain import pretrain

    with pytest.raises(DatasetError):
        pretrain(tiny_pretrain_params(), progress=False, log_mlflow=False)
    assert not paths.ENCODER.exists()


# ---------------------------------------------------------------------------- finetune, evaluate
BEST = {arm: {"lr": 3e-3, "weight_decay": 1e-4, "epochs": 2, "encoder_lr_scale": 0.3 if arm.startswith("ssl") else 1.0}
        for arm in ("ssl_finetune", "ssl_fixmatch", "ssl_distill", "supervised", "fixmatch")}
FRACTIONS = [0.1, 0.5]


def finetune_params(**kw) -> FinetuneParams:
    return FinetuneParams(**{"label_fractions": FRACTIONS, "batch_size": 16, "min_steps": 8,
                             "fixmatch": {"mu": 1}, "distill": {"mu": 1}, **kw})


def test_finetune_needs_tuned_config(pretrained: Path) -> None:
    from tasks.finetune import finetune

    with pytest.raises(FileNotFoundError, match="best.json"):
        finetune(finetune_params(), progress=False, log_mlflow=False)


def test_finetune_then_evaluate(pretrained: Path) -> None:
    from tasks.evaluate import evaluate
    from tasks.finetune import finetune

    paths.BEST_CONFIG.parent.mkdir(parents=True)
    paths.BEST_CONFIG.write_text(json.dumps(BEST))
    result = finetune(finetune_params(arms=list(BEST)), progress=False, log_mlflow=False)  # all five, not the default three
    assert set(result.fractions) == {"0.1", "0.5"}
    assert result.fractions["0.1"]["num_labels"] == 20 and result.fractions["0.5"]["num_labels"] == 100
    assert result.fractions["0.5"]["num_val"] == 20 and result.fractions["0.5"]["num_train"] == 80  # val carved from the labels
    ssl_encoder, _ = load_encoder(paths.ENCODER)
    ssl_state = ssl_encoder.state_dict()
    for fraction in FRACTIONS:
        entry = result.fractions[f"{fraction:g}"]
        assert list(entry["arms"]) == list(BEST)  # every arm, teachers first
        for arm, row in entry["arms"].items():
            assert np.isfinite(row["final_train_loss"]) and row["lr"] == BEST[arm]["lr"] and 0 <= row["val_top1"] <= 1
            model, blob = load_classifier(paths.classifier_path(arm, fraction))
            assert blob["arm"] == arm and blob["fraction"] == fraction and blob["num_classes"] == 10
            assert blob["val_top1"] == row["val_top1"]
            assert model(torch.rand(2, 1, SIDE, SIDE)).shape == (2, 10)
            # ssl_* arms start from the SSL encoder and move it (at a smaller lr); baselines never saw it
            moved = not all(torch.equal(v, ssl_state[k]) for k, v in model.encoder.state_dict().items())
            assert moved
    assert read_json(paths.FINETUNE_REPORT) == json.loads(json.dumps(result.fractions))

    metrics = evaluate(EvaluateParams(embedding_plot_images=40), finetune_params(arms=list(BEST)), log_mlflow=False)
    on_disk = read_json(paths.METRICS)
    assert on_disk == json.loads(json.dumps(metrics))
    for key in ("knn_top1", "linear_top1", "knn_top1_raw_pixels", "knn_top1_random_init", "model_top1"):
        assert 0 <= on_disk[key] <= 1, key
    # the synthetic classes are separable in pixel space: kNN on pixels must find that, which
    # also shows that the test images and labels are aligned
    assert on_disk["knn_top1_raw_pixels"] > 0.9
    assert on_disk["num_test"] == N_TEST
    assert set(on_disk["fractions"]) == {"0.1", "0.5"}
    for fraction, n_labels in (("0.1", 20), ("0.5", 100)):
        entry = on_disk["fractions"][fraction]
        assert entry["num_labels"] == n_labels and list(entry["arms"]) == list(BEST)
        for scores in entry["arms"].values():
            assert 0 <= scores["val_top1"] <= 1 and 0 <= scores["test_top1"] <= 1
        # the arm that ships is the validation-best, whatever the test split says
        assert entry["selected"] == max(entry["arms"], key=lambda a: entry["arms"][a]["val_top1"])
    largest = on_disk["fractions"]["0.5"]
    assert on_disk["selected_arm"] == largest["selected"]
    assert on_disk["model_top1"] == largest["arms"][largest["selected"]]["test_top1"]
    assert on_disk["pretraining_paid_off"] == largest["selected"].startswith("ssl_")
    assert "per_class_top1" not in on_disk  # the headline only: `dvc metrics show` at a glance
    assert len(json.loads(paths.PER_CLASS.read_text())) == 10
    confusion = (paths.PLOTS / "confusion.csv").read_text().splitlines()
    assert confusion[0] == "actual,predicted" and len(confusion) == 1 + N_TEST
    for png in ("confusion_matrix.png", "embeddings_pca.png"):
        assert (paths.PLOTS / png).read_bytes()[:4] == b"\x89PNG"


def test_evaluate_needs_classifiers(pretrained: Path) -> None:
    from tasks.evaluate import evaluate

    with pytest.raises(FileNotFoundError, match="ssl_finetune"):
        evaluate(EvaluateParams(embedding_plot_images=10), finetune_params(), log_mlflow=False)
    assert not paths.METRICS.exists()


def test_write_fashion_mnist_fixture_is_separable(tmp_path: Path) -> None:
    """The fixture's premise: a nearest-neighbour on pixels separates its classes."""
    data = write_fashion_mnist(tmp_path, n_train=100, n_test=30, side=SIDE, seed=4)
    (x, y), (q, qy) = data["train"], data["test"]
    d = ((q[:, None].astype(float) - x[None].astype(float)) ** 2).sum((2, 3))
    assert (y[d.argmin(1)] == qy).mean() > 0.95
