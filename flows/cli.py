"""The ``sslpipe`` command line."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(
    help="sslpipe: self-supervised pretraining, tuning, fine-tuning, evaluation and registration of "
    "image models, orchestrated by Prefect, reproduced by DVC, tracked in MLflow.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
err_console = Console(stderr=True)

SetOption = Annotated[
    Optional[list[str]],
    typer.Option("--set", "-s", help="Override a parameter: section.key=value (repeatable), e.g. pretrain.epochs=5."),
]
ParamsOption = Annotated[
    Path, typer.Option("--params", "-p", help="Parameters file to start from (its values go into params.yaml).")
]


def project_root() -> Path:
    """The nearest directory upwards holding dvc.yaml; commands run there, as DVC does."""
    here = Path.cwd().resolve()
    for d in (here, *here.parents):
        if (d / "dvc.yaml").exists():
            return d
    err_console.print("[red]error:[/] no dvc.yaml here or above; run sslpipe inside the project directory")
    raise typer.Exit(2)


def _enter_project() -> Path:
    root = project_root()
    os.chdir(root)
    # tools' own conventions, with project-local defaults (side effects at the edge, not at import)
    os.environ.setdefault("PREFECT_HOME", str(root / ".prefect"))
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    # the ephemeral API server needs ~15-30 s to start on 2 cores; Prefect's default wait is 20 s
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "INFO")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a local, loopback-only instance
    os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
    os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")
    os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
    return root


def _fail(message: str, code: int = 1) -> None:
    err_console.print(f"[red]error:[/] {message}")
    raise typer.Exit(code)


def _known_errors() -> tuple[type[BaseException], ...]:
    from ssl_models.data import DataError
    from tasks.config import ParamsError
    from tasks.dataset import DatasetError
    from tasks.validate import ValidationFailed

    return (DataError, ParamsError, DatasetError, ValidationFailed, FileNotFoundError)


@app.command()
def stage(
    name: Annotated[str, typer.Argument(help="ingest, validate, pretrain, tune, finetune, evaluate or register.")],
    params_file: Annotated[Path, typer.Option("--params", "-p", help="Parameters file (DVC uses params.yaml).")] = Path("params.yaml"),
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
) -> None:
    """Run one stage, exactly as `dvc repro` calls it (outputs in data/, models/, reports/)."""
    _enter_project()
    from tasks.config import STAGES, load_params
    from tasks.io import write_json
    from tasks.runner import run_stage

    if name not in STAGES:
        _fail(f"unknown stage {name!r}; choose one of {', '.join(STAGES)}", 2)
    try:
        params = load_params(params_file)
        result = run_stage(name, params, progress=progress)
    except _known_errors() as e:
        _fail(str(e).strip("'\""))
    from flows.pipeline import STAGE_RESULTS

    write_json(STAGE_RESULTS / f"{name}.json", result)
    console.print(f"[green]{name}[/] done in {result['seconds']:.1f} s")


@app.command()
def run(
    set_: SetOption = None,
    params_file: ParamsOption = Path("params.yaml"),
    smoke: Annotated[bool, typer.Option("--smoke", help="A tiny slice (a few hundred images, one epoch): a first taste, in minutes.")] = False,
) -> None:
    """Run the whole pipeline as a Prefect flow; DVC skips stages whose inputs did not change.

    Overrides are written into params.yaml (as `dvc exp run -S` does), so `dvc status` and
    `dvc repro` agree with the run; `git diff params.yaml` shows them.
    """
    root = _enter_project()
    from tasks.config import ParamsError

    from flows.params_file import resolve
    from flows.pipeline import SMOKE_OVERRIDES, StageFailed, pipeline

    overrides = list(set_ or [])
    try:
        resolve(params_file, (SMOKE_OVERRIDES if smoke else []) + overrides)
    except ParamsError as e:
        _fail(str(e))
    try:
        result = pipeline(overrides=_as_dict(overrides), smoke=smoke, params_file=str(params_file))
    except StageFailed as e:
        _fail(str(e))
    print_summary(result, root)


def _as_dict(overrides: list[str]) -> dict[str, str]:
    out = {}
    for text in overrides:
        key, _, value = text.partition("=")
        out[key.strip()] = value
    return out


def print_summary(result: dict, root: Path) -> None:
    table = Table(title="stages", show_edge=False)
    for col in ("stage", "status", "seconds"):
        table.add_column(col)
    for o in result["stages"]:
        table.add_row(o["stage"], o["status"], f"{o.get('seconds', 0):.0f}" if o["status"] == "ran" else "-")
    console.print(table)
    m = result.get("metrics") or {}
    if m:
        t = Table(title="test split", show_edge=False)
        t.add_column("metric")
        t.add_column("top-1", justify="right")
        for key, label in (("knn_top1", "kNN (k=20) on SSL features"), ("knn_top1_raw_pixels", "kNN on raw pixels"),
                           ("knn_top1_random_init", "kNN on a random-init encoder"), ("linear_top1", "linear probe on SSL features")):
            t.add_row(label, f"{m[key]:.4f}")
        for fraction, e in m["fractions"].items():
            t.add_row(f"{fraction} of labels ({e['num_labels']}): fine-tuned", f"{e['finetune_top1']:.4f}")
            t.add_row(f"{fraction} of labels ({e['num_labels']}): supervised baseline", f"{e['supervised_top1']:.4f}")
        console.print(t)
    reg = result.get("registration") or {}
    if reg:
        console.print(f"registered [bold]{reg['model_name']}[/] v{reg['version']} as [bold]{reg['alias']}[/]: {reg['reason']}")
    console.print(
        "\nLook at the results:\n"
        f"  files:      {root}/reports/metrics.json, reports/plots/, models/\n"
        "  both UIs:   make ui   (Prefect http://127.0.0.1:4200, MLflow http://127.0.0.1:5000)\n"
        f"  MLflow UI:  .venv/bin/mlflow ui --backend-store-uri sqlite:///{root}/mlflow.db --port 5000\n"
        f"  Prefect UI: PREFECT_HOME={root}/.prefect .venv/bin/prefect server start --port 4200\n"
        "  DVC:        .venv/bin/dvc metrics show; .venv/bin/dvc status"
    )


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    app()
