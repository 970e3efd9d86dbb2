"""Predicting with a registered model: what MLflow serves names the classes, errors name the image
or folder at fault, unreadable images are skipped (or fail, when strict), and the registry's rule
scores both this output and the bare probabilities of versions registered before it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ssl_models.classifier import Classifier
from ssl_models.data import DataError
from tasks.models import build_encoder, encoder_spec
from tasks.predict import image_files, load_images, predict_files

CLASSES = ["boot", "coat", "shirt"]
SIDE = 16


def write_images(folder: Path, n: int = 4) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    files = [folder / f"img_{i}.png" for i in range(n)]
    for f in files:
        Image.fromarray(rng.integers(0, 256, (SIDE, SIDE), dtype=np.uint8)).save(f)
    return files


def test_an_empty_folder_and_a_missing_path_are_named(tmp_path: Path) -> None:
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "notes.txt").write_text("not an image")
    with pytest.raises(DataError, match=f"{tmp_path / 'empty'}: no images"):
        image_files([tmp_path / "empty"])
    with pytest.raises(FileNotFoundError, match="missing.png"):
        image_files([tmp_path / "missing.png"])


def test_unreadable_images_are_skipped_and_named_or_fail_when_strict(tmp_path: Path) -> None:
    good = write_images(tmp_path / "images")
    broken = tmp_path / "images" / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    files = image_files([tmp_path / "images"])
    x, readable, skipped = load_images(files, (1, SIDE, SIDE))
    assert x.shape == (len(good), 1, SIDE, SIDE) and readable == sorted(good)
    assert len(skipped) == 1 and skipped[0].startswith(f"{broken}: cannot decode image")
    with pytest.raises(DataError, match=f"{broken}: cannot decode image"):
        load_images(files, (1, SIDE, SIDE), strict=True)


def test_a_text_file_is_blamed_not_the_model(tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("not an image")
    with pytest.raises(DataError, match=f"^{text}: cannot decode image"):
        load_images(image_files([text]), (1, SIDE, SIDE))


def tiny_classifier() -> Classifier:
    torch.manual_seed(0)
    return Classifier(build_encoder(encoder_spec("small_cnn", 1, 4, [0.5], [0.25])), len(CLASSES)).eval()


def served_answer(model, x: np.ndarray) -> list[dict]:
    """The predictions `mlflow models serve` answers for ``x`` (its scoring app, in process)."""
    from fastapi.testclient import TestClient
    from mlflow.pyfunc import scoring_server

    response = TestClient(scoring_server.init(model)).post("/invocations", json={"inputs": x.tolist()})
    assert response.status_code == 200, response.text
    return response.json()["predictions"]


def test_the_served_model_names_the_classes_and_the_rule_scores_it(project: Path, tmp_path: Path) -> None:
    """Through MLflow pyfunc (as `mlflow models serve` loads it): a ``class`` column and one
    probability column per class; predict and the registry's top-1 read it, and still read the
    bare probabilities a version registered before it returns."""
    import mlflow

    from tasks.register import _Probabilities, log_served_model
    from tasks.registry import class_probabilities, score_top1
    from tasks.tracking import setup_mlflow

    classifier = tiny_classifier()
    files = write_images(tmp_path / "images", n=6)
    (tmp_path / "images" / "broken.png").write_bytes(b"not a png")
    x, _, _ = load_images(files, (1, SIDE, SIDE))
    with torch.no_grad():
        expected = classifier(torch.from_numpy(x)).softmax(1).numpy()

    setup_mlflow()
    with mlflow.start_run():
        served = log_served_model(classifier, CLASSES, x[:2])
        old = mlflow.pytorch.log_model(_Probabilities(classifier).eval(), name="old", input_example=x[:2])

    model = mlflow.pyfunc.load_model(served.model_uri)
    assert model.metadata.get_input_schema().inputs[0].shape == (-1, 1, SIDE, SIDE)
    assert model.metadata.get_output_schema().input_names() == ["class", *CLASSES]
    frame = model.predict(x)
    assert list(frame.columns) == ["class", *CLASSES]
    assert np.allclose(frame[CLASSES].to_numpy(), expected, atol=1e-5)
    assert list(frame["class"]) == [CLASSES[k] for k in expected.argmax(1)]
    probs, names = class_probabilities(frame)
    assert names == CLASSES and np.allclose(probs.sum(1), 1, atol=1e-5)
    answer = served_answer(model, x[:2])  # what `mlflow models serve` answers
    assert [row["class"] for row in answer] == list(frame["class"][:2]) and set(answer[0]) == {"class", *CLASSES}

    result = predict_files(served.model_uri, image_files([tmp_path / "images"]))
    assert [(f.name, c) for f, c, _ in result.rows] == [(f.name, CLASSES[k]) for f, k in zip(files, expected.argmax(1))]
    assert len(result.skipped) == 1 and "broken.png" in result.skipped[0]

    labels = torch.from_numpy(expected.argmax(1))
    images = torch.from_numpy(np.round(x * 255).astype(np.uint8))
    assert score_top1(served.model_uri, images, labels) == score_top1(old.model_uri, images, labels) == 1.0


def test_encoder_files_keep_their_stem_and_old_files_load_as_stride_1(tmp_path: Path) -> None:
    from tasks.models import load_encoder, save_encoder

    for stride in (1, 2):
        spec = encoder_spec("small_cnn", 1, 4, [0.5], [0.25], stem_stride=stride)
        save_encoder(build_encoder(spec), spec, tmp_path / f"s{stride}.pt")
        encoder, _ = load_encoder(tmp_path / f"s{stride}.pt")
        assert encoder.backbone.features[0].stride == (stride, stride)
    old = encoder_spec("small_cnn", 1, 4, [0.5], [0.25])
    del old["stem_stride"]  # written before the key existed
    assert build_encoder(old).backbone.features[0].stride == (1, 1)
