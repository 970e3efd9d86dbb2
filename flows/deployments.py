"""The project's two Prefect deployments, served from this machine with ``prefect.serve``
(``sslpipe serve``); ``infra/prefect.yaml`` declares the same two for a work pool.

- ``sslpipe-pipeline/pipeline``: no schedule; run it from the UI ("Run" > "Custom run") with its
  parameters (method, epochs, label_fractions, tune_trials, overrides) edited there.
- ``sslpipe-retrain/retrain``: on ``retrain.cron`` from params.yaml (default weekly); the
  schedule can be paused or edited in the UI.
"""

from __future__ import annotations

from typing import Any

from tasks.config import Params

PIPELINE_DEPLOYMENT = "sslpipe-pipeline/pipeline"
RETRAIN_DEPLOYMENT = "sslpipe-retrain/retrain"
TAGS = ["sslpipe"]


def build_deployments(params: Params) -> list[Any]:
    """The two ``RunnerDeployment`` objects (nothing is sent to the API yet)."""
    from prefect.deployments.runner import EntrypointType
    from prefect.schedules import Cron

    from flows.pipeline import pipeline
    from flows.retrain import retrain

    return [
        pipeline.to_deployment(
            name="pipeline",
            description="The whole pipeline through DVC; edit the parameters in 'Custom run' "
            "(overrides: {\"section.key\": value}, e.g. {\"pretrain.lr\": 0.1}).",
            tags=TAGS,
            # import as `flows.pipeline`, the package the runner's process imports anyway
            entrypoint_type=EntrypointType.MODULE_PATH,
        ),
        retrain.to_deployment(
            name="retrain",
            description="Retrain when the data changed or drifted since the champion; promote only a better model.",
            schedule=Cron(params.retrain.cron, timezone=params.retrain.timezone),
            tags=TAGS,
            entrypoint_type=EntrypointType.MODULE_PATH,
        ),
    ]


def serve_deployments(params: Params, limit: int | None = None) -> None:
    """Register both deployments and run their flow runs from this process until interrupted.

    Args:
        limit: at most this many flow runs at a time (None: no limit).
    """
    from prefect import serve

    serve(*build_deployments(params), limit=limit)
