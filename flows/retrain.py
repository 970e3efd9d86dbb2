"""The retrain flow: retrain when the data changed or drifted since the champion was trained, and
promote the new model only when it beats the champion on the same test images.

1. Ingest through DVC (new raw data or changed ingest params give a new data version).
2. Compare with the champion: its ``data.version`` tag, and the drift score (MMD^2 of the
   champion's encoder features, its training images vs the new ones; ``retrain.drift_threshold``).
3. Neither changed: record a skipped run and stop. Otherwise run the pipeline flow (its register
   stage registers a challenger and never moves ``champion``), score challenger and champion on
   the same test split through MLflow, and move ``champion`` only for a margin of
   ``retrain.min_improvement``.

Two triggers at once: the second waits on ``.sslpipe/locks/retrain.lock`` and then finds nothing
to do (or DVC finds every stage cached and register finds the version by its idempotency key), so
one version is registered per data and params, and the alias only ever moves to a better model.
Every run leaves an MLflow run (tags ``retrain.decision``/``retrain.reason``, metric
``drift_score``) and a Prefect markdown artifact ``sslpipe-retrain``.
"""

from __future__ import annotations

import math
import os
import sys
import time
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.runtime import flow_run

from flows.params_file import PARAMS_YAML, remember_smoke, resolve, restore_after_smoke, write_params_yaml
from flows.pipeline import SMOKE_OVERRIDES, StageFailed, overrides_from, pipeline, run_stage
from tasks import paths
from tasks.io import read_json

SKIPPED, PROMOTED, KEPT = "skipped", "promoted", "kept champion"


def _flow_run_url() -> str:
    url = flow_run.ui_url or ""
    return "" if url.startswith("None") else url  # the ephemeral API has no UI


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
                  "", f"Promotion margin: {r['min_improvement']}. Champion now: version {r.get('champion_after') or '-'}."]
    return "\n".join(lines) + "\n"


