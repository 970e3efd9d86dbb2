"""What ``sslpipe run`` and ``sslpipe retrain`` print at the end: the summary of a run that finished
(tables, its MLflow run and Prefect flow run, the next commands), or a failed stage's message
(what, where, what to do) as the last lines, without a traceback."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
from pathlib import Path
from collections.abc import Callable
from typing import Any, TypeVar

import typer
from rich.table import Table

from cli.app import console, err_console

T = TypeVar("T")


class _NoServerStopNote(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Stopping temporary server")


def keep_last_lines_last() -> None:
    """Prefect notes its temporary API server's stop at exit, after everything else: drop that
    note, so that the run's summary or error stays the last lines."""
    logger = logging.getLogger("prefect")
    if not any(isinstance(f, _NoServerStopNote) for f in logger.filters):
        logger.addFilter(_NoServerStopNote())


def print_failure(e: Any) -> None:
    """A failed stage (``flows.pipeline.StageFailed``): the error, the outputs put back, how to go
    back to the last good parameters, the full log. The caller exits 1."""
    from tasks.run_setup import good_params_hint

    lines = [f"[red]error:[/] {e}"]
    if e.restored:
        lines.append(f"  kept: {', '.join(e.restored)}, as the last good run left {'it' if len(e.restored) == 1 else 'them'}; "
                     "`dvc status` says what changed since")
    lines.append(f"  {good_params_hint()}")
    if e.log:
        lines.append(f"  full log: {Path(e.log).resolve()}")
    for line in lines:
        err_console.print(line, highlight=False, soft_wrap=True)


class Interrupt:
    """Ctrl-C during a run: the tools stop noisily (Prefect's temporary API server gets the signal
    too, so its clients log connection tracebacks while they report the crash). On the first
    Ctrl-C this silences logging, so that ``print_interrupted`` stays the last line; ``happened``
    tells the caller, whatever exception the interrupt surfaced as."""

    def __init__(self) -> None:
        self.happened = False
        signal.signal(signal.SIGINT, self._on_sigint)

    def _on_sigint(self, signum: int, frame: Any) -> None:
        self.happened = True
        logging.disable(logging.CRITICAL)
        logging.raiseExceptions = False  # handlers failing to reach the stopped server print nothing
        signal.default_int_handler(signum, frame)


def print_interrupted() -> None:
    """After Ctrl-C (the caller exits 130): the stage that ran was stopped with all it started, and
    its outputs put back."""
    err_console.print("interrupted: the running stage and everything it started were stopped; its outputs are as the "
                      "last good run left them (`dvc status` says what is stale)", highlight=False, soft_wrap=True)


def run_flow(flow: Callable[[], T]) -> T:
    """Run a pipeline flow (``pipeline``, ``retrain``) as the CLI does: a failed stage prints its
    message and exits 1, Ctrl-C one line and exit 130; anything else propagates."""
    from flows.pipeline import StageFailed

    keep_last_lines_last()
    interrupt = Interrupt()
    try:
        return flow()
    except StageFailed as e:
        print_failure(e)
        raise typer.Exit(1) from None
    except BaseException:
        if not interrupt.happened:
            raise
        print_interrupted()
        raise typer.Exit(130) from None


def mlflow_run_link(run_id: str) -> str:
    """The run's page when MLflow is a server; else how to open the UI on the local store."""
    from mlflow import MlflowClient

    uri = os.environ.get("MLFLOW_TRACKING_URI", "")
    if uri.startswith("http"):
        experiment_id = MlflowClient().get_run(run_id).info.experiment_id
        return f"{uri.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"
    return f"run {run_id} (`sslpipe server start` serves the UI)"


def prefect_flow_run_link(result: dict[str, Any]) -> str:
    return result.get("flow_run_url") or f"flow run {result['flow_run_id']} (`sslpipe server start` serves the UI)"


def git_hint(root: Path) -> str:
    """One line when dvc.lock or params.yaml differ from git: how to record the run (DVC says it
    after every stage; once is enough)."""
    proc = subprocess.run(["git", "status", "--porcelain", "--", "dvc.lock", "params.yaml"], cwd=root,
                          capture_output=True, text=True)
    changed = [line[3:] for line in proc.stdout.splitlines()] if proc.returncode == 0 else []
    if not changed:
        return ""
    return (f"  record it:  git add {' '.join(changed)} && git commit   (with a DVC remote: dvc push)")


def print_summary(result: dict[str, Any], root: Path) -> None:
    """The stages' table, the test-split figures, the registration, this run's links and the next
    commands."""
    from tasks.metrics import HEADLINE_METRICS, arms_rows, verdict
    from tasks.smoke import SMOKE_NOTE

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
        console.print(verdict(m), highlight=False, soft_wrap=True)
    reg = result.get("registration") or {}
    if reg:
        console.print(f"registered [bold]{reg['model_name']}[/] v{reg['version']} as [bold]{reg['alias']}[/]: {reg['reason']}",
                      soft_wrap=True)
    if result.get("smoke"):
        console.print(f"[yellow]{SMOKE_NOTE}[/]", highlight=False, soft_wrap=True)
    lines = ["", "This run:"]
    if result.get("mlflow_run_id"):
        lines += [f"  MLflow:     {mlflow_run_link(result['mlflow_run_id'])}",
                  f"  Prefect:    {prefect_flow_run_link(result)}"]
    lines.append(f"  files:      {root}/reports/metrics.json, reports/plots/, models/; dvc metrics show")
    if not result.get("smoke") and (hint := git_hint(root)):  # a smoke run's parameters are no result to keep
        lines.append(hint)
    lines += [
        "Next:",
        "  sslpipe predict IMAGES...   classify images with the champion",
        "  sslpipe compare             this run beside the last ones",
        "  sslpipe models              the registered versions and their aliases",
        "  sslpipe server start        the Prefect and MLflow UIs (make ui)",
    ]
    for line in lines:
        console.print(line, highlight=False, soft_wrap=True)
