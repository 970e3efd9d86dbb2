"""The retrain flow: retrain when the data changed or drifted since the champion was trained, and
promote the new model only when it beats the champion on the same test images.

1. Ingest through DVC (new raw data or changed ingest params give a new data version).
2. Compare with the champion: its ``data.version`` tag, and the drift score (MMD^2 of the
   champion's encoder features, its training images vs the new ones; ``retrain.drift_threshold``).
3. Neither changed: record a skipped run and stop. Otherwise run the pipeline flow: its register
   stage applies the registry's one promotion rule (``tasks.registry.gate``: challenger and
   champion scored on the same test split through MLflow pyfunc, ``champion`` moves only for a
   margin of ``register.min_improvement``).

Two triggers at once: the second waits on ``.sslpipe/locks/retrain.lock`` and then finds nothing
to do (or DVC finds every stage cached and register finds the version by its idempotency key), so
one version is registered per data and params, and the alias only ever moves to a better model.
Every run leaves an MLflow run (tags ``retrain.decision``/``retrain.reason``, metric
``drift_score``) and a Prefect markdown artifact ``sslpipe-retrain``.
"""

from __future__ import annotations

import math
import time
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.runtime import flow_run

from flows.pipeline import StageFailed, failed_state, flow_run_link, pipeline, run_stages
from tasks import paths
from tasks.config import load_params
from tasks.io import read_json
from tasks.run_setup import prepare_run, setup_notes

SKIPPED, PROMOTED, KEPT = "skipped", "promoted", "kept champion"


def report_markdown(r: dict[str, Any]) -> str:
    """The run's story for the Prefect UI: data, drift, both models, the decision and why."""
    def fmt(v: Any) -> str:
        return f"{v:.4f}" if isinstance(v, float) and math.isfinite(v) else ("-" if v is None else str(v))

    lines = [
        f"# sslpipe retrain: {r['decision']}", "",
        f"**Why:** {r['reason']}", "",
        "| | |", "|---|---|",
        f"| data version (now) | `{r['data_version']}` |",
        f"| champion's data version | `{r.get('champion_data_version') or '-'}` |",
        f"| data changed | {r['data_changed']} |",
        f"| drift score (MMD^2) | {fmt(r.get('drift_score'))} (threshold {r['drift_threshold']}) |",
        f"| drifted | {r['drifted']} |",
        f"| waited for another retrain | {r['waited_s']:.0f} s |",
    ]
    if r.get("challenger_version") or r.get("champion_version"):
        lines += ["", "| model | version | test top-1 (same images) |", "|---|---|---|",
                  f"| champion (before) | {r.get('champion_version') or '-'} | {fmt(r.get('champion_top1'))} |",
                  f"| challenger | {r.get('challenger_version') or '-'} | {fmt(r.get('challenger_top1'))} |",
                  "", f"Promotion margin (register.min_improvement): {r['min_improvement']}. Champion now: version {r.get('champion_after') or '-'}."]
    return "\n".join(lines) + "\n"


def _record(r: dict[str, Any], markdown: str, overrides: list[str]) -> str:
    """One MLflow run per retrain (through the client: no fluent run stays active, so the
    pipeline flow can open its own)."""
    from mlflow import MlflowClient

    from tasks.tracking import run_tags, setup_mlflow

    experiment_id = setup_mlflow()
    client = MlflowClient()
    tags = {**run_tags("retrain", r["data_version"]), "prefect.flow_run_id": str(flow_run.id),
            "retrain.decision": r["decision"], "retrain.reason": r["reason"][:4000]}
    if flow_run_link():
        tags["prefect.flow_run_url"] = flow_run_link()
    for key in ("challenger_version", "champion_version", "champion_after", "pipeline_run_id"):
        if r.get(key):
            tags[f"retrain.{key}"] = str(r[key])
    run = client.create_run(experiment_id, run_name=f"retrain {flow_run.name}: {r['decision']}", tags=tags)
    run_id = run.info.run_id
    for key in ("drift_score", "challenger_top1", "champion_top1"):
        value = r.get(key)
        if isinstance(value, float) and math.isfinite(value):
            client.log_metric(run_id, key, value)
    client.log_param(run_id, "overrides", ", ".join(overrides)[:6000] or "-")
    client.log_text(run_id, markdown, "retrain.md")
    client.set_terminated(run_id)
    return run_id


