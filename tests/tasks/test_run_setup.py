"""params.yaml as the place a run's parameters live (as `dvc exp run -S` does), and the
smoke run's undo."""

from __future__ import annotations

from pathlib import Path

import pytest

from flows.params_file import PARAMS_YAML, remember_smoke, restore_after_smoke, write_params_yaml
from tasks.config import ParamsError, load_params

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def project(tmp_path, monkeypatch):
    (tmp_path / "params.yaml").write_text((REPO / "params.yaml").read_text())
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_overrides_land_in_params_yaml_with_comments_kept(project):
    assert write_params_yaml(PARAMS_YAML, ["pretrain.epochs=2", "finetune.label_fractions=[0.05]"])
    text = PARAMS_YAML.read_text()
    assert "# sslpipe parameters" in text and "epochs: 2" in text
    params = load_params()
    assert params.pretrain.epochs == 2 and params.finetune.label_fractions == [0.05]
    assert not write_params_yaml(PARAMS_YAML, ["pretrain.epochs=2"])  # nothing new: file untouched


def test_params_from_another_file(project):
    other = project / "other.yaml"
    other.write_text("pretrain:\n  epochs: 3\n")
    assert write_params_yaml(other, [])
    assert load_params().pretrain.epochs == 3


def test_missing_params_file_is_named(project):
    with pytest.raises(ParamsError, match="nope.yaml"):
        write_params_yaml(Path("nope.yaml"), [])


def test_a_full_run_after_smoke_gets_the_users_params_back(project):
    original = PARAMS_YAML.read_text()
    for _ in range(2):  # two smoke runs in a row still remember the user's file
        before = PARAMS_YAML.read_text()
        write_params_yaml(PARAMS_YAML, ["pretrain.epochs=1"])
        remember_smoke(before)
    assert load_params().pretrain.epochs == 1
    assert restore_after_smoke()
    assert PARAMS_YAML.read_text() == original
    assert not restore_after_smoke()


def test_edits_after_smoke_are_kept(project):
    before = PARAMS_YAML.read_text()
    write_params_yaml(PARAMS_YAML, ["pretrain.epochs=1"])
    remember_smoke(before)
    write_params_yaml(PARAMS_YAML, ["pretrain.epochs=4"])  # the user changed something since
    assert not restore_after_smoke()
    assert load_params().pretrain.epochs == 4
