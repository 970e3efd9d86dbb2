"""What marks a smoke run (``sslpipe run --smoke``: a few hundred images, one epoch) as a plumbing
check: the note its summary, Prefect artifact and MLflow run carry, and the registered model
name of its own, so a smoke model never becomes the real model's champion.

MLflow users keep throw-away models out of a production model's version history; a smoke run
registers under ``<register.model_name>-smoke`` (with its own ``champion``, so that ``predict``,
``models`` and serving can be tried on it), and ``params.yaml`` holds that name until the next
full run puts the user's parameters back.
"""

from __future__ import annotations

SMOKE_SUFFIX = "-smoke"
SMOKE_NOTE = ("Smoke run: a plumbing check on a few hundred images and one epoch. Its figures say nothing about "
              "the methods; its model is registered under the -smoke name, never as the real model's champion.")


def smoke_model_name(name: str) -> str:
    """``name`` + ``-smoke`` (once)."""
    return name if is_smoke_model(name) else name + SMOKE_SUFFIX


def is_smoke_model(name: str) -> bool:
    return name.endswith(SMOKE_SUFFIX)
