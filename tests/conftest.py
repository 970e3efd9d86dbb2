"""What the whole suite shares: a throw-away copy of the project, the environment to run it in."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

# One OpenMP thread in every process the tests start (stages under DVC, Ray's workers, the servers),
# as in the pytest workers themselves (``one_thread`` below). Two workers share two cores; with
# torch's default of a thread per core, the stages of one worker's pipeline spun against the
# other's: two smoke runs side by side took 156-169 s (122-141 CPU-s each), with one thread
# 109-112 s (80-85 CPU-s each). Set the variable to run the tests with more.
os.environ.setdefault("OMP_NUM_THREADS", "1")

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent


def project_files() -> list[str]:
    """Tracked files plus untracked ones git does not ignore: what a fresh clone would hold."""
    out = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, capture_output=True, text=True, check=True)
    return [f for f in out.stdout.splitlines() if (REPO / f).is_file()]


def copy_project(dst: Path) -> Path:
    """Copy the project into ``dst`` as a fresh git repo (DVC needs one), without any outputs."""
    for rel in project_files():
        target = dst / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / rel, target)
    git = ["git", "-c", "user.name=sslpipe-test", "-c", "user.email=test@sslpipe"]
    subprocess.run(["git", "init", "-q"], cwd=dst, check=True)
    subprocess.run([*git, "add", "-A"], cwd=dst, check=True)
    subprocess.run([*git, "commit", "-qm", "copy"], cwd=dst, check=True)
    return dst


def subprocess_env(**extra: str) -> dict[str, str]:
    """The environment for running ``sslpipe`` / ``dvc`` in a project copy."""
    env = dict(os.environ)
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    env.update(extra)
    return env


def stop_process(proc: subprocess.Popen, grace_s: float = 20) -> None:
    """SIGTERM the process group ``proc`` leads (it was started in a session of its own), then SIGKILL."""
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(grace_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


@pytest.hookimpl(tryfirst=True)  # before xdist's own, which turns the marker into the test's group
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Under pytest-xdist (`make test`: two workers, ``--dist loadgroup``) every test on the
    session's smoke project (``built_project``, and the copy ``ops_project`` with its servers,
    ``served``) runs in one worker, which builds the project and starts the copy's servers once,
    no other worker waiting for it; the other worker takes the rest meanwhile."""
    for item in items:
        if {"built_project", "ops_project", "served"} & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.xdist_group("ops_project"))


def pytest_configure(config: pytest.Config) -> None:
    """Refuse a pytest whose node ids pytest-xdist 3.8 cannot group (9.2: pytest-xdist#1386): under
    ``--dist loadgroup`` every worker would then build the shared projects, servers and clusters."""
    from packaging.version import Version

    if config.getoption("dist", "no") == "loadgroup" and Version(pytest.__version__) >= Version("9.2"):
        raise pytest.UsageError(f"pytest {pytest.__version__} breaks pytest-xdist's --dist loadgroup "
                                "(pytest-xdist#1386): install the pinned versions, pip install -e '.[test]'")


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread for every test: the tiny models here run several times faster that way
    on a shared CPU than with threads contending for it (end-to-end tests run their own processes)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
