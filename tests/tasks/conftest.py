"""Fixtures for the stage tests: synthetic Fashion-MNIST-format files, a project directory to run
stages in (stages read and write relative to the working directory), and datasets already
ingested / validated / pretrained."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

from tasks.config import IngestParams, PretrainParams, ValidateParams
from tests.fixtures import write_fashion_mnist

N_TRAIN, N_TEST, SIDE = 200, 60, 16


@pytest.fixture(autouse=True)
def mlflow_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Anything that logs to MLflow logs into the test's own store (the variable, and MLflow's
    process-wide URI, which an earlier test in this process may have pointed at a server)."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    if "mlflow" in sys.modules:
        sys.modules["mlflow"].set_tracking_uri(uri)


@pytest.fixture(scope="session")
def fashion_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The four IDX files (gzip): 200 train / 60 test 16x16 images of 10 separable classes."""
    directory = tmp_path_factory.mktemp("fashion-mnist")
    write_fashion_mnist(directory, n_train=N_TRAIN, n_test=N_TEST, side=SIDE, seed=0)
    return directory


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty project directory, made the working directory."""
    root = tmp_path / "project"
    root.mkdir()
    monkeypatch.chdir(root)
    return root


def ingest_params(fashion_dir: Path, **kw) -> IngestParams:
    return IngestParams(source="fashion_mnist", fashion_mnist_dir=str(fashion_dir), **kw)


def tiny_pretrain_params(**kw) -> PretrainParams:
    base = dict(method="simclr", method_args={"simclr": {"hidden_dim": 32, "out_dim": 16, "temperature": 0.2}}, width=4,
                epochs=1, batch_size=32, lr=0.3, knn_monitor_images=40, precision="fp32", channels_last=False,
                device="cpu", checkpoint_every=2)
    return PretrainParams(**{**base, **kw})


@pytest.fixture
def ingested(project: Path, fashion_dir: Path):
    """``data/dataset`` written by ingest from the synthetic files; returns the IngestResult."""
    from tasks.ingest import ingest

    return ingest(ingest_params(fashion_dir))


@pytest.fixture
def validated(ingested):
    from tasks.validate import validate

    validate(ValidateParams())
    return ingested


@pytest.fixture(scope="session")
def pretrained_template(tmp_path_factory: pytest.TempPathFactory, fashion_dir: Path) -> Path:
    """A project after ingest, validate and a tiny pretrain (run once per session)."""
    from tasks.ingest import ingest
    from tasks.pretrain import pretrain
    from tasks.validate import validate
    import torch

    root = tmp_path_factory.mktemp("pretrained")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root}/mlflow.db")
        ingest(ingest_params(fashion_dir))
        validate(ValidateParams())
        pretrain(tiny_pretrain_params(), progress=False, log_mlflow=False)
    torch.set_num_threads(threads)
    return root


@pytest.fixture
def pretrained(project: Path, pretrained_template: Path) -> Path:
    """A copy of the pretrained project as the working directory."""
    shutil.copytree(pretrained_template, project, dirs_exist_ok=True)
    return project


@pytest.fixture(scope="module")
def local_ray():
    """A local Ray instance of two CPUs for a module's Ray Train tests (two workers); the stages and
    the Ray Train glue leave a Ray they did not start running."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        yield
    finally:
        ray.shutdown()
