"""One run set-up for every entry point (``sslpipe run``, ``sslpipe retrain``, the Prefect flows
and their deployments): params file + ``section.key=value`` overrides + smoke -> validated params,
written into ``params.yaml``.

The overrides land in ``params.yaml`` the way ``dvc exp run -S`` puts them there: DVC hashes that
file, so it is where a run's parameters must be for ``dvc status`` and ``dvc repro`` to agree with
the run. Comments and key order survive (ruamel). A smoke run's overrides are written too; the
file they replaced is kept under ``.sslpipe/`` and put back by the next run without ``--smoke``,
so a first taste never turns the user's next full run into another smoke run.
"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from tasks import paths
from tasks.config import Params, ParamsError, apply_overrides, load_params
from tasks.io import write_text
from tasks.smoke import smoke_model_name

PARAMS_YAML = Path("params.yaml")

# what --smoke changes: a few hundred images, one epoch, one trial per arm
SMOKE_OVERRIDES = (
    "ingest.limit_train=600",
    "ingest.limit_test=300",
    "pretrain.epochs=1",
    "pretrain.compile=false",
    "pretrain.batch_size=100",
    "pretrain.knn_monitor_images=200",
    "pretrain.checkpoint_every=2",
    "tune.num_samples=1",
    "tune.epochs=[2]",
    "finetune.min_steps=10",
    "evaluate.embedding_plot_images=300",
)
SMOKE_BACKUP = paths.STATE / "params.before-smoke.yaml"  # the user's params.yaml before a smoke run
SMOKE_WRITTEN = paths.STATE / "params.smoke.yaml"  # what the smoke run wrote
LAST_GOOD = paths.STATE / "params.last-good.yaml"  # params.yaml of the last pipeline run that finished


class RunSetup(BaseModel):
    """A prepared run: what the stages will read from ``params.yaml``, and how it got there."""

    model_config = ConfigDict(frozen=True)

    params_file: str  # the file the run started from
    overrides: list[str]  # ``section.key=value``, as applied (the smoke ones first)
    smoke: bool
    params: dict[str, Any]  # the resolved parameters (``Params.to_dict()``)
    params_changed: bool  # whether params.yaml was rewritten
    restored_smoke: bool  # whether a smoke run's params.yaml was put back first

    @property
    def typed(self) -> Params:
        return Params.model_validate(self.params)


def prepare_run(params_file: str | Path = PARAMS_YAML, overrides: Sequence[str] = (), smoke: bool = False) -> RunSetup:
    """Resolve and validate the run's parameters, then make ``params.yaml`` hold them.

    Nothing is written when a key is bad.

    Raises:
        ParamsError: naming the file or ``--set`` and the key.
    """
    restored = not smoke and restore_after_smoke()
    applied = list(overrides)
    if smoke:  # the smoke model is registered under a name of its own: never the real model's champion
        name = load_params(params_file, [*SMOKE_OVERRIDES, *overrides]).register_.model_name
        applied = [*SMOKE_OVERRIDES, f"register.model_name={smoke_model_name(name)}", *overrides]
    params = load_params(params_file, applied)
    before = PARAMS_YAML.read_text() if PARAMS_YAML.exists() else ""
    changed = write_params_yaml(Path(params_file), applied)
    if smoke:
        _remember_smoke(before)
    return RunSetup(params_file=str(params_file), overrides=applied, smoke=smoke, params=params.to_dict(),
                    params_changed=changed, restored_smoke=restored)


def setup_notes(setup: RunSetup) -> list[str]:
    """What a run's set-up did to params.yaml, for the person who started it."""
    notes = []
    if setup.restored_smoke:
        notes.append("params.yaml: restored the parameters it held before the last --smoke run")
    if setup.params_changed:
        notes.append(f"params.yaml now holds this run's parameters ({', '.join(setup.overrides) or f'from {setup.params_file}'}); "
                     "`git diff params.yaml` shows them")
    return notes


def remember_good_params() -> None:
    """After a pipeline run that finished: keep its params.yaml, to go back to after a failure."""
    write_text(LAST_GOOD, PARAMS_YAML.read_text())


def good_params_hint() -> str:
    """How to go back to the parameters of the last run that finished (what the workspace's
    outputs and dvc.lock were made with)."""
    if LAST_GOOD.exists() and PARAMS_YAML.exists() and LAST_GOOD.read_text() == PARAMS_YAML.read_text():
        return "params.yaml is what the last good run used: the cause is elsewhere (the data, the code, the machine)"
    if LAST_GOOD.exists():
        return (f"params.yaml holds this run's parameters (`git diff params.yaml`); back to the last good run's: "
                f"cp {LAST_GOOD} params.yaml")
    return "params.yaml holds this run's parameters; back to the committed ones: git checkout params.yaml"


def overrides_from(
    method: str | None = None,
    epochs: int | None = None,
    label_fractions: Sequence[float] | None = None,
    tune_trials: int | None = None,
) -> list[str]:
    """The Prefect UI's shortcut parameters as ``section.key=value`` overrides."""
    out = []
    if method is not None:
        out.append(f"pretrain.method={method}")
    if epochs is not None:
        out.append(f"pretrain.epochs={epochs}")
    if label_fractions is not None:
        out.append(f"finetune.label_fractions={json.dumps(list(label_fractions))}")
    if tune_trials is not None:
        out.append(f"tune.num_samples={tune_trials}")
    return out


# --------------------------------------------------------------------------------- params.yaml
def _yaml() -> Any:
    from ruamel.yaml import YAML
    from ruamel.yaml.representer import RoundTripRepresenter

    class Representer(RoundTripRepresenter):
        """ruamel writes None as nothing (``key:``); params.yaml spells it ``null``, so an
        unchanged file round-trips byte for byte (a subclass: ruamel's representers are class-wide)."""

    Representer.add_representer(type(None), lambda r, _: r.represent_scalar("tag:yaml.org,2002:null", "null"))
    y = YAML()
    y.Representer = Representer
    y.preserve_quotes = True
    y.indent(mapping=2, sequence=4, offset=2)
    y.width = 4096  # never fold a line the user wrote on one
    return y


def write_params_yaml(params_file: Path, overrides: Sequence[str], target: Path = PARAMS_YAML) -> bool:
    """Make ``target`` hold ``params_file`` + ``overrides``; returns whether ``target`` changed."""
    y = _yaml()
    try:
        doc = y.load(params_file.read_text())
    except FileNotFoundError:
        raise ParamsError(f"{params_file}: params file not found") from None
    apply_overrides(doc, overrides)
    buf = io.StringIO()
    y.dump(doc, buf)
    new = buf.getvalue()
    if target.exists() and target.read_text() == new:
        return False
    write_text(target, new)
    return True


def _remember_smoke(before: str) -> None:
    """After a smoke run's write: keep ``before`` (params.yaml's text before it) to put back."""
    if not (SMOKE_WRITTEN.exists() and SMOKE_WRITTEN.read_text() == before):
        write_text(SMOKE_BACKUP, before)  # not itself a smoke file: the user's parameters
    write_text(SMOKE_WRITTEN, PARAMS_YAML.read_text())


def restore_after_smoke() -> bool:
    """If params.yaml is still exactly what a smoke run wrote, put back the one it replaced."""
    if SMOKE_WRITTEN.exists() and SMOKE_BACKUP.exists() and PARAMS_YAML.exists() \
            and PARAMS_YAML.read_text() == SMOKE_WRITTEN.read_text():
        write_text(PARAMS_YAML, SMOKE_BACKUP.read_text())
        SMOKE_WRITTEN.unlink()
        SMOKE_BACKUP.unlink()
        return True
    return False
