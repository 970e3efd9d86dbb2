"""Ctrl-C stops everything `sslpipe run` started: the DVC subprocess, the stage, Ray's processes
(which outlive their parent and may ignore SIGTERM) and Prefect's temporary API server."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest

from tests.flows.conftest import copy_built_project, project_env

pytestmark = pytest.mark.e2e


def _descendants(pid: int) -> set[psutil.Process]:
    try:
        return set(psutil.Process(pid).children(recursive=True))
    except psutil.NoSuchProcess:
        return set()


def test_ctrl_c_mid_tune_leaves_no_process(built_project, tmp_path: Path) -> None:
    # the session's smoke project, no servers running (the run starts Prefect's temporary API):
    # the stages before tune are cached
    project = copy_built_project(built_project[0], tmp_path / "project")
    tune_log = project / ".sslpipe" / "logs" / "tune.log"
    tune_log.unlink(missing_ok=True)  # the built run's: the line awaited below must be this run's
    log = open(tmp_path / "run.log", "wb")
    # a long tune (Ray running) to interrupt; a session of its own, as a terminal's foreground group
    proc = subprocess.Popen(["sslpipe", "run", "--smoke", "--set", "tune.epochs=[400]"], cwd=project, env=project_env(),
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    seen: set[psutil.Process] = set()
    try:
        deadline = time.monotonic() + 600
        while not (tune_log.exists() and "tune ssl_finetune" in tune_log.read_text(errors="replace")):
            assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "run.log").read_text()[-3000:]
            seen |= _descendants(proc.pid)
            time.sleep(0.5)
        for _ in range(20):  # Ray's workers are up
            seen |= _descendants(proc.pid)
            time.sleep(0.3)
        assert any("ray" in " ".join(p.cmdline()).lower() for p in seen if p.is_running()), "no Ray process seen"
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C does
        code = proc.wait(timeout=120)
    finally:
        for p in [psutil.Process(proc.pid), *seen] if proc.poll() is None else seen:
            try:
                p.kill()  # whatever the command under test left
            except psutil.NoSuchProcess:
                pass
        log.close()
    output = (tmp_path / "run.log").read_text()
    assert code == 130, output[-3000:]
    time.sleep(2)
    left = [p for p in seen if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert not left, [" ".join(p.cmdline())[:200] for p in left]
    assert "interrupted" in output.strip().splitlines()[-1] and "Traceback" not in output, output[-3000:]
    assert (project / "data" / "dataset" / "metadata.parquet").exists()  # the stages before tune keep their outputs
