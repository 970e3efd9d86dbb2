"""The commands about results: ``compare`` (runs side by side), ``models`` (registered versions)
and ``predict`` (classify images with a registered model)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from cli.app import app, console, enter_project, err_console, fail

@app.command()
def compare(
    run_ids: Annotated[Optional[list[str]], typer.Argument(metavar="RUN_ID", hidden=True)] = None,  # in the docstring
    last: Annotated[int, typer.Option("--last", "-n", metavar="N", help="Without run ids: the last N pipeline runs.")] = 5,
) -> None:
    """Pipeline runs side by side from MLflow: params that differ, metrics, duration.

    RUN_ID: MLflow run ids (or 8+ character prefixes); without any, the last N pipeline runs.
    """
    enter_project()
    from mlflow import MlflowClient

    from cli.compare import compare_table
    from tasks.tracking import find_runs, setup_mlflow

    experiment_id = setup_mlflow()
    try:
        runs = find_runs(MlflowClient(), experiment_id, run_ids, last)
    except Exception as e:  # unknown id: say which
        fail(str(e).strip("'\""))
    if not runs:
        fail("no pipeline runs in MLflow yet: run `sslpipe run --smoke` first")
    console.print(compare_table(runs))


@app.command()
def models(
    name: Annotated[Optional[str], typer.Option(metavar="MODEL_NAME", help="Registered model (default: register.model_name in params.yaml).")] = None,
) -> None:
    """The registered versions, with their aliases (champion, challenger) and key metrics."""
    enter_project()
    from mlflow import MlflowClient

    from cli.registry import versions_table
    from tasks.config import load_params
    from tasks.registry import model_versions
    from tasks.tracking import setup_mlflow

    setup_mlflow()
    name = name or load_params(methods=False).register_.model_name
    versions, aliases = model_versions(MlflowClient(), name)
    if not versions:
        fail(f"no versions of {name!r} registered yet: run `sslpipe run --smoke` first")
    console.print(versions_table(name, versions, aliases))


@app.command()
def predict(
    images: Annotated[list[Path], typer.Argument(metavar="IMAGE", hidden=True)],  # in the docstring
    model: Annotated[str, typer.Option("--model", "-m", metavar="ALIAS|VERSION|URI", help="An alias (champion, challenger), a version number, or a models:/ URI.")] = "champion",
    name: Annotated[Optional[str], typer.Option(metavar="MODEL_NAME", help="Registered model (default: register.model_name in params.yaml).")] = None,
    strict: Annotated[bool, typer.Option("--strict", help="Fail on an unreadable image instead of skipping it with a warning.")] = False,
) -> None:
    """Classify images with a registered model loaded through MLflow (as `mlflow models serve` does).

    IMAGE: image files and/or folders (searched recursively).
    """
    images = [p.resolve() for p in images]  # relative to where the command was typed
    enter_project()
    from ssl_models.data import DataError
    from tasks.config import ParamsError, load_params
    from tasks.predict import ModelLoadError, image_files, model_uri, predict_files

    try:
        files = image_files(images)  # before MLflow: a wrong path answers at once
        uri = model_uri(model, name or load_params(methods=False).register_.model_name)
    except (FileNotFoundError, DataError, ParamsError) as e:
        fail(str(e))
    from tasks.tracking import setup_mlflow

    setup_mlflow()
    try:
        result = predict_files(uri, files, strict=strict)
    except (DataError, ModelLoadError, ValueError) as e:
        fail(str(e))
    table = Table(show_edge=False, title=uri)
    for col in ("image", "class", "probability"):
        table.add_column(col)
    for f, cls, p in result.rows:
        table.add_row(str(f), cls, f"{p:.3f}")
    console.print(table)
    for why in result.skipped:
        err_console.print(f"[yellow]warning:[/] skipped {why}", highlight=False, soft_wrap=True)
    if result.skipped:
        err_console.print(f"[yellow]warning:[/] {len(result.skipped)} of {len(files)} images unreadable and skipped "
                          "(--strict makes that an error)", highlight=False)
