"""experiments/: a ready params file per method family (``sslpipe run --params experiments/NAME.yaml``).
Each validates, trains the method it is named after, and is params.yaml in every other key (so it
does not drift from the defaults: when params.yaml changes, change them too)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tasks.config import load_params
from tasks.tracking import flatten

REPO = Path(__file__).resolve().parents[1]
EXPERIMENTS = sorted((REPO / "experiments").glob("*.yaml"))
OWN_KEYS = ("pretrain.method", "pretrain.backbone")  # what an experiment file may change


def test_one_file_per_method_family() -> None:
    assert {p.stem for p in EXPERIMENTS} >= {"simclr", "byol", "dino", "vicreg", "swav", "mae", "rotation"}


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: p.stem)
def test_experiment_validates_and_is_params_yaml_but_the_method(path: Path) -> None:
    assert load_params(path).pretrain.method == path.stem
    defaults = flatten(yaml.safe_load((REPO / "params.yaml").read_text()))
    values = flatten(yaml.safe_load(path.read_text()))
    drifted = sorted(k for k in defaults.keys() | values.keys()
                     if k not in OWN_KEYS and defaults.get(k, "-") != values.get(k, "-"))
    assert not drifted, f"{path.name} differs from params.yaml at {drifted}"
