"""params.yaml -> typed config: the project's file loads; every mistake is a ParamsError naming the
key and the file; --set overrides parse as YAML; write_params_yaml keeps comments."""

from __future__ import annotations

import difflib
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tasks.run_setup import write_params_yaml
from tasks.tracking import flatten
from tasks.config import (
    STAGES,
    BackboneName,
    Params,
    ParamsError,
    apply_overrides,
    known_keys,
    load_params,
    parse_override,
)

PROJECT_PARAMS = Path(__file__).resolve().parents[2] / "params.yaml"


@pytest.fixture
def params_file(tmp_path: Path) -> Path:
    """A copy of the project's params.yaml to edit."""
    path = tmp_path / "params.yaml"
    shutil.copy(PROJECT_PARAMS, path)
    return path


def edit(path: Path, section: str, key: str, value, *, nested: str | None = None) -> Path:
    raw = yaml.safe_load(path.read_text())
    node = raw[section] if nested is None else raw[section][nested]
    node[key] = value
    path.write_text(yaml.safe_dump(raw))
    return path


def test_project_params_load() -> None:
    params = load_params(PROJECT_PARAMS)
    raw = yaml.safe_load(PROJECT_PARAMS.read_text())
    assert params.pretrain.epochs == raw["pretrain"]["epochs"]
    assert params.validate_.class_balance_tolerance == raw["validate"]["class_balance_tolerance"]
    assert params.register_.model_name == raw["register"]["model_name"]
    assert params.pretrain.augment.overrides() == {k: v for k, v in raw["pretrain"]["augment"].items() if v is not None}
    dumped = params.to_dict()
    for section, values in raw.items():
        for key, value in values.items():
            if not isinstance(value, dict) and value is not None:  # null: filled in (e.g. the method's lr)
                assert dumped[section][key] == value, (section, key)
    assert set(STAGES) - {"sources"} <= set(raw)  # a section for every stage (sources reads ingest's)


def _fields(model: type) -> dict:
    """The keys a params file spells for ``model``: {key: nested keys or None}."""
    from pydantic import BaseModel

    out = {}
    for name, field in model.model_fields.items():
        kind = field.annotation
        out[field.alias or name] = _fields(kind) if isinstance(kind, type) and issubclass(kind, BaseModel) else None
    return out


def _keys(raw: dict, shape: dict) -> dict:
    return {k: (_keys(raw[k], shape[k]) if isinstance(shape.get(k), dict) and isinstance(raw[k], dict) else None)
            for k in raw}


def test_params_yaml_is_the_models_defaults_spelt_out() -> None:
    """One source of defaults: params.yaml holds exactly the typed config's defaults, and names
    every key (nothing is a hidden default). Change one, change the other."""
    raw = yaml.safe_load(PROJECT_PARAMS.read_text())
    assert load_params(PROJECT_PARAMS) == Params(), "params.yaml and tasks/config.py disagree on a default"
    assert _keys(raw, _fields(Params)) == _fields(Params), "params.yaml misses or adds a key of tasks/config.py"


def test_backbone_names_match_the_registry() -> None:
    from typing import get_args

    from ssl_models.backbones import BACKBONES

    assert list(get_args(BackboneName)) == list(BACKBONES)


