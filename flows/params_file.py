"""Resolve the params a run uses and make ``params.yaml`` hold them, the way ``dvc exp run -S``
does in the workspace: DVC hashes params.yaml, so that is where a run's parameters must be for
``dvc status`` and ``dvc repro`` to agree with it. Comments and key order survive (ruamel)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.representer import RoundTripRepresenter

from tasks.config import Params, ParamsError, apply_overrides, parse_override, read_raw, validate_raw
from tasks.io import write_text

PARAMS_YAML = Path("params.yaml")


class _Representer(RoundTripRepresenter):
    """ruamel writes None as nothing (``key:``); params.yaml spells it ``null``, so an unchanged
    file must round-trip byte for byte (a subclass: ruamel's representers are class-wide)."""


_Representer.add_representer(type(None), lambda r, _: r.represent_scalar("tag:yaml.org,2002:null", "null"))


def _yaml() -> YAML:
    y = YAML()
    y.Representer = _Representer
    y.preserve_quotes = True
    y.indent(mapping=2, sequence=4, offset=2)
    return y


def resolve(params_file: Path, overrides: list[str]) -> Params:
    """Validate ``params_file`` with ``overrides`` applied (errors name the file and key)."""
    return validate_raw(apply_overrides(read_raw(params_file), overrides, str(params_file)), str(params_file))


def write_params_yaml(params_file: Path, overrides: list[str], target: Path = PARAMS_YAML) -> bool:
    """Make ``target`` hold ``params_file`` + ``overrides``; returns whether ``target`` changed."""
    y = _yaml()
    try:
        doc = y.load(params_file.read_text())
    except FileNotFoundError:
        raise ParamsError(f"{params_file}: params file not found") from None
    for text in overrides:
        path, value = parse_override(text)
        node: Any = doc
        for part in path[:-1]:
            if part not in node or node[part] is None:
                node[part] = {}
            node = node[part]
        node[path[-1]] = value
    buf = io.StringIO()
    y.dump(doc, buf)
    new = buf.getvalue()
    if target.exists() and target.read_text() == new:
        return False
    write_text(target, new)
    return True


# --smoke writes its overrides into params.yaml too (DVC must see them); the params.yaml it
# replaced is kept here and put back by the next run without --smoke, so a first taste never
# turns the user's next full run into another smoke run.
SMOKE_BACKUP = Path(".sslpipe/params.before-smoke.yaml")
SMOKE_WRITTEN = Path(".sslpipe/params.smoke.yaml")


def remember_smoke(before: str) -> None:
    """Call around a smoke run's write: ``before`` is params.yaml's text before it."""
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
