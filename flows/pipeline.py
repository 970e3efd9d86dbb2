"""The Prefect pipeline flow: every stage in order, each through DVC (``dvc repro --single-item``),
so DVC alone decides what is stale and ``dvc.lock`` stays true whichever side ran it."""

from __future__ import annotations

import logging
import time
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.logging.loggers import PrefectLogAdapter
from prefect.runtime import flow_run
from prefect.states import Failed, State

from flows.dvc_runner import repro
from flows.run_plan import plan, record_timings
from tasks import paths
from tasks.config import STAGES, MethodName
from tasks.io import read_json
from tasks.metrics import HEADLINE_METRICS, arms_rows, verdict
from tasks.run_setup import RunSetup, overrides_from, prepare_run, remember_good_params, setup_notes
from tasks.smoke import SMOKE_NOTE
from tasks.stage_outputs import KeptOutputs
from tasks.tracking import stage_env


class StageFailed(RuntimeError):
    """A stage failed: ``str()`` is one line (the Prefect state's message); the attributes say
    where its full log is and which outputs were put back as the last good run left them."""

    def __init__(self, stage: str, error: str, log: str = "", restored: tuple[str, ...] = ()) -> None:
        super().__init__(stage, error, log, restored)
        self.stage, self.error, self.log, self.restored = stage, error, log, restored

    def __str__(self) -> str:
        return f"stage {self.stage} failed: {self.error}"

    def __repr__(self) -> str:  # Prefect logs the state's message, then this
        return f"StageFailed(stage={self.stage!r})"


def failed_state(e: StageFailed) -> State:
    """A failed state instead of a raised exception: Prefect logs no traceback for it."""
    return Failed(message=str(e), data=e)


