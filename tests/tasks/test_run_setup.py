"""One run set-up for every entry point: params.yaml becomes the run's parameters (as
`dvc exp run -S` does), a bad key writes nothing, and a smoke run's params are undone by the next
full run."""

from __future__ import annotations

from pathlib import Path

import pytest

from tasks.config import ParamsError, load_params
from tasks.run_setup import (
    LAST_GOOD,
    PARAMS_YAML,
    SMOKE_OVERRIDES,
    good_params_hint,
    overrides_from,
    prepare_run,
    remember_good_params,
    restore_after_smoke,
)

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def project(tmp_path, monkeypatch):
    (tmp_path / "params.yaml").write_text((REPO / "params.yaml").read_text())
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_overrides_land_in_params_yaml_with_comments_kept(project):
    setup = prepare_run(PARAMS_YAML, ["pretrain.epochs=2", "finetune.label_fractions=[0.05]"])
    assert setup.params_changed and setup.overrides == ["pretrain.epochs=2", "finetune.label_fractions=[0.05]"]
    text = PARAMS_YAML.read_text()
    assert "# sslpipe parameters" in text and "epochs: 2" in text
    params = load_params()
    assert params.pretrain.epochs == 2 and params.finetune.label_fractions == [0.05]
    assert setup.typed == params  # what the run logs is what the stages read
    assert not prepare_run(PARAMS_YAML, ["pretrain.epochs=2"]).params_changed  # nothing new: file untouched


def test_a_bad_key_writes_nothing(project):
    before = PARAMS_YAML.read_text()
    with pytest.raises(ParamsError, match=r"--set pretrain\.epohcs: unknown key"):
        prepare_run(PARAMS_YAML, ["pretrain.epohcs=2"])
    assert PARAMS_YAML.read_text() == before
    assert not (project / ".sslpipe").exists()


def test_params_from_another_file(project):
    other = project / "other.yaml"
    other.write_text("pretrain:\n  epochs: 3\n")
    assert prepare_run(other).params_changed
    assert load_params().pretrain.epochs == 3


def test_missing_params_file_is_named(project):
    with pytest.raises(ParamsError, match="nope.yaml"):
        prepare_run(Path("nope.yaml"))


def test_smoke_overrides_come_first_so_the_users_win(project):
    setup = prepare_run(PARAMS_YAML, ["pretrain.epochs=3"], smoke=True)
    assert setup.overrides == [*SMOKE_OVERRIDES, "register.model_name=sslpipe-classifier-smoke", "pretrain.epochs=3"]
    assert load_params().pretrain.epochs == 3 and load_params().ingest.limit_train == 600


def test_a_smoke_model_is_never_the_real_models_champion(project):
    """It is registered under a name of its own, however many smoke runs in a row; the next full
    run registers under the real name again."""
    for _ in range(2):
        assert prepare_run(PARAMS_YAML, smoke=True).typed.register_.model_name == "sslpipe-classifier-smoke"
    assert prepare_run(PARAMS_YAML).typed.register_.model_name == "sslpipe-classifier"
    setup = prepare_run(PARAMS_YAML, ["register.model_name=mine"], smoke=True)
    assert setup.typed.register_.model_name == "mine"  # a name the user gives wins, as every --set does


def test_the_way_back_to_the_last_good_parameters(project):
    assert "git checkout params.yaml" in good_params_hint()  # no run finished yet
    remember_good_params()
    assert "the cause is elsewhere" in good_params_hint()
    prepare_run(PARAMS_YAML, ["pretrain.epochs=7"])
    assert f"cp {LAST_GOOD} params.yaml" in good_params_hint()


def test_a_full_run_after_smoke_gets_the_users_params_back(project):
    original = PARAMS_YAML.read_text()
    for _ in range(2):  # two smoke runs in a row still remember the user's file
        prepare_run(PARAMS_YAML, smoke=True)
    assert load_params().pretrain.epochs == 1
    setup = prepare_run(PARAMS_YAML)
    assert setup.restored_smoke and not setup.params_changed
    assert PARAMS_YAML.read_text() == original
    assert not restore_after_smoke()


def test_edits_after_smoke_are_kept(project):
    prepare_run(PARAMS_YAML, smoke=True)
    PARAMS_YAML.write_text(PARAMS_YAML.read_text().replace("epochs: 1", "epochs: 4", 1))  # edited by hand since
    assert not prepare_run(PARAMS_YAML).restored_smoke
    assert load_params().pretrain.epochs == 4


def test_ui_shortcuts_are_overrides():
    assert overrides_from("byol", 3, [0.1, 0.5], 2) == [
        "pretrain.method=byol", "pretrain.epochs=3", "finetune.label_fractions=[0.1, 0.5]", "tune.num_samples=2"]
    assert overrides_from() == []
