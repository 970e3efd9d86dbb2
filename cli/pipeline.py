"""The commands that run the pipeline: ``run`` (the whole flow), ``stage`` (one stage, as DVC
calls it) and ``retrain`` (the retrain flow)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from cli.app import ParamsOption, SetOption, app, console, enter_project, fail, known_errors


@app.command()
def stage(
    name: Annotated[str, typer.Argument(metavar="STAGE", hidden=True)],  # in the docstring
    params_file: Annotated[Path, typer.Option("--params", "-p", metavar="FILE", help="Parameters file (DVC uses params.yaml).")] = Path("params.yaml"),
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
) -> None:
    """Run one stage, exactly as `dvc repro` calls it (outputs in data/, models/, reports/).

    STAGE: sources, ingest, validate, pretrain, tune, finetune, evaluate or register.
    """
    enter_project()
    from tasks.config import STAGES, load_params

    if name not in STAGES:
        fail(f"unknown stage {name!r}; choose one of {', '.join(STAGES)}", 2)
    from tasks import paths
    from tasks.io import write_json
    from tasks.runner import run_stage

    try:
        params = load_params(params_file)
        result = run_stage(name, params, progress=progress)
    except known_errors() as e:
        fail(str(e).strip("'\""))
    write_json(paths.STAGE_RESULTS / f"{name}.json", result)
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
    root = enter_project()
    from tasks.config import ParamsError
    from tasks.run_setup import prepare_run

    try:
        setup = prepare_run(params_file, set_ or [], smoke)
    except ParamsError as e:
        fail(str(e), 2)
    if setup.restored_smoke:
        console.print("params.yaml: restored the parameters it held before the last --smoke run")
    from flows.pipeline import StageFailed, pipeline

    try:
        result = pipeline(setup=setup)
    except StageFailed as e:
        fail(str(e))
    print_summary(result, root)


def print_summary(result: dict, root: Path) -> None:
    """The stages' table, the test-split figures, the registration and where to look next."""
    from tasks.metrics import HEADLINE_METRICS, arms_rows, verdict

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
        for key, label in HEADLINE_METRICS.items():
            if key in m:
                t.add_row(label, f"{m[key]:.4f}")
        console.print(t)
        header, rows = arms_rows(m)
        arms = Table(title="fine-tuning arms (* ships: the validation-best)", show_edge=False)
        for col in header:
            arms.add_column(col)
        for row in rows:
            arms.add_row(*row)
        console.print(arms)
        console.print(verdict(m), highlight=False)
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


@app.command()
def retrain(
    set_: SetOption = None,
    force: Annotated[bool, typer.Option("--force", help="Run the pipeline even if the data neither changed nor drifted.")] = False,
    smoke: Annotated[bool, typer.Option("--smoke", help="The pipeline's tiny slice (a first taste, tests).")] = False,
    params_file: ParamsOption = Path("params.yaml"),
) -> None:
    """Retrain if the data changed or drifted since the champion; promote only a better model."""
    enter_project()
    from tasks.config import ParamsError
    from tasks.locks import LockTimeout

    from flows.pipeline import StageFailed
    from flows.retrain import retrain as retrain_flow

    try:
        r = retrain_flow(overrides=list(set_ or []), force=force, smoke=smoke, params_file=str(params_file))
    except (ParamsError, StageFailed, LockTimeout) as e:
        fail(str(e))
    score = r.get("drift_score")
    console.print(f"[bold]{r['decision']}[/]: {r['reason']}", highlight=False)
    console.print(f"data version {r['data_version']}, drift score "
                  f"{'-' if score is None else f'{score:.4f}'} (threshold {r['drift_threshold']}), "
                  f"champion now: version {r.get('champion_after') or '-'}; MLflow run {r['mlflow_run_id']}", highlight=False)