@flow(name="sslpipe-retrain", log_prints=True)
def retrain(
    overrides: list[str] | None = None,
    force: bool = False,
    smoke: bool = False,
    params_file: str = "params.yaml",
) -> dict[str, Any]:
    """Retrain when the data changed or drifted since the champion; promote only a better model.

    Args:
        overrides: parameters for this run, as ``section.key=value`` (written into params.yaml,
            as the pipeline flow does), e.g. ``["register.min_improvement=0.02"]``.
        force: run the pipeline even when the data neither changed nor drifted.
        smoke: the pipeline's tiny slice (for a first taste and for tests).
        params_file: the parameters file to start from.
    """
    from tasks.locks import project_lock

    logger = get_run_logger()
    timeout_s = load_params(params_file, overrides or []).retrain.lock_timeout_s  # fails fast, naming a bad key
    with project_lock("retrain", timeout_s=timeout_s) as waited_s:
        if waited_s > 1:
            logger.info("waited %.0f s for another retrain to finish", waited_s)
        # params.yaml holds this run's parameters, as the pipeline flow leaves it (DVC reads it)
        setup = prepare_run(params_file, overrides or [], smoke)
        for note in setup_notes(setup):  # e.g. a smoke run's parameters put back: a full run follows
            logger.info(note)
        try:
            r = _decide_and_run(setup, force, waited_s, logger)
        except StageFailed as e:  # the stage said why; a failed state, no traceback
            return failed_state(e)
        markdown = report_markdown(r)
        r["mlflow_run_id"] = _record(r, markdown, setup.overrides)
    logger.info("retrain: %s: %s", r["decision"], r["reason"])
    create_markdown_artifact(key="sslpipe-retrain", markdown=markdown, description="sslpipe retrain decision")
    r["flow_run_id"] = str(flow_run.id)
    return r


def _decide_and_run(setup, force: bool, waited_s: float, logger) -> dict[str, Any]:
    """Ingest, compare with the champion, and run the pipeline when the data changed or drifted."""
    from mlflow import MlflowClient

    from tasks.dataset import load_dataset
    from tasks.drift import champion_drift
    from tasks.registry import current_champion
    from tasks.tracking import setup_mlflow, stage_env

    params = setup.typed
    cfg, name = params.retrain, params.register_.model_name
    setup_mlflow()
    env = stage_env(str(flow_run.id), flow_run_link())
    _, failure = run_stages(("sources", "ingest"), env)  # DVC reruns ingest only when the source files or ingest params changed
    if failure:
        raise failure
    data_version = read_json(paths.DATASET_INFO)["version"]
    champion = current_champion(MlflowClient(), name)
    r: dict[str, Any] = {
        "data_version": data_version, "champion_version": champion.version if champion else None,
        "champion_data_version": champion.data_version if champion else None,
        "drift_threshold": cfg.drift_threshold, "min_improvement": params.register_.min_improvement,
        "waited_s": waited_s, "drift_score": None,
    }
    r["data_changed"] = champion is None or champion.data_version != data_version
    if champion is not None:
        x_train, _ = load_dataset(require_validation=False).split("train", stream=True)  # only the sample is read
        start = time.perf_counter()
        r["drift_score"] = champion_drift(champion, x_train, cfg.drift_images)
        logger.info("drift score %s (threshold %s) in %.1f s", r["drift_score"], cfg.drift_threshold,
                    time.perf_counter() - start)
    r["drifted"] = r["drift_score"] is not None and r["drift_score"] > cfg.drift_threshold
    if not (r["data_changed"] or r["drifted"] or force):
        score = r["drift_score"] if r["drift_score"] is not None else "n/a"
        r.update(decision=SKIPPED, champion_after=r["champion_version"],
                 reason=f"the data (version {data_version}) is the champion's and did not drift "
                        f"(score {score} <= {cfg.drift_threshold})")
        return r
    why = "forced" if force and not (r["data_changed"] or r["drifted"]) else (
        "no champion yet" if champion is None else
        "the data changed since the champion was trained" if r["data_changed"] else "the data drifted")
    logger.info("retraining: %s", why)
    result = pipeline(setup=setup)
    reg = result["registration"]
    r.update(pipeline_run_id=result.get("mlflow_run_id"), challenger_version=reg["version"],
             champion_version=reg["champion_before"], challenger_top1=reg["challenger_top1"],
             champion_top1=reg["champion_top1"], champion_after=reg["version"] if reg["promoted"] else reg["champion_before"])
    if reg["champion_before"] == reg["version"]:
        r.update(decision=KEPT, reason=f"{why}, but the pipeline produced the champion itself (version {reg['version']}): "
                                       "same data and params")
    else:
        r.update(decision=PROMOTED if reg["promoted"] else KEPT, reason=f"{why}; {reg['reason']}")
    return r