def test_defaults_without_file_sections(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text("pretrain:\n  epochs: 3\n")
    params = load_params(path)
    assert params.pretrain.epochs == 3 and params.ingest.source == "fashion_mnist"
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    assert load_params(empty) == Params()


@pytest.mark.parametrize(
    "change,key",
    [
        (lambda raw: raw.update(pretrian={"epochs": 1}), "pretrian"),
        (lambda raw: raw["pretrain"].update(epohcs=1), "pretrain.epohcs"),
        (lambda raw: raw["pretrain"]["augment"].update(flip_prob=0.5), "pretrain.augment.flip_prob"),
        (lambda raw: raw["tune"]["search_space"]["ssl_finetune"].update(momentum=[0.9]),
         "tune.search_space.ssl_finetune.momentum"),
        (lambda raw: raw["ingest"]["image_folder"].update(img_size=8), "ingest.image_folder.img_size"),
    ],
    ids=["section", "key", "augment-key", "search-space-key", "image-folder-key"],
)
def test_unknown_key_named(params_file: Path, change, key: str) -> None:
    raw = yaml.safe_load(params_file.read_text())
    change(raw)
    params_file.write_text(yaml.safe_dump(raw))
    with pytest.raises(ParamsError) as e:
        load_params(params_file)
    message = str(e.value)
    assert f"{key}: unknown key" in message
    assert str(params_file) in message


@pytest.mark.parametrize(
    "section,key,value,words",
    [
        ("pretrain", "epochs", "ten", "pretrain.epochs"),
        ("pretrain", "epochs", 0, "greater than or equal to 1"),
        ("pretrain", "precision", "fp8", "pretrain.precision"),
        ("ingest", "source", "s3", "ingest.source"),
        ("finetune", "label_fractions", [0.1, 1.5], "label_fractions must be"),
        ("pretrain", "backbone", "vgg", "choose one of small_cnn"),
        ("tune", "num_samples", 1.5, "tune.num_samples"),
    ],
)
def test_bad_value_named(params_file: Path, section: str, key: str, value, words: str) -> None:
    edit(params_file, section, key, value)
    with pytest.raises(ParamsError) as e:
        load_params(params_file)
    message = str(e.value)
    assert f"{section}.{key}" in message and words in message and str(params_file) in message
    if isinstance(value, str):
        assert repr(value) in message  # shows what it got


def test_bad_nested_value(params_file: Path) -> None:
    edit(params_file, "pretrain", "flip_p", 2.0, nested="augment")
    with pytest.raises(ParamsError, match=r"pretrain\.augment\.flip_p"):
        load_params(params_file)


def test_missing_file_named(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "params.yaml"
    with pytest.raises(ParamsError, match="params file not found") as e:
        load_params(missing)
    assert str(missing) in str(e.value)


def test_not_yaml_or_not_mapping(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("pretrain: [unclosed\n")
    with pytest.raises(ParamsError, match="not valid YAML"):
        load_params(bad)
    bad.write_text("- a\n- b\n")
    with pytest.raises(ParamsError, match="mapping"):
        load_params(bad)


def test_method_names_match_the_registry() -> None:
    from typing import get_args

    from ssl_models.methods import METHODS
    from tasks.config import MethodName

    assert list(get_args(MethodName)) == list(METHODS)


def test_unknown_method_lists_methods(params_file: Path) -> None:
    from ssl_models.methods import METHODS

    edit(params_file, "pretrain", "method", "simclrr")
    edit(params_file, "pretrain", "method_args", {})
    with pytest.raises(ParamsError) as e:
        load_params(params_file)
    message = str(e.value)
    assert "unknown method 'simclrr'" in message
    assert all(name in message for name in METHODS)


def test_method_args_unknown_argument(params_file: Path) -> None:
    edit(params_file, "pretrain", "method_args", {"simclr": {"temperature": 0.1, "temprature": 0.1}})
    with pytest.raises(ParamsError) as e:
        load_params(params_file)
    message = str(e.value)
    assert "method_args.simclr" in message and "temprature" in message
    assert "temperature" in message.split("takes", 1)[1]  # lists what it accepts
    edit(params_file, "pretrain", "method_args", {"simclr": {"temperature": 0.1, "hidden_dim": 64}})
    assert load_params(params_file).pretrain.args == {"temperature": 0.1, "hidden_dim": 64}


def test_method_args_keys_are_methods(params_file: Path) -> None:
    edit(params_file, "pretrain", "method_args", {"temperature": 0.1})  # the flat form: not a method name
    with pytest.raises(ParamsError, match=r"method_args\.temperature: not a method.*simclr"):
        load_params(params_file)


def test_method_args_of_other_methods_are_kept_but_unused(params_file: Path) -> None:
    """Switching methods is one key: each method's arguments wait under its own name."""
    edit(params_file, "pretrain", "method_args", {"simclr": {"temperature": 0.1}, "byol": {"momentum_base": 0.99}})
    params = load_params(params_file, ["pretrain.method=byol"])
    assert params.pretrain.args == {"momentum_base": 0.99}
    assert load_params(params_file, ["pretrain.method=vicreg"]).pretrain.args == {}
    edit(params_file, "pretrain", "method_args", {"byol": {"temperature": 0.1}})  # checked even when not chosen
    with pytest.raises(ParamsError, match=r"method_args\.byol: \['temperature'\]"):
        load_params(params_file)


def test_unset_optimizer_is_the_methods(params_file: Path) -> None:
    from ssl_models.methods import METHODS

    for method in ("simclr", "dino"):
        params = load_params(params_file, [f"pretrain.method={method}"]).pretrain
        assert {k: getattr(params, k) for k in METHODS[method].optim} == METHODS[method].optim
    params = load_params(params_file, ["pretrain.method=dino", "pretrain.lr=0.01"]).pretrain
    assert params.lr == 0.01 and params.optimizer == METHODS["dino"].optim["optimizer"]
    assert load_params(params_file, ["pretrain.optimizer=lars"]).pretrain.optimizer == "lars"
    with pytest.raises(ParamsError, match="pretrain.optimizer"):
        load_params(params_file, ["pretrain.optimizer=lamb"])


def test_a_method_takes_its_backbone_when_the_backbone_is_left_at_its_default(params_file: Path, caplog) -> None:
    """mae needs vit_tiny: with pretrain.backbone at its default it takes it, and says so."""
    logger = logging.getLogger("tasks.config")  # its own handler: the CLI stops "tasks" propagating to the root
    logger.addHandler(caplog.handler)
    try:
        with caplog.at_level(logging.INFO, logger="tasks.config"):
            params = load_params(params_file, ["pretrain.method=mae"]).pretrain
    finally:
        logger.removeHandler(caplog.handler)
    assert params.backbone == "vit_tiny" and params.args == {"mask_ratio": 0.75}
    assert "mae trains a vit_tiny backbone" in caplog.text and "small_cnn" in caplog.text
    edit(params_file, "pretrain", "method", "mae")  # the same when params.yaml names the method
    assert load_params(params_file).pretrain.backbone == "vit_tiny"
    assert load_params(params_file, ["pretrain.method=simclr"]).pretrain.backbone == "small_cnn"  # back again


@pytest.mark.parametrize("backbone", ["resnet18", "small_cnn"])
def test_an_explicit_method_backbone_mismatch_names_the_fix(params_file: Path, backbone: str) -> None:
    """Only a backbone the user chose (in the file, or by --set, even the default) is a mismatch."""
    with pytest.raises(ParamsError, match=f"mae needs backbone vit_tiny \\(got {backbone}\\).*pretrain.backbone=vit_tiny"):
        load_params(params_file, ["pretrain.method=mae", f"pretrain.backbone={backbone}"])
    edit(params_file, "pretrain", "backbone", "resnet18")
    with pytest.raises(ParamsError, match="mae needs backbone vit_tiny"):
        load_params(params_file, ["pretrain.method=mae"])


# ------------------------------------------------------------------------------------- overrides
@pytest.mark.parametrize(
    "text,path,value",
    [
        ("pretrain.epochs=5", ["pretrain", "epochs"], 5),
        ("pretrain.lr=0.05", ["pretrain", "lr"], 0.05),
        ("pretrain.lr=1e-3", ["pretrain", "lr"], "1e-3"),  # YAML 1.1: needs a dot to be a float
        ("pretrain.lr=1.0e-3", ["pretrain", "lr"], 1e-3),
        ("finetune.label_fractions=[0.05, 0.2]", ["finetune", "label_fractions"], [0.05, 0.2]),
        ("pretrain.compile=true", ["pretrain", "compile"], True),
        ("pretrain.channels_last=false", ["pretrain", "channels_last"], False),
        ("pretrain.grad_clip=null", ["pretrain", "grad_clip"], None),
        ("pretrain.grad_clip=", ["pretrain", "grad_clip"], None),
        ("pretrain.method=byol", ["pretrain", "method"], "byol"),
        ("tune.search_space.epochs=[2]", ["tune", "search_space", "epochs"], [2]),
        (" pretrain.epochs = 7", ["pretrain", "epochs"], 7),
        ("register.model_name=a=b", ["register", "model_name"], "a=b"),
    ],
)
def test_parse_override(text: str, path: list[str], value) -> None:
    assert parse_override(text) == (path, value)


@pytest.mark.parametrize("text", ["pretrain.epochs", "=5", " =5"])
def test_parse_override_malformed(text: str) -> None:
    with pytest.raises(ParamsError, match="section.key=value"):
        parse_override(text)


def test_overrides_applied_and_validated(params_file: Path) -> None:
    params = load_params(params_file, ["pretrain.epochs=2", "pretrain.augment.flip_p=0.0",
                                       "finetune.label_fractions=[0.5, 0.05]", "pretrain.grad_clip=1.5",
                                       "ingest.limit_train=null", "pretrain.method_args.simclr.temperature=0.3"])
    assert params.pretrain.epochs == 2 and params.pretrain.augment.flip_p == 0.0
    assert params.finetune.label_fractions == [0.05, 0.5]  # sorted
    assert params.pretrain.grad_clip == 1.5 and params.ingest.limit_train is None
    assert params.pretrain.args["temperature"] == 0.3
    assert params_file.read_text() == PROJECT_PARAMS.read_text()


@pytest.mark.parametrize(
    "override,key",
    [("pretrain.epohcs=1", "pretrain.epohcs"), ("pretrian.epochs=1", "pretrian"),
     ("pretrain.augment.flip=0.1", "pretrain.augment.flip")],
)
def test_unknown_override_key(params_file: Path, override: str, key: str) -> None:
    with pytest.raises(ParamsError) as e:
        load_params(params_file, [override])
    assert f"--set {key}: unknown key" in str(e.value)  # blamed on the option, not on the file
    assert str(params_file) not in str(e.value) and str(e.value).startswith("invalid --set")


@pytest.mark.parametrize(
    "override,suggested",
    [("epochs=3", "pretrain.epochs or tune.epochs"), ("pretrain.epohcs=1", "pretrain.epochs"),
     ("pretrian.epochs=1", "pretrain"), ("pretrain.augment.flip=0.1", "pretrain.augment.flip_p"),
     ("ingest.train_dir=x", "ingest.image_folder.train_dir"),
     ("tune.search_space.supervised.lrr=[0.1, 1]", "tune.search_space.supervised.lr")],
)
def test_unknown_key_suggests_the_known_one(params_file: Path, override: str, suggested: str) -> None:
    with pytest.raises(ParamsError, match=f"did you mean {suggested}"):
        load_params(params_file, [override])


def test_known_keys_are_the_params_files_keys() -> None:
    free_form = ("pretrain.method_args.", "pretrain.distributed.resources_per_worker.", "finetune.distributed.resources_per_worker.",
                 "tune.resources_per_trial.")
    spelt = {k for k in flatten(Params().to_dict()) if not k.startswith(free_form)}
    assert spelt <= set(known_keys())
    assert {"pretrain", "pretrain.augment", "tune.search_space.fixmatch.lr"} <= set(known_keys())


def test_a_params_error_imports_no_torch(tmp_path: Path) -> None:
    """A misspelt --set is rejected before the SSL methods (and torch) are imported: fast."""
    code = ("import sys\nfrom tasks.config import ParamsError, load_params\n"
            "for bad in ('epochs=3', 'pretrain.epochs=abc', 'pretrain.method=nosuch'):\n"
            "    try:\n        load_params(sys.argv[1], [bad])\n    except ParamsError:\n        pass\n"
            "print(sorted(m for m in ('torch', 'mlflow', 'prefect', 'ray') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code, str(PROJECT_PARAMS)], capture_output=True, text=True,
                         cwd=PROJECT_PARAMS.parent, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_override_bad_type_and_through_a_value(params_file: Path) -> None:
    with pytest.raises(ParamsError, match=r"pretrain\.epochs"):
        load_params(params_file, ["pretrain.epochs=ten"])
    with pytest.raises(ParamsError, match="is not a section"):
        load_params(params_file, ["pretrain.epochs.x=1"])


def test_apply_overrides_makes_missing_and_null_sections() -> None:
    raw = {"pretrain": {"epochs": 1}, "ingest": {"image_folder": None}}
    out = apply_overrides(raw, ["pretrain.epochs=4", "tune.num_samples=2", "ingest.image_folder.train_dir=x"])
    assert out is raw  # in place: the same walk edits params.yaml's commented map
    assert out == {"pretrain": {"epochs": 4}, "tune": {"num_samples": 2}, "ingest": {"image_folder": {"train_dir": "x"}}}


# ---------------------------------------------------------------------------- write_params_yaml
def test_write_params_yaml_keeps_comments_and_reports_change(params_file: Path, tmp_path: Path) -> None:
    target = tmp_path / "out" / "params.yaml"
    target.parent.mkdir()
    shutil.copy(params_file, target)
    original = target.read_text()
    assert write_params_yaml(params_file, [], target) is False  # nothing to change
    assert target.read_text() == original  # round-trips byte for byte, comments included

    assert write_params_yaml(params_file, ["pretrain.epochs=2", "finetune.label_fractions=[0.5]"], target) is True
    text = target.read_text()
    assert "# sslpipe parameters" in text and "# fashion_mnist | image_folder" in text
    assert "# steps; a killed run resumes from the last checkpoint" in text
    params = load_params(target)
    assert params.pretrain.epochs == 2 and params.finetune.label_fractions == [0.5]
    diff = list(difflib.unified_diff(original.splitlines(), text.splitlines(), n=0, lineterm=""))
    removed = [line[1:].split("#")[0].strip() for line in diff if line.startswith("-") and not line.startswith("---")]
    # only the two overridden keys changed
    assert len(removed) == 2 and removed[0].startswith("epochs:") and removed[1].startswith("label_fractions:")
    assert write_params_yaml(params_file, ["pretrain.epochs=2", "finetune.label_fractions=[0.5]"], target) is False
    assert write_params_yaml(params_file, [], target) is True  # back to the source's values
    assert target.read_text() == original


def test_write_params_yaml_new_target_and_missing_source(tmp_path: Path, params_file: Path) -> None:
    target = tmp_path / "new.yaml"
    assert write_params_yaml(params_file, ["ingest.limit_train=100"], target) is True
    assert load_params(target).ingest.limit_train == 100
    with pytest.raises(ParamsError, match="not found"):
        write_params_yaml(tmp_path / "missing.yaml", [], target)


def test_the_engine_takes_every_pretrain_field_from_the_params() -> None:
    """No engine default stands in for a pipeline default: only the engine's own knobs are left out."""
    from dataclasses import fields

    from ssl_models.engine import TrainConfig
    from tasks.pretrain import train_config

    params = load_params(PROJECT_PARAMS).pretrain
    engine = train_config(params)
    left_to_the_engine = {f.name for f in fields(TrainConfig)} - set(type(params).model_fields)
    assert left_to_the_engine == {"momentum", "log_every"}
    for f in fields(TrainConfig):
        if f.name not in left_to_the_engine:
            assert getattr(engine, f.name) == getattr(params, f.name), f.name
