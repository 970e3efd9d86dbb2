"""Run one stage by name: its params section in, an MLflow run around it, a summary out.
``sslpipe stage NAME`` (what dvc.yaml calls) goes through here."""

from __future__ import annotations

import time
from dataclasses import asdict, is_dataclass
from typing import Any

from tasks.config import STAGES, Params


def _call(name: str, params: Params, progress: bool) -> Any:
    if name == "sources":
        from tasks.sources import refresh_sources

        return refresh_sources(params.ingest)
    if name == "ingest":
        from tasks.ingest import ingest

        return ingest(params.ingest)
    if name == "validate":
        from tasks.validate import validate

        report = validate(params.validate_)
        return {"passed": report["passed"], "checks": len(report["checks"]), "data_version": report["data_version"]}
    if name == "pretrain":
        from tasks.pretrain import pretrain

        return pretrain(params.pretrain, progress=progress)
    if name == "tune":
        from tasks.tune import tune_stage

        return tune_stage(params.tune, params.finetune, progress=progress)
    if name == "finetune":
        from tasks.finetune import finetune

        return finetune(params.finetune, progress=progress)
    if name == "evaluate":
        from tasks.evaluate import evaluate

        return evaluate(params.evaluate, params.finetune)
    if name == "register":
        from tasks.register import register
        from tasks.registry import params_hash

        return register(params.register_, params.finetune, params_digest=params_hash(params.to_dict()))
    raise ValueError(f"unknown stage {name!r}; choose one of {', '.join(STAGES)}")


def _section(name: str, params: Params) -> dict[str, Any]:
    """The params a stage reads: its own section, plus the label fractions for the later stages."""
    data = params.to_dict()
    out = dict(data["ingest" if name == "sources" else name])
    if name in ("tune", "finetune", "evaluate", "register"):
        out["finetune.label_fractions"] = data["finetune"]["label_fractions"]
    return out


def run_stage(name: str, params: Params, progress: bool = True) -> dict[str, Any]:
    """Run stage ``name`` inside an MLflow run (a child of the pipeline's run when there is one).

    Returns:
        The stage's result as a dict, plus ``seconds``.
    """
    from tasks.tracking import stage_run

    if name not in STAGES:
        raise ValueError(f"unknown stage {name!r}; choose one of {', '.join(STAGES)}")
    data_version = None
    if name not in ("sources", "ingest"):
        from tasks import paths
        from tasks.io import read_json

        if paths.DATASET_INFO.exists():
            data_version = read_json(paths.DATASET_INFO)["version"]
    start = time.perf_counter()
    with stage_run(name, _section(name, params), data_version) as run:
        result = _call(name, params, progress)
        out = asdict(result) if is_dataclass(result) else dict(result)
        seconds = time.perf_counter() - start
        import mlflow

        mlflow.log_metric(f"{name}/seconds", seconds)
        if name == "ingest":
            mlflow.set_tag("data.version", out["version"])
    return {**out, "seconds": seconds, "mlflow_run_id": run.info.run_id}
