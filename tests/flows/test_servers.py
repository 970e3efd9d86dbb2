"""`sslpipe server start|status|stop` on free loopback ports: health checked, pid files, and no
process left behind. Runs last among the operate tests (file order): it stops the session's servers."""

from __future__ import annotations

import json
import os
import urllib.request

import psutil
import pytest

from cli.servers import group_alive, pid_alive, status
from tests.flows.conftest import server_state, sslpipe

pytestmark = pytest.mark.e2e


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as r:
        assert r.status == 200
        return r.read().decode()


def _tree(pid: int) -> list[psutil.Process]:
    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


def test_start_status_stop(ops_project):
    project, timings = ops_project
    print(f"server start: {timings['server_start_s']:.1f} s (both healthy)")
    states = {name: server_state(project, name) for name in ("prefect", "mlflow")}
    for st in states.values():
        assert st["host"] == "127.0.0.1" and st["url"].startswith("http://127.0.0.1:")
        assert (project / ".sslpipe" / "servers" / f"{st['name']}.pid").read_text().strip() == str(st["pid"])
        assert pid_alive(st["pid"])
    assert _get(states["prefect"]["health_url"]).strip() == "true"
    assert _get(states["mlflow"]["health_url"]).strip() == "OK"
    assert str(project / ".prefect") in states["prefect"]["database"]  # project-local SQLite
    assert states["prefect"]["env"]["PREFECT_API_URL"] == states["prefect"]["url"] + "/api"
    # MLflow without its GenAI job runner (cli/servers.py): the server and its uvicorn, no huey consumers
    mlflow_tree = [" ".join(p.cmdline()) for p in _tree(states["mlflow"]["pid"])]
    assert len(mlflow_tree) <= 3 and not any("huey" in c or "_job_runner" in c for c in mlflow_tree), mlflow_tree

    out = sslpipe(project, "server", "status").stdout
    assert out.count("running") == 2, out

    # a second start finds them running and starts nothing
    again = sslpipe(project, "server", "start").stdout
    assert str(states["prefect"]["pid"]) in again and str(states["mlflow"]["pid"]) in again

    stopped = sslpipe(project, "server", "stop").stdout
    assert "prefect: stopped" in stopped and "mlflow: stopped" in stopped, stopped
    for st in states.values():
        assert not group_alive(st["pid"]), f"{st['name']}: processes left in group {st['pid']}"
        assert not (project / ".sslpipe" / "servers" / f"{st['name']}.pid").exists()
    assert [s for _, _, s in status(project)] == ["stopped", "stopped"]

    # back as they were (same ports): the other end-to-end tests share these servers, in any order
    sslpipe(project, "server", "start", "--prefect-port", str(states["prefect"]["port"]),
            "--mlflow-port", str(states["mlflow"]["port"]), timeout=300)
    assert [s for _, _, s in status(project)] == ["running", "running"]


def test_status_reports_a_stale_pid_file(tmp_path):
    servers = tmp_path / ".sslpipe" / "servers"
    servers.mkdir(parents=True)
    dead = os.fork()
    if dead == 0:
        os._exit(0)
    os.waitpid(dead, 0)
    state = {"name": "prefect", "pid": dead, "host": "127.0.0.1", "port": 1, "url": "http://127.0.0.1:1",
             "health_url": "http://127.0.0.1:1/api/health", "env": {}, "log": "", "database": "", "started_at": 0.0}
    (servers / "prefect.json").write_text(json.dumps(state))
    assert [s for _, _, s in status(tmp_path)] == ["stale", "stopped"]
