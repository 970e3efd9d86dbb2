"""A stage's outputs survive its failure.

DVC deletes a stage's outputs before it runs the stage's command (all but ``persist: true`` ones),
so a stage that fails after a good run would leave the workspace without them (a failing ingest
loses ``data/dataset``). ``KeptOutputs`` keeps them aside as hard links while the stage runs (no
copy: stages write new files, never into old ones) and puts them back when the stage fails or is
interrupted; ``dvc.lock``, which DVC leaves untouched on a failure, then still describes them, so
``dvc status`` names exactly what changed since the last good run.

Outside the pipeline flow (a plain ``dvc repro``), ``dvc checkout STAGE`` brings back the cached
outputs of the last good run.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from types import TracebackType

import yaml

from tasks import paths

KEPT = paths.STATE / "kept"  # kept outputs, one folder per stage, while the stage runs


def declared_outputs(stage: str, dvc_yaml: Path = Path("dvc.yaml")) -> list[Path]:
    """The outs, metrics and plots ``stage`` declares in ``dvc.yaml`` that DVC deletes before it
    runs (every one without ``persist: true``)."""
    spec = yaml.safe_load(dvc_yaml.read_text())["stages"][stage]
    out = []
    for kind in ("outs", "metrics", "plots"):
        for entry in spec.get(kind) or []:
            path, opts = next(iter(entry.items())) if isinstance(entry, dict) else (entry, None)
            if not (opts or {}).get("persist"):
                out.append(Path(path))
    return out


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:  # a file system without hard links
        shutil.copy2(src, dst)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


class KeptOutputs:
    """``with KeptOutputs(stage) as kept: ...; kept.succeeded()``: unless ``succeeded()`` was
    called, leaving the block puts the stage's outputs back as they were on entering it
    (``restored`` lists them)."""

    def __init__(self, stage: str, dvc_yaml: Path = Path("dvc.yaml")) -> None:
        self.stage = stage
        self.folder = KEPT / stage
        self.outputs = [p for p in declared_outputs(stage, dvc_yaml) if p.exists()]
        self.restored: list[Path] = []
        self._ok = False

    def __enter__(self) -> KeptOutputs:
        _remove(self.folder)
        for path in self.outputs:
            target = self.folder / path
            target.parent.mkdir(parents=True, exist_ok=True)
            if path.is_dir():
                shutil.copytree(path, target, copy_function=_link_or_copy, symlinks=True)
            else:
                _link_or_copy(str(path), str(target))
        return self

    def succeeded(self) -> None:
        self._ok = True

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        try:
            if not self._ok:
                for path in self.outputs:
                    _remove(path)
                    path.parent.mkdir(parents=True, exist_ok=True)
                    os.replace(self.folder / path, path)
                    self.restored.append(path)
        finally:
            _remove(self.folder)