class _NoEmptyTraceback(logging.Filter):
    """Prefect logs a failed task state with ``exc_info=True`` outside any exception, which prints
    "NoneType: None" under the line; drop that empty traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info == (None, None, None):
            record.exc_info = None
        return True


def _quiet_failed_states() -> None:
    logger = logging.getLogger("prefect.task_runs")
    if not any(isinstance(f, _NoEmptyTraceback) for f in logger.filters):
        logger.addFilter(_NoEmptyTraceback())


@task(name="stage", task_run_name="{stage}")
def run_stage(stage: str, env: dict[str, str]) -> dict[str, Any] | State:
    """One stage through DVC: skipped when DVC says its inputs are unchanged. ``sources`` always
    runs (``--force``): DVC cannot see a new image in a folder, so this cheap step refreshes the
    manifest that ingest depends on, rewriting it only when a file changed.

    A failing stage ends in a failed state (``StageFailed``), its outputs put back as the last
    good run left them (DVC deletes them before running the stage)."""
    logger = get_run_logger()
    forced = stage == "sources"
    start = time.perf_counter()
    to_api = PrefectLogAdapter(logging.getLogger("prefect.extra"), logger.extra)  # the terminal has the lines
    with KeptOutputs(stage) as kept:
        result = repro(stage, env, to_api.info, force=forced)
        if result.code == 0:
            kept.succeeded()
    if result.skipped:
        logger.info("%s: inputs unchanged, nothing to do (dvc.lock is up to date)", stage)
        return {"stage": stage, "status": "cached"}
    if result.code != 0:
        error = result.error.removeprefix("error: ").removeprefix("ERROR: ") or f"dvc repro exited with {result.code}"
        return failed_state(StageFailed(stage, error, str(result.log), tuple(str(p) for p in kept.restored)))
    result_file = paths.STAGE_RESULTS / f"{stage}.json"
    out = read_json(result_file) if result_file.exists() else {}
    return {"stage": stage, "status": "ran", "seconds": time.perf_counter() - start, "result": out}


# the register stage talks to the tracking server: the one step whose failure may be transient
run_register = run_stage.with_options(retries=2, retry_delay_seconds=[5, 15])


def run_stages(stages: tuple[str, ...], env: dict[str, str]) -> tuple[list[dict[str, Any]], StageFailed | None]:
    """Each stage in order, through DVC, until one fails: the outcomes, and the failure or None."""
    _quiet_failed_states()
    outcomes: list[dict[str, Any]] = []
    for stage in stages:
        state = (run_register if stage == "register" else run_stage)(stage, env, return_state=True)
        outcome = state.result(raise_on_failure=False)
        if isinstance(outcome, StageFailed):
            outcomes.append({"stage": stage, "status": "failed"})
            return outcomes, outcome
        if isinstance(outcome, BaseException):  # not a stage's failure: a bug, with its traceback
            raise outcome
        outcomes.append(outcome)
    return outcomes, None


def results_markdown(outcomes: list[dict[str, Any]], metrics: dict[str, Any], registration: dict[str, Any],
                     smoke: bool = False) -> str:
    lines = ["# sslpipe results", ""]
    if smoke:
        lines += [f"> **{SMOKE_NOTE}**", ""]
    lines += ["| stage | status | seconds |", "|---|---|---|"]
    lines += [f"| {o['stage']} | {o['status']} | {o.get('seconds', 0):.0f} |" for o in outcomes]
    if metrics:
        lines += ["", "| metric | value |", "|---|---|"]
        for key in HEADLINE_METRICS:
            if key in metrics:
                lines.append(f"| {key} | {metrics[key]:.4f} |")
        header, rows = arms_rows(metrics)
        lines += ["", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        lines += ["", f"**{verdict(metrics)}** (* marks the arm chosen at each fraction, on validation)."]
    if registration:
        lines += ["", f"Registered **{registration['model_name']}** version {registration['version']} "
                      f"as `{registration['alias']}`: {registration['reason']}."]
    return "\n".join(lines) + "\n"


def flow_run_link() -> str:
    """This flow run's page in the Prefect UI; empty without a UI (the ephemeral API renders the
    URL as "None/flow-runs/...")."""
    url = flow_run.ui_url or ""
    return "" if url.startswith("None") else url


@flow(name="sslpipe-pipeline", log_prints=True)
def pipeline(
    method: MethodName | None = None,
    epochs: int | None = None,
    label_fractions: list[float] | None = None,
    tune_trials: int | None = None,
    overrides: list[str] | None = None,
    smoke: bool = False,
    params_file: str = "params.yaml",
    setup: RunSetup | None = None,
) -> dict[str, Any]:
    """Ingest, validate, pretrain, tune, fine-tune, evaluate and register.

    Args:
        method: SSL method (``pretrain.method``).
        epochs: pretraining epochs (``pretrain.epochs``).
        label_fractions: fractions of train labels to fine-tune on (``finetune.label_fractions``).
        tune_trials: Ray Tune trials per arm (``tune.num_samples``).
        overrides: any other parameter, as ``section.key=value`` (``["pretrain.lr=0.1"]``), as
            ``sslpipe run --set`` takes them.
        smoke: a tiny slice (a few hundred images, one epoch) for a first taste and for tests.
        params_file: the parameters file to start from.
        setup: a run already prepared by the caller (``sslpipe run``, the retrain flow); when
            given, the parameters above are not used. Leave it empty in the UI.
    """
    import mlflow

    from tasks.metrics import flat_metrics
    from tasks.tracking import dvc_data_hash, log_run_setup, run_tags, setup_mlflow

    logger = get_run_logger()
    if setup is None:  # a run from the Prefect UI or a deployment (the CLI prepares its own and says so)
        setup = prepare_run(params_file, [*overrides_from(method, epochs, label_fractions, tune_trials), *(overrides or [])],
                            smoke)
        for note in setup_notes(setup):
            logger.info(note)
    setup_mlflow()
    link = flow_run_link()
    tags = {**run_tags("pipeline"), "prefect.flow_run_id": str(flow_run.id), "sslpipe.smoke": str(setup.smoke).lower()}
    if setup.smoke:  # the run's description in the MLflow UI
        tags["mlflow.note.content"] = SMOKE_NOTE
    if link:  # a real Prefect server: link the run to its flow run page
        tags["prefect.flow_run_url"] = link
    with mlflow.start_run(run_name=f"pipeline {flow_run.name}{' (smoke)' if setup.smoke else ''}", tags=tags) as parent:
        log_run_setup(setup)
        env = stage_env(str(flow_run.id), link, parent.info.run_id)
        logger.info(plan(STAGES, setup.smoke))
        outcomes: list[dict[str, Any]] = []
        try:
            outcomes, failure = run_stages(STAGES, env)
        finally:
            mlflow.log_dict({"stages": outcomes}, "stages.json")
            record_timings(outcomes, setup.smoke)
        if failure:
            mlflow.set_tag("sslpipe.failure", str(failure)[:5000])
            mlflow.end_run("FAILED")
            return failed_state(failure)
        remember_good_params()
        metrics = read_json(paths.METRICS) if paths.METRICS.exists() else {}
        registration = read_json(paths.REGISTRATION) if paths.REGISTRATION.exists() else {}
        if metrics:
            mlflow.log_metrics(flat_metrics(metrics))
        if paths.DATASET_INFO.exists():
            mlflow.set_tag("data.version", read_json(paths.DATASET_INFO)["version"])
        if dvc_hash := dvc_data_hash():
            mlflow.set_tag("dvc.data_md5", dvc_hash)
        markdown = results_markdown(outcomes, metrics, registration, setup.smoke)
        mlflow.log_text(markdown, "results.md")
    create_markdown_artifact(key="sslpipe-results", markdown=markdown, description="sslpipe pipeline results")
    return {"stages": outcomes, "metrics": metrics, "registration": registration, "smoke": setup.smoke,
            "mlflow_run_id": parent.info.run_id, "flow_run_id": str(flow_run.id), "flow_run_url": link}
