"""The project's Prefect and MLflow servers, started detached and found again through their state
files under ``.sslpipe/servers/`` (``<name>.pid`` and ``<name>.json``).

- Prefect: ``prefect server start`` with ``PREFECT_HOME=<root>/.prefect`` (SQLite there), or the
  Postgres database in ``PREFECT_API_DATABASE_CONNECTION_URL`` when that is set.
- MLflow: ``mlflow server`` on the project's store (``sqlite:///<root>/mlflow.db``, or
  ``MLFLOW_BACKEND_STORE_URI``) with artifacts under ``<root>/mlruns`` (or
  ``MLFLOW_DEFAULT_ARTIFACT_ROOT``), two processes (the CLI and its uvicorn): without MLflow 3's job
  runner (GenAI jobs, sslpipe has none), which starts eight more (~2 GB, ~25 CPU-seconds to start);
  ``MLFLOW_SERVER_ENABLE_JOB_EXECUTION=true`` in the environment brings it back.

Each server runs in a session of its own, so it outlives the CLI that started it, and ``stop``
signals exactly its process group. Importing this module is cheap (no prefect, no mlflow).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

SERVERS_DIR = Path(".sslpipe") / "servers"
NAMES = ("prefect", "mlflow")
DEFAULT_PORTS = {"prefect": 4200, "mlflow": 5000}


class ServerError(RuntimeError):
    """A server did not start (its log's tail is in the message) or could not be stopped."""


@dataclass
class ServerState:
    name: str
    pid: int
    host: str
    port: int
    url: str  # the UI
    health_url: str
    env: dict[str, str]  # what clients export to use it
    log: str
    database: str
    started_at: float
    ready_s: float | None = None  # seconds from start to a healthy answer


def _bin(name: str) -> str:
    exe = Path(sys.executable).parent / name
    return str(exe) if exe.exists() else name


def port_free(host: str, port: int) -> bool:
    """Whether a server could listen on ``port`` now. Binds as the servers do (SO_REUSEADDR), so a
    port a stopped server left in TIME_WAIT counts as free: a restart may take the same port."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
            return True
        except OSError:
            return False


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def choose_port(host: str, wanted: int | None, default: int) -> int:
    """``wanted`` if given (0: any free port); else ``default`` when free, else any free port."""
    if wanted == 0:
        return free_port(host)
    if wanted is not None:
        if not port_free(host, wanted):
            raise ServerError(f"port {wanted} on {host} is taken; pass another, or 0 for any free port")
        return wanted
    return default if port_free(host, default) else free_port(host)


def redact(uri: str) -> str:
    """A database URI without its password: ``postgresql://user:***@host/db``."""
    scheme, sep, rest = uri.partition("://")
    if sep and "@" in rest:
        cred, _, where = rest.rpartition("@")
        return f"{scheme}://{cred.split(':', 1)[0]}:***@{where}"
    return uri


def _url_host(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "") else host


def _prefect_spec(root: Path, host: str, port: int) -> tuple[list[str], dict[str, str], ServerState]:
    base = f"http://{_url_host(host)}:{port}"
    env = {k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", "PREFECT_UI_URL")}
    env.setdefault("PREFECT_HOME", str(root / ".prefect"))
    env.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    env.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    env["PREFECT_UI_API_URL"] = f"{base}/api"
    db = env.get("PREFECT_API_DATABASE_CONNECTION_URL")
    database = redact(db) if db else f"sqlite:///{env['PREFECT_HOME']}/prefect.db"
    state = ServerState("prefect", 0, host, port, base, f"{base}/api/health",
                        {"PREFECT_API_URL": f"{base}/api", "PREFECT_UI_URL": base}, "", database, 0.0)
    return [_bin("prefect"), "server", "start", "--host", host, "--port", str(port)], env, state


def _mlflow_spec(root: Path, host: str, port: int) -> tuple[list[str], dict[str, str], ServerState]:
    base = f"http://{_url_host(host)}:{port}"
    env = dict(os.environ)
    env.pop("MLFLOW_TRACKING_URI", None)
    env.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")  # the job runner: module docstring
    store = env.get("MLFLOW_BACKEND_STORE_URI") or f"sqlite:///{root / 'mlflow.db'}"
    artifacts = env.get("MLFLOW_DEFAULT_ARTIFACT_ROOT") or str(root / "mlruns")
    cmd = [_bin("mlflow"), "server", "--backend-store-uri", store, "--default-artifact-root", artifacts,
           "--host", host, "--port", str(port), "--workers", "1"]
    state = ServerState("mlflow", 0, host, port, base, f"{base}/health", {"MLFLOW_TRACKING_URI": base}, "",
                        redact(store), 0.0)
    return cmd, env, state


def _state_file(root: Path, name: str) -> Path:
    return root / SERVERS_DIR / f"{name}.json"


def _pid_file(root: Path, name: str) -> Path:
    return root / SERVERS_DIR / f"{name}.pid"


def read_state(root: Path, name: str) -> ServerState | None:
    try:
        return ServerState(**json.loads(_state_file(root, name).read_text()))
    except (FileNotFoundError, ValueError, TypeError):
        return None


def _write_state(root: Path, state: ServerState) -> None:
    directory = root / SERVERS_DIR
    directory.mkdir(parents=True, exist_ok=True)
    _state_file(root, state.name).write_text(json.dumps(asdict(state), indent=2) + "\n")
    _pid_file(root, state.name).write_text(f"{state.pid}\n")


def _forget(root: Path, name: str) -> None:
    _state_file(root, name).unlink(missing_ok=True)
    _pid_file(root, name).unlink(missing_ok=True)


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, dead but not yet reaped, counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def group_alive(pgid: int) -> bool:
    """Whether any live (non-zombie) process is left in process group ``pgid``."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


def healthy(url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status == 200
    except Exception:
        return False


def _log_tail(path: str, lines: int = 30) -> str:
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def start(root: Path, host: str = "127.0.0.1", prefect_port: int | None = None, mlflow_port: int | None = None,
          timeout_s: float = 180) -> list[ServerState]:
    """Start both servers detached and wait until both answer their health endpoints.

    Returns:
        The state of each server (already running ones are returned as they are).

    Raises:
        ServerError: a server exited or did not become healthy in ``timeout_s``; both are stopped then.
    """
    root = root.resolve()
    (root / SERVERS_DIR).mkdir(parents=True, exist_ok=True)
    states, launched = [], []
    for name, wanted, spec in (("prefect", prefect_port, _prefect_spec), ("mlflow", mlflow_port, _mlflow_spec)):
        current = read_state(root, name)
        if current and pid_alive(current.pid):
            states.append(current)
            continue
        port = choose_port(host, wanted, DEFAULT_PORTS[name])
        cmd, env, state = spec(root, host, port)
        state.log = str(root / SERVERS_DIR / f"{name}.log")
        with open(state.log, "ab") as log:
            proc = subprocess.Popen(cmd, cwd=root, env=env, stdin=subprocess.DEVNULL, stdout=log,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        state.pid, state.started_at = proc.pid, time.time()
        _write_state(root, state)
        states.append(state)
        launched.append((state, proc))
    deadline = time.monotonic() + timeout_s
    pending = list(launched)
    while pending:
        for state, proc in list(pending):
            if healthy(state.health_url, timeout=1.0):
                state.ready_s = round(time.time() - state.started_at, 1)
                _write_state(root, state)
                pending.remove((state, proc))
            elif proc.poll() is not None or time.monotonic() > deadline:
                why = f"exited with {proc.returncode}" if proc.returncode is not None else f"not healthy after {timeout_s:.0f} s"
                stop(root)
                raise ServerError(f"{state.name} server {why}; the end of {state.log}:\n{_log_tail(state.log)}")
        if pending:
            time.sleep(0.3)
    return states


def stop(root: Path, timeout_s: float = 20) -> list[tuple[str, str]]:
    """Stop the servers recorded under ``.sslpipe/servers``: SIGTERM to each process group, SIGKILL
    after ``timeout_s``. Returns (name, what happened) per recorded server."""
    root = root.resolve()
    done = []
    for name in NAMES:
        state = read_state(root, name)
        if state is None:
            continue
        pgid = state.pid  # start_new_session: the server leads its own group
        if not group_alive(pgid):
            done.append((name, "was not running (stale state removed)"))
            _forget(root, name)
            continue
        try:
            os.killpg(pgid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + timeout_s
        while group_alive(pgid) and time.monotonic() < deadline:
            time.sleep(0.2)
        how = "stopped"
        if group_alive(pgid):
            try:
                os.killpg(pgid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            how = "killed (did not stop on SIGTERM)"
        _forget(root, name)
        done.append((name, how))
    return done


def status(root: Path) -> list[tuple[ServerState | None, str, str]]:
    """(state, name, running | stale | unhealthy | stopped) for each server."""
    out = []
    for name in NAMES:
        state = read_state(root.resolve(), name)
        if state is None:
            out.append((None, name, "stopped"))
        elif not pid_alive(state.pid):
            out.append((state, name, "stale"))
        else:
            out.append((state, name, "running" if healthy(state.health_url) else "unhealthy"))
    return out


def running_env(root: Path) -> dict[str, str]:
    """The client variables (``PREFECT_API_URL``, ``MLFLOW_TRACKING_URI``, ...) of the servers whose
    process is alive; empty when none runs. No network call: cheap enough for every CLI start."""
    env: dict[str, str] = {}
    for name in NAMES:
        state = read_state(root, name)
        if state is not None and pid_alive(state.pid):
            env.update(state.env)
    return env
