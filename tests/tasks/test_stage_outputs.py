"""A stage's outputs survive its failure: kept aside (hard links) while it runs, put back when it
fails or is interrupted, dropped when it succeeds; ``persist: true`` outputs are left alone (DVC
does not delete them)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tasks.stage_outputs import KEPT, KeptOutputs, declared_outputs

DVC_YAML = """
stages:
  make:
    cmd: make
    outs:
      - data/dataset
      - data/manifest.json:
          cache: false
          persist: true
    metrics:
      - reports/m.json:
          cache: false
    plots:
      - reports/loss.csv:
          x: step
"""


@pytest.fixture
def stage_project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "dvc.yaml").write_text(DVC_YAML)
    (tmp_path / "data" / "dataset").mkdir(parents=True)
    (tmp_path / "data" / "dataset" / "images.npy").write_bytes(b"good images")
    (tmp_path / "data" / "manifest.json").write_text("{}")
    (tmp_path / "reports").mkdir()
    (tmp_path / "reports" / "m.json").write_text('{"top1": 0.9}')
    return tmp_path


def _as_dvc_runs_a_stage_that_fails(root: Path) -> None:
    """DVC deletes the outputs, the command writes part of new ones and fails."""
    import shutil

    shutil.rmtree(root / "data" / "dataset")
    (root / "reports" / "m.json").unlink()
    (root / "data" / "dataset").mkdir()
    (root / "data" / "dataset" / "images.npy").write_bytes(b"half")


def test_declared_outputs_are_the_ones_dvc_deletes(stage_project: Path) -> None:
    assert declared_outputs("make") == [Path("data/dataset"), Path("reports/m.json"), Path("reports/loss.csv")]


def test_a_failed_stage_gets_its_last_good_outputs_back(stage_project: Path) -> None:
    with KeptOutputs("make") as kept:
        _as_dvc_runs_a_stage_that_fails(stage_project)
    assert (stage_project / "data" / "dataset" / "images.npy").read_bytes() == b"good images"
    assert (stage_project / "reports" / "m.json").read_text() == '{"top1": 0.9}'
    assert sorted(map(str, kept.restored)) == ["data/dataset", "reports/m.json"]
    assert not (stage_project / KEPT / "make").exists()


def test_an_interrupted_stage_gets_them_back_too(stage_project: Path) -> None:
    with pytest.raises(KeyboardInterrupt), KeptOutputs("make"):
        _as_dvc_runs_a_stage_that_fails(stage_project)
        raise KeyboardInterrupt
    assert (stage_project / "data" / "dataset" / "images.npy").read_bytes() == b"good images"


def test_a_stage_that_succeeds_keeps_its_new_outputs(stage_project: Path) -> None:
    with KeptOutputs("make") as kept:
        _as_dvc_runs_a_stage_that_fails(stage_project)
        kept.succeeded()
    assert (stage_project / "data" / "dataset" / "images.npy").read_bytes() == b"half"
    assert kept.restored == [] and not (stage_project / KEPT / "make").exists()


def test_a_first_run_has_nothing_to_put_back(stage_project: Path) -> None:
    import shutil

    shutil.rmtree(stage_project / "data" / "dataset")
    with KeptOutputs("make") as kept:
        (stage_project / "data" / "dataset").mkdir()
    assert kept.restored == [Path("reports/m.json")]
    assert (stage_project / "data" / "dataset").is_dir()
