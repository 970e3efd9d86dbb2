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
    # while `sslpipe server start`'s servers run, use them (unless the variables are set already)
    from flows.servers import running_env

    for key, value in running_env(root).items():
        os.environ.setdefault(key, value)
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

    from flows.params_file import resolve, restore_after_smoke
    from flows.pipeline import SMOKE_OVERRIDES, StageFailed, pipeline

    overrides = list(set_ or [])
    if not smoke and restore_after_smoke():
        console.print("params.yaml: restored the parameters it held before the last --smoke run")
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


# ------------------------------------------------------------------------------ operate (issue 4)
server_app = typer.Typer(help="The project's Prefect and MLflow servers (UIs, shared API), started detached.",
                         no_args_is_help=True)
app.add_typer(server_app, name="server")


@server_app.command("start")
def server_start(
    host: Annotated[str, typer.Option(help="Address to bind; 0.0.0.0 exposes the UIs to the network.")] = "127.0.0.1",
    prefect_port: Annotated[Optional[int], typer.Option(help="Prefect port (default 4200, else a free one; 0: any free).")] = None,
    mlflow_port: Annotated[Optional[int], typer.Option(help="MLflow port (default 5000, else a free one; 0: any free).")] = None,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for both health checks.")] = 180,
) -> None:
    """Start the Prefect server and the MLflow server in the background and wait until both are healthy."""
    import time

    root = _enter_project()
    from flows.servers import ServerError, start

    t0 = time.perf_counter()
    with console.status("starting the Prefect and MLflow servers (20-40 s on a small machine)"):
        try:
            states = start(root, host, prefect_port, mlflow_port, timeout)
        except ServerError as e:
            _fail(str(e))
    table = Table(show_edge=False, title=f"servers ready in {time.perf_counter() - t0:.1f} s")
    for col in ("server", "UI", "pid", "store"):
        table.add_column(col)
    for st in states:
        table.add_row(st.name, st.url, str(st.pid), st.database)
    console.print(table)
    exports = {k: v for st in states for k, v in st.env.items()}
    console.print("sslpipe commands in this project use them now. For other tools, export:")
    for key, value in exports.items():
        console.print(f"  export {key}={value}", highlight=False, soft_wrap=True)
    console.print(f"logs: {root}/.sslpipe/servers/*.log; stop with: sslpipe server stop", highlight=False)


@server_app.command("stop")
def server_stop() -> None:
    """Stop the servers `sslpipe server start` started (their process groups, by pid file)."""
    root = _enter_project()
    from flows.servers import stop

    done = stop(root)
    if not done:
        console.print("no servers recorded under .sslpipe/servers: nothing to stop")
    for name, how in done:
        console.print(f"{name}: {how}")


@server_app.command("status")
def server_status() -> None:
    """Say which of the two servers run, where, and whether they answer their health checks."""
    root = _enter_project()
    from flows.servers import status

    table = Table(show_edge=False)
    for col in ("server", "state", "UI", "pid", "store"):
        table.add_column(col)
    for st, name, state in status(root):
        color = {"running": "green", "stale": "yellow", "unhealthy": "red"}.get(state, "dim")
        table.add_row(name, f"[{color}]{state}[/]", st.url if st else "-", str(st.pid) if st else "-",
                      st.database if st else "-")
    console.print(table)
    if any(state == "stale" for _, _, state in status(root)):
        console.print("stale: the process is gone; `sslpipe server stop` clears it, `sslpipe server start` starts anew")


@app.command()
def serve(
    limit: Annotated[Optional[int], typer.Option(help="At most this many flow runs at a time.")] = None,
) -> None:
    """Create the `pipeline` and `retrain` deployments and run their flow runs until Ctrl-C.

    Needs a Prefect server (`sslpipe server start`, or PREFECT_API_URL): the UI is where you
    trigger `pipeline` with edited parameters and where `retrain`'s schedule lives.
    """
    _enter_project()
    from tasks.config import ParamsError, load_params

    from flows.deployments import serve_deployments

    if not os.environ.get("PREFECT_API_URL"):
        _fail("no Prefect server: run `sslpipe server start` first (or set PREFECT_API_URL)")
    try:
        params = load_params()
    except ParamsError as e:
        _fail(str(e))
    ui = os.environ.get("PREFECT_UI_URL") or os.environ["PREFECT_API_URL"].removesuffix("/api")
    console.print(f"serving sslpipe-pipeline/pipeline and sslpipe-retrain/retrain (cron '{params.retrain.cron}' "
                  f"{params.retrain.timezone}); trigger them at {ui}/deployments", highlight=False)
    serve_deployments(params, limit=limit)


@app.command()
def retrain(
    set_: SetOption = None,
    force: Annotated[bool, typer.Option("--force", help="Run the pipeline even if the data neither changed nor drifted.")] = False,
    smoke: Annotated[bool, typer.Option("--smoke", help="The pipeline's tiny slice (a first taste, tests).")] = False,
    params_file: ParamsOption = Path("params.yaml"),
) -> None:
    """Retrain if the data changed or drifted since the champion; promote only a better model."""
    _enter_project()
    from tasks.config import ParamsError
    from tasks.locks import LockTimeout

    from flows.pipeline import StageFailed
    from flows.retrain import retrain as retrain_flow

    try:
        r = retrain_flow(overrides=_as_dict(list(set_ or [])), force=force, smoke=smoke, params_file=str(params_file))
    except (ParamsError, StageFailed, LockTimeout) as e:
        _fail(str(e))
    score = r.get("drift_score")
    console.print(f"[bold]{r['decision']}[/]: {r['reason']}", highlight=False)
    console.print(f"data version {r['data_version']}, drift score "
                  f"{'-' if score is None else f'{score:.4f}'} (threshold {r['drift_threshold']}), "
                  f"champion now: version {r.get('champion_after') or '-'}; MLflow run {r['mlflow_run_id']}", highlight=False)


