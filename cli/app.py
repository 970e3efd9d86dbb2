"""The ``sslpipe`` Typer app and what its commands share: finding the project, the tools'
environment defaults, failing with one clear line, the ``--set``/``--params`` options.

Importing this module is cheap (no torch, prefect, mlflow or ray): commands import what they use.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Annotated, Any, NoReturn, Optional

import typer
from rich.console import Console

app = typer.Typer(
    help="sslpipe: self-supervised pretraining, tuning, fine-tuning, evaluation and registration of "
    "image models, orchestrated by Prefect, reproduced by DVC, tracked in MLflow.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # classic help: flags read as flags, values as their metavars (no "<bool>" column)
)
console = Console()
err_console = Console(stderr=True)

SetOption = Annotated[
    Optional[list[str]],
    typer.Option("--set", "-s", metavar="KEY=VALUE",
                 help="Override a parameter: section.key=value (repeatable), e.g. pretrain.epochs=5."),
]
ParamsOption = Annotated[
    Path, typer.Option("--params", "-p", metavar="FILE",
                       help="Parameters file to start from (its values go into params.yaml).")
]


def project_root() -> Path:
    """The nearest directory upwards holding dvc.yaml; commands run there, as DVC does."""
    here = Path.cwd().resolve()
    for d in (here, *here.parents):
        if (d / "dvc.yaml").exists():
            return d
    fail("no dvc.yaml here or above; run sslpipe inside the project directory", 2)


def enter_project() -> Path:
    """Change into the project root and set the tools' own environment variables to the project's
    defaults (side effects at the edge, never at import); variables already set win. While
    `sslpipe server start`'s servers run, their addresses are the defaults."""
    root = project_root()
    os.chdir(root)
    from cli.servers import running_env

    for key, value in running_env(root).items():
        os.environ.setdefault(key, value)
    os.environ.setdefault("PREFECT_HOME", str(root / ".prefect"))
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    # the ephemeral API server needs ~15-30 s to start on 2 cores; Prefect's default wait is 20 s
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    if not os.environ.get("PREFECT_API_URL"):
        # the ephemeral server lives in this terminal's process group: a Ctrl-C stops it too, and
        # the flow then reports its crash to a server that is gone; Prefect's 5 retries (backoff
        # 2 + 4 + 8 + 16 + 32 s) kept the interrupted command alive ~80 s, 2 retries end it in ~6 s
        os.environ.setdefault("PREFECT_CLIENT_MAX_RETRIES", "2")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "INFO")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a local, loopback-only instance
    os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
    os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")
    # Ray Tune's new output engine prints its config table and a TensorBoard hint even at verbose=0
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")  # a "View run" link per run ended
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # a bar per model loaded by the register stage
    os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
    show_notes()
    return root


class _StderrHandler(logging.StreamHandler):
    """Plain lines on ``sys.stderr`` as it is when each record comes (a test runner swaps it)."""

    def __init__(self) -> None:
        logging.Handler.__init__(self)
        self.setFormatter(logging.Formatter("%(message)s"))

    @property
    def stream(self) -> Any:
        return sys.stderr


def show_notes() -> None:
    """The stages' notes (``tasks.*`` INFO log lines, e.g. the backbone a method took) on stderr,
    once each (not also through the console handler Prefect puts on the root logger). Stages the
    pipeline flow runs keep quiet: the run said them once, when it set up."""
    from tasks.tracking import FLOW_RUN_ID_ENV

    logger = logging.getLogger("tasks")
    logger.handlers = [] if os.environ.get(FLOW_RUN_ID_ENV) else [_StderrHandler()]
    logger.setLevel(logging.INFO)
    logger.propagate = False


def fail(message: str, code: int = 1) -> NoReturn:
    """Print ``error: message`` on stderr and exit with ``code`` (1: a failure, 2: a usage error).
    Never wrapped: one line a log or the pipeline flow can pick up whole, paths and URLs unbroken."""
    err_console.print(f"[red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def known_errors() -> tuple[type[BaseException], ...]:
    """Errors whose message says all a user needs: printed as one line, without a traceback."""
    from ssl_models.data import DataError
    from tasks.config import ParamsError
    from tasks.dataset import DatasetError
    from tasks.locks import LockTimeout
    from tasks.registry import RegistryError
    from tasks.validate import ValidationFailed

    return (DataError, ParamsError, DatasetError, ValidationFailed, RegistryError, LockTimeout, FileNotFoundError)
