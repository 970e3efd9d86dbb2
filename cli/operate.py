"""The commands that operate sslpipe: the Prefect and MLflow servers (``server start|stop|status``)
and ``serve`` (the deployments, run from this machine)."""

from __future__ import annotations

import os
from typing import Annotated, Optional

import typer
from rich.table import Table

from cli.app import app, console, enter_project, fail

server_app = typer.Typer(help="The project's Prefect and MLflow servers (UIs, shared API), started detached.",
                         no_args_is_help=True, rich_markup_mode=None)
app.add_typer(server_app, name="server")


@server_app.command("start")
def server_start(
    host: Annotated[str, typer.Option(metavar="ADDRESS", help="Address to bind; 0.0.0.0 exposes the UIs to the network.")] = "127.0.0.1",
    prefect_port: Annotated[Optional[int], typer.Option(metavar="PORT", help="Prefect port (default 4200, else a free one; 0: any free).")] = None,
    mlflow_port: Annotated[Optional[int], typer.Option(metavar="PORT", help="MLflow port (default 5000, else a free one; 0: any free).")] = None,
    timeout: Annotated[float, typer.Option(metavar="SECONDS", help="Seconds to wait for both health checks.")] = 180,
) -> None:
    """Start the Prefect server and the MLflow server in the background and wait until both are healthy."""
    import time

    root = enter_project()
    from cli.servers import ServerError, start

    t0 = time.perf_counter()
    with console.status("starting the Prefect and MLflow servers (20-40 s on a small machine)"):
        try:
            states = start(root, host, prefect_port, mlflow_port, timeout)
        except ServerError as e:
            fail(str(e))
    table = Table(show_edge=False, title=f"servers ready in {time.perf_counter() - t0:.1f} s")
    for col in ("server", "UI", "pid", "store"):
        table.add_column(col)
    for st in states:
        table.add_row(st.name, st.url, str(st.pid), st.database)
    console.print(table)
    exports = {k: v for st in states for k, v in st.env.items()}
    console.print("sslpipe commands in this project use them now. For other tools, export:")
    for key, value in exports.items():
        console.print(f"  export {key}={value}", highlight=False, soft_wrap=True)
    console.print(f"logs: {root}/.sslpipe/servers/*.log; stop with: sslpipe server stop", highlight=False)


@server_app.command("stop")
def server_stop() -> None:
    """Stop the servers `sslpipe server start` started (their process groups, by pid file)."""
    root = enter_project()
    from cli.servers import stop

    done = stop(root)
    if not done:
        console.print("no servers recorded under .sslpipe/servers: nothing to stop")
    for name, how in done:
        console.print(f"{name}: {how}")


@server_app.command("status")
def server_status() -> None:
    """Say which of the two servers run, where, and whether they answer their health checks."""
    root = enter_project()
    from cli.servers import status

    table = Table(show_edge=False)
    for col in ("server", "state", "UI", "pid", "store"):
        table.add_column(col)
    for st, name, state in status(root):
        color = {"running": "green", "stale": "yellow", "unhealthy": "red"}.get(state, "dim")
        table.add_row(name, f"[{color}]{state}[/]", st.url if st else "-", str(st.pid) if st else "-",
                      st.database if st else "-")
    console.print(table)
    if any(state == "stale" for _, _, state in status(root)):
        console.print("stale: the process is gone; `sslpipe server stop` clears it, `sslpipe server start` starts anew")


@app.command()
def serve(
    limit: Annotated[Optional[int], typer.Option(metavar="N", help="At most this many flow runs at a time.")] = None,
) -> None:
    """Create the `pipeline` and `retrain` deployments and run their flow runs until Ctrl-C.

    Needs a Prefect server (`sslpipe server start`, or PREFECT_API_URL): the UI is where you
    trigger `pipeline` with edited parameters and where `retrain`'s schedule lives.
    """
    enter_project()
    from tasks.config import ParamsError, load_params

    if not os.environ.get("PREFECT_API_URL"):
        fail("no Prefect server: run `sslpipe server start` first (or set PREFECT_API_URL)")
    try:
        params = load_params()
    except ParamsError as e:
        fail(str(e))
    from flows.deployments import serve_deployments
    ui = os.environ.get("PREFECT_UI_URL") or os.environ["PREFECT_API_URL"].removesuffix("/api")
    console.print(f"serving sslpipe-pipeline/pipeline and sslpipe-retrain/retrain (cron '{params.retrain.cron}' "
                  f"{params.retrain.timezone}); trigger them at {ui}/deployments", highlight=False)
    serve_deployments(params, limit=limit)