def _record(client, experiment_id: str, r: dict[str, Any], markdown: str, overrides: list[str]) -> str:
    """One MLflow run per retrain (through the client: no fluent run stays active, so the
    pipeline flow can open its own)."""
    from tasks.tracking import run_tags

    tags = {**run_tags("retrain", r["data_version"]), "prefect.flow_run_id": str(flow_run.id),
            "retrain.decision": r["decision"], "retrain.reason": r["reason"][:4000]}
    if _flow_run_url():
        tags["prefect.flow_run_url"] = _flow_run_url()
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
    overrides: dict[str, Any] | None = None,
    force: bool = False,
    smoke: bool = False,
    params_file: str = "params.yaml",
) -> dict[str, Any]:
    """Retrain when the data changed or drifted since the champion; promote only a better model.

    Args:
        overrides: parameters for this run, as ``{"section.key": value}`` (written into
            params.yaml, as the pipeline flow does), e.g. ``{"retrain.min_improvement": 0.02}``.
        force: run the pipeline even when the data neither changed nor drifted.
        smoke: the pipeline's tiny slice (for a first taste and for tests).
        params_file: the parameters file to start from.
    """
    from mlflow import MlflowClient

    from tasks.dataset import load_dataset
    from tasks.locks import project_lock
    from tasks.promotion import champion_drift, current_champion, promotion, score_top1
    from tasks.register import ALIAS_ENV, CHALLENGER, CHAMPION
    from tasks.tracking import setup_mlflow

    logger = get_run_logger()
    override_list = (SMOKE_OVERRIDES if smoke else []) + overrides_from(overrides=overrides)
    params = resolve(Path(params_file), override_list)  # fails fast, naming a bad key
    cfg = params.retrain
    name = params.register_.model_name
    with project_lock("retrain", timeout_s=cfg.lock_timeout_s) as waited_s:
        if waited_s > 1:
            logger.info("waited %.0f s for another retrain to finish", waited_s)
        # params.yaml holds this run's parameters, as the pipeline flow leaves it (DVC reads it)
        if not smoke:
            restore_after_smoke()
        before = PARAMS_YAML.read_text() if PARAMS_YAML.exists() else ""
        write_params_yaml(Path(params_file), override_list)
        if smoke:
            remember_smoke(before)
        experiment_id = setup_mlflow()
        client = MlflowClient()
        env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
               "SSLPIPE_PREFECT_FLOW_RUN_ID": str(flow_run.id), "SSLPIPE_PREFECT_RUN_URL": _flow_run_url()}
        run_stage("ingest", env)  # DVC reruns it only when the raw data or ingest params changed
        data_version = read_json(paths.DATASET_INFO)["version"]
        champion = current_champion(client, name)
        r: dict[str, Any] = {
            "data_version": data_version, "champion_version": champion.version if champion else None,
            "champion_data_version": champion.data_version if champion else None,
            "drift_threshold": cfg.drift_threshold, "min_improvement": cfg.min_improvement,
            "waited_s": waited_s, "drift_score": None,
        }
        r["data_changed"] = champion is None or champion.data_version != data_version
        if champion is not None:
            x_train, _ = load_dataset(require_validation=False).split("train")
            start = time.perf_counter()
            r["drift_score"] = champion_drift(client, champion, x_train.numpy(), cfg.drift_images)
            logger.info("drift score %s (threshold %s) in %.1f s", r["drift_score"], cfg.drift_threshold,
                        time.perf_counter() - start)
        r["drifted"] = r["drift_score"] is not None and r["drift_score"] > cfg.drift_threshold

        if not (r["data_changed"] or r["drifted"] or force):
            r.update(decision=SKIPPED, champion_after=r["champion_version"],
                     reason=f"the data (version {data_version}) is the champion's and did not drift "
                            f"(score {r['drift_score'] if r['drift_score'] is not None else 'n/a'} <= {cfg.drift_threshold})")
        else:
            why = "forced" if force and not (r["data_changed"] or r["drifted"]) else (
                "no champion yet" if champion is None else
                "the data changed since the champion was trained" if r["data_changed"] else "the data drifted")
            logger.info("retraining: %s", why)
            os.environ[ALIAS_ENV] = CHALLENGER  # register never moves champion; this flow decides below
            try:
                result = pipeline(overrides=overrides, smoke=smoke, params_file=params_file)
            finally:
                os.environ.pop(ALIAS_ENV, None)
            r["pipeline_run_id"] = result.get("mlflow_run_id")
            challenger = str(result["registration"]["version"])
            r["challenger_version"] = challenger
            champion = current_champion(client, name)  # as it is now, under the lock
            r["champion_version"] = champion.version if champion else None
            if champion is not None and champion.version == challenger:
                r.update(decision=KEPT, champion_after=challenger,
                         reason=f"{why}, but the pipeline produced the champion itself (version {challenger}): "
                                "same data and params")
            else:
                data = load_dataset()
                x_test, y_test = data.split("test")
                r["challenger_top1"] = score_top1(f"models:/{name}/{challenger}", x_test, y_test)
                if r["challenger_top1"] is None:
                    raise StageFailed(f"version {challenger} cannot be scored on its own test data")
                r["champion_top1"] = score_top1(f"models:/{name}/{champion.version}", x_test, y_test) if champion else None
                promote, reason = promotion(r["challenger_top1"], r["champion_top1"], cfg.min_improvement)
                for version, top1 in ((challenger, r["challenger_top1"]), (r["champion_version"], r["champion_top1"])):
                    if version and top1 is not None:
                        client.set_model_version_tag(name, version, f"top1.data.{data_version}", f"{top1:.4f}")
                if promote:
                    client.set_registered_model_alias(name, CHAMPION, challenger)
                    client.delete_registered_model_alias(name, CHALLENGER)
                else:
                    client.set_registered_model_alias(name, CHALLENGER, challenger)
                r.update(decision=PROMOTED if promote else KEPT, reason=f"{why}; {reason}",
                         champion_after=challenger if promote else r["champion_version"])
        markdown = report_markdown(r)
        r["mlflow_run_id"] = _record(client, experiment_id, r, markdown, override_list)
    logger.info("retrain: %s: %s", r["decision"], r["reason"])
    create_markdown_artifact(key="sslpipe-retrain", markdown=markdown, description="sslpipe retrain decision")
    r["flow_run_id"] = str(flow_run.id)
    return r
