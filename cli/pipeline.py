"""The commands that run the pipeline: ``run`` (the whole flow), ``stage`` (one stage, as DVC
calls it) and ``retrain`` (the retrain flow)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

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
    from tasks.config import DATA_STAGES, STAGES, load_params

    if name not in STAGES:
        fail(f"unknown stage {name!r}; choose one of {', '.join(STAGES)}", 2)
    from tasks import paths
    from tasks.config import ParamsError
    from tasks.io import write_json
    from tasks.runner import run_stage

    try:
        params = load_params(params_file, methods=name not in DATA_STAGES)
        result = run_stage(name, params, progress=progress)
    except ParamsError as e:
        fail(str(e), 2)
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
    from tasks.run_setup import prepare_run, setup_notes

    try:
        setup = prepare_run(params_file, set_ or [], smoke)
    except ParamsError as e:
        fail(str(e), 2)
    for note in setup_notes(setup):
        console.print(note, highlight=False, soft_wrap=True)
    from cli.report import print_summary, run_flow
    from flows.pipeline import pipeline

    print_summary(run_flow(lambda: pipeline(setup=setup)), root)


@app.command()
def retrain(
    set_: SetOption = None,
    force: Annotated[bool, typer.Option("--force", help="Run the pipeline even if the data neither changed nor drifted.")] = False,
    smoke: Annotated[bool, typer.Option("--smoke", help="The pipeline's tiny slice (a first taste, tests).")] = False,
    params_file: ParamsOption = Path("params.yaml"),
) -> None:
    """Retrain if the data changed or drifted since the champion; promote only a better model."""
    enter_project()
    from tasks.config import ParamsError, load_params

    try:
        load_params(params_file, list(set_ or []))  # a bad --set answers now, not once the flow has started
    except ParamsError as e:
        fail(str(e), 2)
    from cli.report import run_flow
    from flows.retrain import retrain as retrain_flow
    from tasks.locks import LockTimeout

    try:
        r = run_flow(lambda: retrain_flow(overrides=list(set_ or []), force=force, smoke=smoke, params_file=str(params_file)))
    except ParamsError as e:
        fail(str(e), 2)
    except LockTimeout as e:
        fail(str(e))
    score = r.get("drift_score")
    console.print(f"[bold]{r['decision']}[/]: {r['reason']}", highlight=False)
    console.print(f"data version {r['data_version']}, drift score "
                  f"{'-' if score is None else f'{score:.4f}'} (threshold {r['drift_threshold']}), "
                  f"champion now: version {r.get('champion_after') or '-'}; MLflow run {r['mlflow_run_id']}", highlight=False)
