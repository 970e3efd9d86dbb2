"""Stage 0 -- sources: a manifest of the files ingest will read (``data/sources.json``), so that DVC
sees new, changed or removed source images without anyone listing image folders in dvc.yaml.

One entry per file: path, size and mtime (``os.scandir`` + ``stat`` only: no decoding, no hashing;
100k images take about a second), sorted, plus the ingest params that choose the sources. The file
is rewritten only when its content changes, so an untouched tree leaves its bytes -- and DVC's hash
of it -- as they were, and ingest stays cached. A copied tree (new mtimes) costs one re-ingest; the
dataset comes out the same, so the stages after it stay cached.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ssl_models.data import FASHION_MNIST_FILES, DataError
from ssl_models.data.image_folder import IMAGE_SUFFIXES
from tasks import paths
from tasks.io import write_text

if TYPE_CHECKING:  # importing tasks.config validates default params, which imports torch (seconds)
    from tasks.config import IngestParams



@dataclass
class SourcesResult:
    path: str
    source: str
    files: int
    bytes: int
    changed: bool  # whether the manifest was (re)written


def _entry(path: str, stat: os.stat_result) -> dict[str, Any]:
    return {"path": path, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def _image_files(root: str) -> list[dict[str, Any]]:
    """Every image under ``root`` (any depth): a superset of what ``read_image_folder`` reads.
    Files by suffix, case-insensitively; symlinked files followed; symlinked directories not
    descended into (like ``Path.rglob``) except right under ``root`` (class folders, followed by
    ``read_image_folder``)."""
    out = []
    stack = [root]
    while stack:
        directory = stack.pop()
        with os.scandir(directory) as it:
            for entry in it:
                if entry.is_dir(follow_symlinks=directory == root):
                    stack.append(entry.path)
                elif os.path.splitext(entry.name)[1].lower() in IMAGE_SUFFIXES and entry.is_file():
                    out.append(_entry(entry.path, entry.stat()))
    return out


def _directory(key: str, value: str) -> str:
    if not os.path.isdir(value):
        raise DataError(f"ingest.{key}: {value}: directory not found; fix `{key}` in params.yaml (section ingest)")
    return value


def _fashion_mnist(cfg: IngestParams) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    selected = {"source": cfg.source, "fashion_mnist_dir": cfg.fashion_mnist_dir, "download": cfg.download}
    stems = [stem for pair in FASHION_MNIST_FILES.values() for stem in pair]

    def find(directory: Path) -> list[dict[str, Any]] | None:
        """The four files as ``read_fashion_mnist`` picks them (.gz first), or None if one is missing."""
        files = []
        for stem in stems:
            for name in (f"{stem}.gz", stem):
                if (directory / name).is_file():
                    files.append(_entry(str(directory / name), (directory / name).stat()))
                    break
            else:
                return None
        return files

    files = find(Path(cfg.fashion_mnist_dir))
    if files is not None:
        return selected, files
    if not cfg.download:
        raise DataError(
            f"ingest.fashion_mnist_dir: {cfg.fashion_mnist_dir}: the four Fashion-MNIST IDX files "
            f"({', '.join(stems)}, .gz or not) are not there. Install the Debian package `dataset-fashion-mnist`, "
            "point `ingest.fashion_mnist_dir` at them, or set `ingest.download: true` on a machine with internet."
        )
    # ingest will download into DOWNLOADS: list what is there already (nothing before the first download)
    downloaded = paths.DOWNLOADS / "FashionMNIST" / "raw"
    selected["download_dir"] = str(downloaded)
    files = find(downloaded) if downloaded.is_dir() else None
    return selected, files or []


def _image_folder(cfg: IngestParams) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    f = cfg.image_folder
    dirs = {"train_dir": f.train_dir, "test_dir": f.test_dir, "unlabeled_dir": f.unlabeled_dir}
    if not f.train_dir and not f.unlabeled_dir:
        raise DataError("ingest.image_folder: set train_dir (root/<class>/*.png) and/or unlabeled_dir")
    files = []
    for key, value in dirs.items():
        if value:
            files += _image_files(_directory(f"image_folder.{key}", value))
    return {"source": cfg.source, "image_folder": dirs}, files


def source_manifest(cfg: IngestParams) -> dict[str, Any]:
    """The manifest of the source files ``cfg`` makes ingest read.

    Raises:
        DataError: a configured directory does not exist (naming the key and the path).
    """
    selected, files = _fashion_mnist(cfg) if cfg.source == "fashion_mnist" else _image_folder(cfg)
    files.sort(key=lambda e: e["path"])
    return {"params": selected, "files": len(files), "bytes": sum(e["size"] for e in files), "entries": files}


def render(manifest: dict[str, Any]) -> str:
    """JSON with one line per file (readable, diffable, and small for 100k files)."""
    head = {k: v for k, v in manifest.items() if k != "entries"}
    dumps = json.dumps  # only the path needs escaping; the numbers are ints
    lines = [f'{{"path": {dumps(e["path"])}, "size": {e["size"]}, "mtime_ns": {e["mtime_ns"]}}}'
             for e in manifest["entries"]]
    body = ",\n    ".join(lines)
    text = json.dumps(head, indent=2)[:-2]  # drop the closing "\n}"
    return text + ',\n  "entries": [' + (f"\n    {body}\n  " if lines else "") + "]\n}\n"


def refresh_sources(cfg: IngestParams, path: str | Path = paths.SOURCES) -> SourcesResult:
    """Write the manifest of ``cfg``'s source files to ``path`` atomically, only if it changed."""
    manifest = source_manifest(cfg)
    text = render(manifest)
    path = Path(path)
    try:
        changed = path.read_text() != text
    except (OSError, UnicodeDecodeError):  # missing or unreadable: write it
        changed = True
    if changed:
        write_text(path, text)
    return SourcesResult(str(path), cfg.source, manifest["files"], manifest["bytes"], changed)
