"""The Prefect pipeline flow: every stage in order, each through DVC (``dvc repro --single-item``),
so DVC alone decides what is stale and ``dvc.lock`` stays true whichever side ran it."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.runtime import flow_run

from tasks import paths
from tasks.config import STAGES, MethodName
from tasks.io import read_json
from tasks.metrics import HEADLINE_METRICS, arms_rows, verdict
from tasks.run_setup import RunSetup, overrides_from, prepare_run
from tasks.tracking import stage_env


class StageFailed(RuntimeError):
    pass


def _dvc() -> str:
    exe = Path(sys.executable).parent / "dvc"
    return str(exe) if exe.exists() else "dvc"


def stage_is_stale(stage: str) -> bool:
    """Whether DVC would run ``stage`` (changed code, data, params or outputs, or never run)."""
    proc = subprocess.run([_dvc(), "status", "--json", stage], capture_output=True, text=True)
    if proc.returncode != 0:
        raise StageFailed(f"`dvc status {stage}` failed: {proc.stderr.strip() or proc.stdout.strip()}")
    return bool(json.loads(proc.stdout or "{}"))


def _stream(cmd: list[str], env: dict[str, str], logger) -> int:
    """Run ``cmd``, copying its output to this terminal as is (progress bars included) and its
    complete lines to the Prefect log."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    pending = b""
    assert proc.stdout is not None
    for chunk in iter(lambda: proc.stdout.read1(4096), b""):
        sys.stdout.buffer.write(chunk)
        sys.stdout.flush()
        pending += chunk
        *lines, pending = pending.split(b"\n")
        for line in lines:
            text = line.decode(errors="replace").split("\r")[-1].strip()
            if text:
                logger.info(text)
    return proc.wait()


@task(name="stage", task_run_name="{stage}")
def run_stage(stage: str, env: dict[str, str]) -> dict[str, Any]:
    """One stage through DVC: skipped when DVC says its inputs are unchanged. ``sources`` always
    runs (``--force``): DVC cannot see a new image in a folder, so this cheap step refreshes the
    manifest that ingest depends on, rewriting it only when a file changed."""
    logger = get_run_logger()
    forced = stage == "sources"
    if not forced and not stage_is_stale(stage):
        logger.info("%s: inputs unchanged, nothing to do (dvc.lock is up to date)", stage)
        return {"stage": stage, "status": "cached"}
    start = time.perf_counter()
    code = _stream([_dvc(), "repro", "--single-item", *(["--force"] if forced else []), stage], env, logger)
    if code != 0:
        raise StageFailed(f"stage {stage} failed (exit {code}); its error is printed above")
    result_file = paths.STAGE_RESULTS / f"{stage}.json"
    result = read_json(result_file) if result_file.exists() else {}
    return {"stage": stage, "status": "ran", "seconds": time.perf_counter() - start, "result": result}


# the register stage talks to the tracking server: the one step whose failure may be transient
run_register = run_stage.with_options(retries=2, retry_delay_seconds=[5, 15])


def results_markdown(outcomes: list[dict[str, Any]], metrics: dict[str, Any], registration: dict[str, Any]) -> str:
    lines = ["# sslpipe results", "", "| stage | status | seconds |", "|---|---|---|"]
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
    if setup is None:
        setup = prepare_run(params_file, [*overrides_from(method, epochs, label_fractions, tune_trials), *(overrides or [])],
                            smoke)
    if setup.restored_smoke:
        logger.info("params.yaml: restored the parameters it held before the last --smoke run")
    if setup.params_changed:
        logger.info("params.yaml now holds this run's parameters (%s); `git diff params.yaml` shows them",
                    ", ".join(setup.overrides) or f"from {setup.params_file}")
    setup_mlflow()
    link = flow_run_link()
    tags = {**run_tags("pipeline"), "prefect.flow_run_id": str(flow_run.id), "sslpipe.smoke": str(setup.smoke)}
    if link:  # a real Prefect server: link the run to its flow run page
        tags["prefect.flow_run_url"] = link
    outcomes: list[dict[str, Any]] = []
    with mlflow.start_run(run_name=f"pipeline {flow_run.name}", tags=tags) as parent:
        log_run_setup(setup)
        env = stage_env(str(flow_run.id), link, parent.info.run_id)
        try:
            for stage in STAGES:
                step = run_register if stage == "register" else run_stage
                outcomes.append(step(stage, env))
        finally:
            mlflow.log_dict({"stages": outcomes}, "stages.json")
        metrics = read_json(paths.METRICS) if paths.METRICS.exists() else {}
        registration = read_json(paths.REGISTRATION) if paths.REGISTRATION.exists() else {}
        if metrics:
            mlflow.log_metrics(flat_metrics(metrics))
        if paths.DATASET_INFO.exists():
            mlflow.set_tag("data.version", read_json(paths.DATASET_INFO)["version"])
        if dvc_hash := dvc_data_hash():
            mlflow.set_tag("dvc.data_md5", dvc_hash)
        markdown = results_markdown(outcomes, metrics, registration)
        mlflow.log_text(markdown, "results.md")
    create_markdown_artifact(key="sslpipe-results", markdown=markdown, description="sslpipe pipeline results")
    return {"stages": outcomes, "metrics": metrics, "registration": registration,
            "mlflow_run_id": parent.info.run_id, "flow_run_id": str(flow_run.id)}
