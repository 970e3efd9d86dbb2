"""The Prefect pipeline flow: every stage in order, each through DVC (``dvc repro --single-item``),
so DVC alone decides what is stale and ``dvc.lock`` stays true whichever side ran it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.runtime import flow_run

from flows.params_file import PARAMS_YAML, remember_smoke, resolve, restore_after_smoke, write_params_yaml
from tasks import paths
from tasks.config import STAGES, MethodName
from tasks.io import read_json

# what --smoke changes: a few hundred images, one epoch, one trial per arm
SMOKE_OVERRIDES = [
    "ingest.limit_train=600",
    "ingest.limit_test=300",
    "pretrain.epochs=1",
    "pretrain.compile=false",
    "pretrain.batch_size=100",
    "pretrain.knn_monitor_images=200",
    "pretrain.checkpoint_every=2",
    "tune.num_samples=1",
    "tune.search_space.epochs=[2]",
    "tune.grace_period=1",
    "finetune.min_steps=10",
    "evaluate.embedding_plot_images=300",
]
STAGE_RESULTS = paths.STATE / "stage_results"  # each stage's summary, for the run's table


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
    """One stage through DVC: skipped when DVC says its inputs are unchanged."""
    logger = get_run_logger()
    if not stage_is_stale(stage):
        logger.info("%s: inputs unchanged, nothing to do (dvc.lock is up to date)", stage)
        return {"stage": stage, "status": "cached"}
    start = time.perf_counter()
    code = _stream([_dvc(), "repro", "--single-item", stage], env, logger)
    if code != 0:
        raise StageFailed(f"stage {stage} failed (exit {code}); its error is printed above")
    result_file = STAGE_RESULTS / f"{stage}.json"
    result = read_json(result_file) if result_file.exists() else {}
    return {"stage": stage, "status": "ran", "seconds": time.perf_counter() - start, "result": result}


# the register stage talks to the tracking server: the one step whose failure may be transient
run_register = run_stage.with_options(retries=2, retry_delay_seconds=[5, 15])


def results_markdown(outcomes: list[dict[str, Any]], metrics: dict[str, Any], registration: dict[str, Any]) -> str:
    lines = ["# sslpipe results", "", "| stage | status | seconds |", "|---|---|---|"]
    lines += [f"| {o['stage']} | {o['status']} | {o.get('seconds', 0):.0f} |" for o in outcomes]
    if metrics:
        lines += ["", "| metric | value |", "|---|---|"]
        for key in ("knn_top1", "knn_top1_raw_pixels", "knn_top1_random_init", "linear_top1", "model_top1"):
            if key in metrics:
                lines.append(f"| {key} | {metrics[key]:.4f} |")
        lines += ["", "| label fraction | labels | fine-tuned top-1 | supervised top-1 |", "|---|---|---|---|"]
        for fraction, entry in metrics.get("fractions", {}).items():
            lines.append(f"| {fraction} | {entry['num_labels']} | {entry['finetune_top1']:.4f} | {entry['supervised_top1']:.4f} |")
    if registration:
        lines += ["", f"Registered **{registration['model_name']}** version {registration['version']} "
                      f"as `{registration['alias']}`: {registration['reason']}."]
    return "\n".join(lines) + "\n"


def overrides_from(
    method: str | None = None,
    epochs: int | None = None,
    label_fractions: list[float] | None = None,
    tune_trials: int | None = None,
    overrides: dict[str, Any] | None = None,
) -> list[str]:
    """The flow's UI-friendly parameters as ``section.key=value`` overrides."""
    out = []
    if method is not None:
        out.append(f"pretrain.method={method}")
    if epochs is not None:
        out.append(f"pretrain.epochs={epochs}")
    if label_fractions is not None:
        out.append(f"finetune.label_fractions={json.dumps(list(label_fractions))}")
    if tune_trials is not None:
        out.append(f"tune.num_samples={tune_trials}")
    for key, value in (overrides or {}).items():
        out.append(f"{key}={json.dumps(value) if not isinstance(value, str) else value}")
    return out


@flow(name="sslpipe-pipeline", log_prints=True)
def pipeline(
    method: MethodName | None = None,
    epochs: int | None = None,
    label_fractions: list[float] | None = None,
    tune_trials: int | None = None,
    overrides: dict[str, Any] | None = None,
    smoke: bool = False,
    params_file: str = "params.yaml",
) -> dict[str, Any]:
    """Ingest, validate, pretrain, tune, fine-tune, evaluate and register.

    Args:
        method: SSL method (``pretrain.method``); mae also needs ``{"pretrain.backbone": "vit_tiny"}``.
        epochs: pretraining epochs (``pretrain.epochs``).
        label_fractions: fractions of train labels to fine-tune on (``finetune.label_fractions``).
        tune_trials: Ray Tune trials per arm (``tune.num_samples``).
        overrides: any other parameter, as ``{"section.key": value}``.
        smoke: a tiny slice (a few hundred images, one epoch) for a first taste and for tests.
        params_file: the parameters file to start from.
    """
    import mlflow

    from tasks.tracking import PARENT_RUN_ENV, dvc_data_hash, flatten, run_tags, setup_mlflow

    logger = get_run_logger()
    override_list = (SMOKE_OVERRIDES if smoke else []) + overrides_from(method, epochs, label_fractions, tune_trials, overrides)
    if not smoke and restore_after_smoke():
        logger.info("params.yaml: restored the parameters it held before the last --smoke run")
    params = resolve(Path(params_file), override_list)  # fails fast, naming a bad key
    before = PARAMS_YAML.read_text() if PARAMS_YAML.exists() else ""
    if write_params_yaml(Path(params_file), override_list):
        logger.info("params.yaml now holds this run's parameters (%s); `git diff params.yaml` shows them",
                    ", ".join(override_list) or f"from {params_file}")
    if smoke:
        remember_smoke(before)
    env = dict(os.environ)
    ui_url = flow_run.ui_url or ""
    env.update({
        "SSLPIPE_PREFECT_FLOW_RUN_ID": str(flow_run.id),
        # without a UI (ephemeral API) Prefect renders the URL as "None/flow-runs/..."
        "SSLPIPE_PREFECT_RUN_URL": "" if ui_url.startswith("None") else ui_url,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    })
    setup_mlflow()
    outcomes: list[dict[str, Any]] = []
    tags = {**run_tags("pipeline"), "prefect.flow_run_id": str(flow_run.id), "sslpipe.smoke": str(smoke)}
    if env["SSLPIPE_PREFECT_RUN_URL"]:  # a real Prefect server: link the run to its flow run page
        tags["prefect.flow_run_url"] = env["SSLPIPE_PREFECT_RUN_URL"]
    with mlflow.start_run(run_name=f"pipeline {flow_run.name}", tags=tags) as parent:
        mlflow.log_params(flatten(params.to_dict()))
        mlflow.log_dict({"overrides": override_list}, "overrides.json")
        env[PARENT_RUN_ENV] = parent.info.run_id
        try:
            for stage in STAGES:
                step = run_register if stage == "register" else run_stage
                outcomes.append(step(stage, env))
        finally:
            mlflow.log_dict({"stages": outcomes}, "stages.json")
        metrics = read_json(paths.METRICS) if paths.METRICS.exists() else {}
        registration = read_json(paths.REGISTRATION) if paths.REGISTRATION.exists() else {}
        if metrics:
            from tasks.evaluate import flat_metrics

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
