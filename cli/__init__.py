"""The ``sslpipe`` command line: a package of thin commands over the flows (flows/) and the stages
(tasks/). Each module registers its commands on the one Typer ``app``."""

from cli import pipeline, operate, models, preview  # noqa: F401, I001  (they register their commands, in this order)
from cli.app import app

__all__ = ["app"]
