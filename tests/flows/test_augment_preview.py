"""`sslpipe augment-preview`: a PNG grid of images and their views, from the ingested dataset or,
without one, from the Fashion-MNIST IDX files."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli import app
from tasks.config import IngestParams
from tasks.ingest import ingest
from tests.fixtures import write_fashion_mnist

REPO = Path(__file__).resolve().parents[2]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """params.yaml and dvc.yaml in a temporary working directory, tiny Fashion-MNIST-format IDX
    files next to it; the environment the CLI sets for itself is put back afterwards."""
    root = tmp_path / "proj"
    root.mkdir()
    for name in ("params.yaml", "dvc.yaml"):
        shutil.copy(REPO / name, root / name)
    write_fashion_mnist(tmp_path / "fmnist", n_train=40, n_test=20, side=16)
    saved = dict(os.environ)
    monkeypatch.chdir(root)
    yield root
    os.environ.clear()
    os.environ.update(saved)


def invoke(*args: str):
    result = CliRunner().invoke(app, ["augment-preview", *args])
    return result, result.output + (result.stderr if result.stderr_bytes is not None else "")


def test_writes_a_png_from_the_dataset(project: Path) -> None:
    ingest(IngestParams(fashion_mnist_dir=str(project.parent / "fmnist")), project / "data/dataset")
    result, text = invoke("--method", "simclr", "--n", "3")
    assert result.exit_code == 0, text
    png = project / "reports/plots/augment_preview.png"
    assert png.read_bytes()[:8] == PNG_MAGIC
    assert "data/dataset" in text


def test_falls_back_to_idx_files_and_takes_any_method(project: Path) -> None:
    out = project / "elsewhere/dino.png"
    result, text = invoke("--method", "dino", "--n", "2", "--out", str(out),
                          "--set", f"ingest.fashion_mnist_dir={project.parent / 'fmnist'}")
    assert result.exit_code == 0, text
    assert out.read_bytes()[:8] == PNG_MAGIC
    assert "fmnist" in text
    # MAE needs a ViT; the preview only needs its views
    result, text = invoke("--method", "mae", "--n", "2", "--out", str(out),
                          "--set", f"ingest.fashion_mnist_dir={project.parent / 'fmnist'}")
    assert result.exit_code == 0, text


def test_unknown_method_lists_the_known_ones(project: Path) -> None:
    ingest(IngestParams(fashion_mnist_dir=str(project.parent / "fmnist")), project / "data/dataset")
    result, text = invoke("--method", "nope")
    assert result.exit_code != 0
    assert "simclr" in text and "byol" in text
    assert not (project / "reports/plots/augment_preview.png").exists()