@app.command()
def compare(
    run_ids: Annotated[Optional[list[str]], typer.Argument(help="MLflow run ids (or 8+ character prefixes).")] = None,
    last: Annotated[int, typer.Option("--last", "-n", help="Without run ids: the last N pipeline runs.")] = 5,
) -> None:
    """Pipeline runs side by side from MLflow: params that differ, metrics, duration."""
    _enter_project()
    from mlflow import MlflowClient

    from flows.compare import compare_table, find_runs
    from tasks.tracking import setup_mlflow

    experiment_id = setup_mlflow()
    try:
        runs = find_runs(MlflowClient(), experiment_id, run_ids, last)
    except Exception as e:  # unknown id: say which
        _fail(str(e).strip("'\""))
    if not runs:
        _fail("no pipeline runs in MLflow yet: run `sslpipe run --smoke` first")
    console.print(compare_table(runs))


@app.command()
def models(
    name: Annotated[Optional[str], typer.Option(help="Registered model (default: register.model_name in params.yaml).")] = None,
) -> None:
    """The registered versions, with their aliases (champion, challenger) and key metrics."""
    _enter_project()
    from mlflow import MlflowClient

    from flows.registry import model_versions, versions_table
    from tasks.config import load_params
    from tasks.tracking import setup_mlflow

    setup_mlflow()
    name = name or load_params().register_.model_name
    versions, aliases = model_versions(MlflowClient(), name)
    if not versions:
        _fail(f"no versions of {name!r} registered yet: run `sslpipe run --smoke` first")
    console.print(versions_table(name, versions, aliases))


@app.command()
def predict(
    images: Annotated[list[Path], typer.Argument(help="Image files and/or folders (searched recursively).")],
    model: Annotated[str, typer.Option("--model", "-m", help="An alias (champion, challenger), a version number, or a models:/ URI.")] = "champion",
    name: Annotated[Optional[str], typer.Option(help="Registered model (default: register.model_name in params.yaml).")] = None,
) -> None:
    """Classify images with a registered model loaded through MLflow (as `mlflow models serve` does)."""
    images = [p.resolve() for p in images]  # relative to where the command was typed
    _enter_project()
    from flows.predict import image_files, model_uri, predict_files
    from tasks.config import load_params
    from tasks.tracking import setup_mlflow

    setup_mlflow()
    uri = model_uri(model, name or load_params().register_.model_name)
    try:
        files = image_files(images)
        results = predict_files(uri, files)
    except FileNotFoundError as e:
        _fail(str(e))
    except Exception as e:  # noqa: BLE001 -- MLflow's errors for a missing alias or model
        _fail(f"{uri}: {e}")
    table = Table(show_edge=False, title=uri)
    for col in ("image", "class", "probability"):
        table.add_column(col)
    for f, cls, p in results:
        table.add_row(str(f), cls, f"{p:.3f}")
    console.print(table)


@app.command("augment-preview")
def augment_preview(
    method: Annotated[Optional[str], typer.Option("--method", "-m", help="SSL method whose views to show (default: pretrain.method in params.yaml).")] = None,
    n: Annotated[int, typer.Option("--n", min=1, max=64, help="Number of images (rows).")] = 8,
    out: Annotated[Path, typer.Option("--out", "-o", help="PNG to write (relative to the current directory).")] = Path("reports/plots/augment_preview.png"),
    set_: SetOption = None,
    params_file: Annotated[Path, typer.Option("--params", "-p", help="Parameters file (augmentation, method arguments, seed).")] = Path("params.yaml"),
) -> None:
    """Write a grid of original images and their augmented views, to check the augmentation by eye.

    Reads the train split of data/dataset (no validation needed); without a dataset yet, the
    Fashion-MNIST IDX files at ingest.fashion_mnist_dir.
    """
    out = out.resolve()  # relative to where the command was typed
    _enter_project()
    from ssl_models.data import DataError, read_fashion_mnist
    from ssl_models.methods import method_class
    from tasks import plots
    from tasks.config import ParamsError, load_params
    from tasks.dataset import DatasetError, load_dataset
    from tasks.pretrain import augment_preview as preview_figure
    from tasks.pretrain import build_method

    try:
        params = load_params(params_file, list(set_ or []))
    except ParamsError as e:
        _fail(str(e))
    cfg = params.pretrain
    try:
        images, source = load_dataset(require_validation=False).split("train")[0], "data/dataset"
    except DatasetError:
        try:
            data = read_fashion_mnist(params.ingest.fashion_mnist_dir)
        except DataError as e:
            _fail(f"no dataset in data/dataset and no Fashion-MNIST files: {e}; run `sslpipe stage ingest` first")
        import torch

        images, source = torch.from_numpy(data["train"][0]), params.ingest.fashion_mnist_dir
    if len(images) == 0:
        _fail(f"{source}: no train images")
    name = method or cfg.method
    try:
        backbones = method_class(name).backbones
        backbone = cfg.backbone if not backbones or cfg.backbone in backbones else backbones[0]  # MAE: views only
        built, _ = build_method(cfg.model_copy(update={"method": name, "backbone": backbone}), images)
    except ValueError as e:
        _fail(str(e))
    plots.save(preview_figure(built, images[:n], cfg.seed), out)
    console.print(f"wrote {out}: {min(n, len(images))} images from {source} and their {name} views", highlight=False)


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    app()
