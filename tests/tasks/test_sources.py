"""The sources manifest (``tasks.sources``): what ingest will read, listed cheaply, rewritten only
when a source file changed -- so that DVC notices new images without image folders in dvc.yaml."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import yaml

from ssl_models.data import FASHION_MNIST_FILES, DataError
from ssl_models.data.image_folder import IMAGE_SUFFIXES
from tasks.config import IngestParams
from tasks.paths import SOURCES
from tasks.sources import refresh_sources, source_manifest
from tests.conftest import REPO, subprocess_env
from tests.fixtures import write_fashion_mnist, write_image_folder, write_png


def folder_params(**dirs) -> IngestParams:
    return IngestParams(source="image_folder", image_folder={k: str(v) for k, v in dirs.items()})


def listed(path: Path = SOURCES) -> list[str]:
    return [e["path"] for e in json.loads(path.read_text())["entries"]]


@pytest.fixture
def tree(project: Path) -> Path:
    """``imgs/train/<class>/*.png`` (3 classes), ``imgs/test/<class>``, ``imgs/unlabeled/...``."""
    root = project / "imgs"
    write_image_folder(root / "train", {"cat": 3, "dog": 2, "owl": 2})
    write_image_folder(root / "test", {"cat": 1, "dog": 1, "owl": 1}, seed=1)
    write_image_folder(root / "unlabeled" / "batch1", {"u": 4}, seed=2, labeled=False)
    return root


def test_the_manifest_lists_every_image_of_an_image_folder_tree(tree: Path):
    (tree / "train" / "cat" / "notes.txt").write_text("not an image")
    (tree / "train" / "cat" / "deep" / "deeper").mkdir(parents=True)
    write_png(tree / "train" / "cat" / "deep" / "deeper" / "LOUD.PNG", np.zeros((8, 8), np.uint8))
    cfg = folder_params(train_dir="imgs/train", test_dir="imgs/test", unlabeled_dir="imgs/unlabeled")

    result = refresh_sources(cfg)

    expected = sorted(p.relative_to(tree.parent).as_posix() for p in tree.rglob("*")
                      if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    assert len(expected) == 3 + 2 + 2 + 3 + 4 + 1
    assert listed() == expected  # sorted, the odd-cased suffix included, notes.txt not
    data = json.loads(SOURCES.read_text())
    assert data["files"] == result.files == len(expected)
    assert data["bytes"] == result.bytes == sum((tree.parent / p).stat().st_size for p in expected)
    first = data["entries"][0]
    stat = (tree.parent / first["path"]).stat()
    assert first == {"path": first["path"], "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    assert data["params"] == {"source": "image_folder", "image_folder": {
        "train_dir": "imgs/train", "test_dir": "imgs/test", "unlabeled_dir": "imgs/unlabeled"}}
    assert result.changed


def test_an_unchanged_tree_leaves_the_manifest_untouched(tree: Path):
    cfg = folder_params(train_dir="imgs/train")
    refresh_sources(cfg)
    before = SOURCES.stat()
    text = SOURCES.read_bytes()

    again = refresh_sources(cfg)

    after = SOURCES.stat()
    assert not again.changed
    assert SOURCES.read_bytes() == text
    assert (after.st_mtime_ns, after.st_ino) == (before.st_mtime_ns, before.st_ino)  # not even replaced


def test_one_new_image_in_a_class_folder_changes_the_manifest(tree: Path):
    cfg = folder_params(train_dir="imgs/train")
    refresh_sources(cfg)
    text = SOURCES.read_text()

    write_png(tree / "train" / "dog" / "new.png", np.full((8, 8), 7, np.uint8))
    result = refresh_sources(cfg)

    assert result.changed and result.files == 8
    assert SOURCES.read_text() != text
    assert "imgs/train/dog/new.png" in listed()


def test_a_replaced_or_removed_image_changes_the_manifest(tree: Path):
    cfg = folder_params(train_dir="imgs/train")
    refresh_sources(cfg)
    victim = tree / "train" / "owl" / "owl_000.png"
    write_png(victim, np.zeros((40, 40), np.uint8))  # new content, size and mtime
    assert refresh_sources(cfg).changed
    victim.unlink()
    assert refresh_sources(cfg).changed
    assert "imgs/train/owl/owl_000.png" not in listed()
    assert not refresh_sources(cfg).changed


def test_fashion_mnist_lists_the_four_idx_files(project: Path, fashion_dir: Path):
    result = refresh_sources(IngestParams(source="fashion_mnist", fashion_mnist_dir=str(fashion_dir)))

    stems = [stem for pair in FASHION_MNIST_FILES.values() for stem in pair]
    assert listed() == sorted(str(fashion_dir / f"{stem}.gz") for stem in stems)
    assert result.files == 4
    assert json.loads(SOURCES.read_text())["params"] == {
        "source": "fashion_mnist", "fashion_mnist_dir": str(fashion_dir), "download": False}


def test_fashion_mnist_uncompressed_files_are_listed_too(project: Path):
    write_fashion_mnist(project / "raw", n_train=20, n_test=10, gz=False)
    refresh_sources(IngestParams(source="fashion_mnist", fashion_mnist_dir="raw"))
    assert listed() == sorted(f"raw/{stem}" for pair in FASHION_MNIST_FILES.values() for stem in pair)


def test_missing_fashion_mnist_with_download_lists_the_download_directory(project: Path):
    result = refresh_sources(IngestParams(source="fashion_mnist", fashion_mnist_dir="nowhere", download=True))
    data = json.loads(SOURCES.read_text())
    assert result.files == 0 and data["entries"] == []
    assert data["params"]["download_dir"].endswith("downloads/FashionMNIST/raw")


@pytest.mark.parametrize("params, key", [
    (dict(source="fashion_mnist", fashion_mnist_dir="no/such/dir"), "ingest.fashion_mnist_dir"),
    (dict(source="image_folder", image_folder={"train_dir": "no/such/dir"}), "ingest.image_folder.train_dir"),
    (dict(source="image_folder", image_folder={"unlabeled_dir": "no/such/dir"}), "ingest.image_folder.unlabeled_dir"),
])
def test_a_missing_directory_is_an_error_naming_the_key_and_the_path(project: Path, params: dict, key: str):
    with pytest.raises(DataError) as info:
        source_manifest(IngestParams(**params))
    assert key in str(info.value) and "no/such/dir" in str(info.value)
    assert not SOURCES.exists()


def test_an_image_folder_source_without_folders_is_an_error(project: Path):
    with pytest.raises(DataError, match="train_dir"):
        refresh_sources(IngestParams(source="image_folder"))


# ------------------------------------------------------------------------------------ with DVC
# ``refresh_sources`` reads only attributes of its params; a namespace spares the subprocess the
# seconds of importing tasks.config (which imports torch) on each run
SOURCES_CMD = ("python -c \"import yaml; from types import SimpleNamespace as N; "
               "from tasks.sources import refresh_sources; p = yaml.safe_load(open('params.yaml'))['ingest']; "
               "refresh_sources(N(**{**p, 'image_folder': N(**p['image_folder'])}))\"")
TOY_INGEST_CMD = ("python -c \"import json, pathlib; m = json.load(open('data/sources.json')); "
                  "pathlib.Path('data/dataset.txt').write_text(str(m['files']))\"")


@pytest.mark.e2e
def test_dvc_sees_new_images_only_through_the_forced_sources_stage(tmp_path: Path):
    """The real ``sources`` stage of dvc.yaml (its outs and params; the cmd calls
    ``refresh_sources`` directly until the runner dispatches ``sources``) and a toy ingest."""
    if shutil.which("dvc", path=subprocess_env()["PATH"]) is None:
        pytest.skip("dvc is not installed")
    real = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    ingest_deps = [d for d in real["ingest"]["deps"] if d.startswith("data/")]
    assert ingest_deps == [str(SOURCES)], "ingest should read its sources through data/sources.json only"
    stages = {
        "sources": {**real["sources"], "cmd": SOURCES_CMD, "deps": []},
        "ingest": {"cmd": TOY_INGEST_CMD, "deps": ingest_deps, "outs": ["data/dataset.txt"]},
    }
    write_image_folder(tmp_path / "imgs", {"a": 2, "b": 2})
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages}, sort_keys=False))
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"ingest": {"source": "image_folder", "image_folder": {
        "train_dir": "imgs", "test_dir": None, "unlabeled_dir": None}}}))
    env = subprocess_env(PYTHONPATH=str(REPO), DVC_NO_ANALYTICS="1")

    def run(*cmd: str) -> str:
        out = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True)
        assert out.returncode == 0, f"{' '.join(cmd)}:\n{out.stdout}\n{out.stderr}"
        return out.stdout

    def status() -> dict:
        return json.loads(run("dvc", "status", "--json"))

    run("git", "init", "-q")
    run("dvc", "init", "-q")
    first = run("dvc", "repro")
    assert "Running stage 'sources'" in first and "Running stage 'ingest'" in first
    assert status() == {}
    manifest = tmp_path / "data" / "sources.json"
    before = manifest.stat().st_mtime_ns

    run("dvc", "repro", "-f", "--single-item", "sources")  # what the flow does first: nothing changed
    assert status() == {}
    assert manifest.stat().st_mtime_ns == before  # persist: true and rewritten only on change
    assert "Stage 'ingest' didn't change, skipping" in run("dvc", "repro")

    write_png(tmp_path / "imgs" / "b" / "new.png", np.full((8, 8), 9, np.uint8))
    run("dvc", "repro", "-f", "--single-item", "sources")
    assert status() == {"ingest": [{"changed deps": {"data/sources.json": "modified"}}]}
    assert "Running stage 'ingest'" in run("dvc", "repro")
    assert (tmp_path / "data" / "dataset.txt").read_text() == "5"
    assert status() == {}
