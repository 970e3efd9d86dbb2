"""One stage through DVC (``dvc repro --single-item STAGE``) as the pipeline flow runs it: its
output on the terminal once, as it comes (progress bars included), without DVC's git and remote
hints (the run's summary says once what to commit); every byte in ``.sslpipe/logs/STAGE.log``; its
lines in the Prefect log; and the stage's own error line kept for the run's final message."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from tasks import paths

LOGS = paths.STATE / "logs"  # each stage's output from its last run through the flow
# what DVC prints after each stage it ran: advice for a person at a shell, 8 lines a stage
DVC_HINTS = ("To track the changes with git, run:", "To enable auto staging, run:", "dvc config core.autostage true",
             "Use `dvc push` to send your updates to remote storage.")
ERROR_PREFIXES = ("error: ", "ERROR: ")  # the stage's known errors (`sslpipe stage`), then DVC's


def dvc_exe() -> str:
    exe = Path(sys.executable).parent / "dvc"
    return str(exe) if exe.exists() else "dvc"


def dvc_status(*stages: str) -> dict:
    """``dvc status --json [STAGE...]``: the stale stages (all of them without ``stages``) and why.

    Raises:
        RuntimeError: ``dvc status`` itself failed (its message).
    """
    proc = subprocess.run([dvc_exe(), "status", "--json", *stages], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"`dvc status {' '.join(stages)}` failed: {proc.stderr.strip() or proc.stdout.strip()}")
    return json.loads(proc.stdout or "{}")


def is_hint(line: str) -> bool:
    text = line.strip()
    return not text or text in DVC_HINTS or text.startswith("git add ")


@dataclass
class ReproResult:
    code: int
    error: str  # the stage's last error line (``error: ...``, else DVC's ``ERROR: ...``), or ""
    log: Path
    skipped: bool = False  # DVC found the stage's inputs unchanged and ran nothing


def skipped_line(stage: str) -> str:
    """What ``dvc repro`` logs for a stage whose deps, params and outs are as ``dvc.lock`` says
    (``dvc/stage/__init__.py: Stage.reproduce``)."""
    return f"Stage '{stage}' didn't change, skipping"


class _Echo:
    """Copies output to ``terminal`` as it arrives, holding back only DVC's hint lines: a partial
    line is written at once when it is a progress bar (it holds a carriage return, no hint does),
    else when its newline arrives."""

    def __init__(self, terminal: BinaryIO, on_line: Callable[[str], None]) -> None:
        self.terminal, self.on_line = terminal, on_line
        self.pending = b""
        self.shown = 0  # bytes of ``pending`` already on the terminal

    def feed(self, chunk: bytes) -> None:
        self.pending += chunk
        *lines, self.pending = self.pending.split(b"\n")
        for i, line in enumerate(lines):
            text = line.decode(errors="replace").split("\r")[-1]
            if not is_hint(text):
                self.terminal.write(line[self.shown if i == 0 else 0:] + b"\n")
                self.on_line(text.strip())
            elif i == 0 and self.shown:
                self.terminal.write(b"\n")  # end a progress bar that was already shown
        if lines:
            self.shown = 0
        if b"\r" in self.pending:
            self.terminal.write(self.pending[self.shown:])
            self.shown = len(self.pending)
        self.terminal.flush()

    def close(self) -> None:
        if self.pending:
            self.feed(b"\n")


def repro(stage: str, env: dict[str, str], on_line: Callable[[str], None], force: bool = False) -> ReproResult:
    """Run ``dvc repro --single-item [--force] STAGE``; ``on_line`` gets each line shown. DVC
    decides whether the stage is stale (one DVC process, no ``dvc status`` before it): the result
    says when it ran nothing."""
    log = LOGS / f"{stage}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    errors: list[str] = []
    skipped = False

    def line(text: str) -> None:
        nonlocal skipped
        if text.startswith(ERROR_PREFIXES):
            errors.append(text)
        skipped = skipped or text == skipped_line(stage)
        on_line(text)

    echo = _Echo(sys.stdout.buffer, line)
    cmd = [dvc_exe(), "repro", "--single-item", *(["--force"] if force else []), stage]
    # a session of its own: a Ctrl-C reaches this process only, which then stops the whole tree
    with open(log, "wb") as out, _sigterm_raises():
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            assert proc.stdout is not None
            for chunk in iter(lambda: proc.stdout.read1(4096), b""):
                out.write(chunk)
                out.flush()  # the log is read while the stage runs (tail -f, tests)
                echo.feed(chunk)
            echo.close()
            code = proc.wait()
        except BaseException:  # Ctrl-C, SIGTERM, or the flow cancelled
            stop_tree(proc.pid)
            raise
        finally:
            proc.stdout.close()
    own = [e for e in errors if e.startswith("error: ")]
    return ReproResult(code, (own or errors or [""])[-1], log, skipped=code == 0 and skipped)


@contextmanager
def _sigterm_raises() -> Iterator[None]:
    """SIGTERM (a worker cancelling the flow run, ``kill``) raises ``SystemExit(143)`` while a
    stage runs, so ``repro`` stops the stage's tree as it does on Ctrl-C: DVC runs in a session of
    its own, out of reach of a signal sent to this process. Only the main thread can set a handler;
    elsewhere the process's own handling stays."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def terminate(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def stop_tree(pid: int, grace_s: float = 15) -> None:
    """Stop a process and everything under it: DVC, the stage, and what the stage started (Ray's
    processes outlive their parent and may ignore SIGTERM). SIGINT first, so the stage can clean up
    (``ray.shutdown``, MLflow's run), then SIGKILL for whatever is left after ``grace_s``."""
    import threading

    main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN) if main else None  # a second Ctrl-C must not cut it short
    try:
        _stop(pid, grace_s)
    finally:
        if main:
            signal.signal(signal.SIGINT, previous)


def _stop(pid: int, grace_s: float) -> None:
    import psutil

    try:
        root = psutil.Process(pid)
        tree = [root, *root.children(recursive=True)]  # taken now: orphans are reparented away
    except psutil.NoSuchProcess:
        return
    for p in tree:
        try:
            p.send_signal(signal.SIGINT)
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(tree, timeout=grace_s)
    for p in alive:
        try:
            tree += p.children(recursive=True)
        except psutil.NoSuchProcess:
            pass
    for p in {q.pid: q for q in tree}.values():
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(tree, timeout=5)
