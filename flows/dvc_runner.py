"""One stage through DVC (``dvc repro --single-item STAGE``) as the pipeline flow runs it: its
output on the terminal once, as it comes (progress bars included), without DVC's git and remote
hints (the run's summary says once what to commit); every byte in ``.sslpipe/logs/STAGE.log``; its
lines in the Prefect log; and the stage's own error line kept for the run's final message."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from tasks import paths
from tasks.io import read_json, write_json

LOGS = paths.STATE / "logs"  # each stage's output from its last run through the flow
TIMINGS = paths.STATE / "stage_seconds.json"  # {"smoke"|"full": {stage: seconds}}: the last time each ran
# what DVC prints after each stage it ran: advice for a person at a shell, 8 lines a stage
DVC_HINTS = ("To track the changes with git, run:", "To enable auto staging, run:", "dvc config core.autostage true",
             "Use `dvc push` to send your updates to remote storage.")
ERROR_PREFIXES = ("error: ", "ERROR: ")  # the stage's known errors (`sslpipe stage`), then DVC's


def dvc_exe() -> str:
    exe = Path(sys.executable).parent / "dvc"
    return str(exe) if exe.exists() else "dvc"


def stage_is_stale(stage: str) -> bool:
    """Whether DVC would run ``stage`` (changed code, data, params or outputs, or never run).

    Raises:
        RuntimeError: ``dvc status`` itself failed (its message).
    """
    proc = subprocess.run([dvc_exe(), "status", "--json", stage], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"`dvc status {stage}` failed: {proc.stderr.strip() or proc.stdout.strip()}")
    return bool(json.loads(proc.stdout or "{}"))


def stale_stages(stages: Sequence[str]) -> list[str]:
    """The ``stages`` DVC would run now, in order (``sources`` always runs in the flow)."""
    proc = subprocess.run([dvc_exe(), "status", "--json"], capture_output=True, text=True)
    stale = set(json.loads(proc.stdout or "{}")) if proc.returncode == 0 else set(stages)
    return [s for s in stages if s in stale or s == "sources"]


def record_timings(outcomes: Sequence[dict], smoke: bool) -> None:
    """Remember how long each stage that ran took, for the next run's plan."""
    timings = read_json(TIMINGS) if TIMINGS.exists() else {}
    kind = timings.setdefault("smoke" if smoke else "full", {})
    kind.update({o["stage"]: round(o["seconds"], 1) for o in outcomes if o.get("status") == "ran"})
    write_json(TIMINGS, timings)


def plan(stages: Sequence[str], smoke: bool) -> str:
    """What a run will do and about how long it takes, said before it starts: the stale stages, and
    the minutes they took the last time a run of this kind (smoke or not) ran them here."""
    stale = stale_stages(stages)
    if stale == ["sources"]:
        return "DVC finds every stage up to date: nothing to recompute (the sources manifest is refreshed)"
    timed = (read_json(TIMINGS) if TIMINGS.exists() else {}).get("smoke" if smoke else "full", {})
    known = [timed[s] for s in stale if s in timed]
    untimed = [s for s in stale if s not in timed and s != "sources"]
    if not known:
        how_long = "not timed here yet (README, Results: the default run takes about 15 min on 2 CPUs, --smoke 3-8)"
    else:
        how_long = f"about {max(1, round(sum(known) / 60))} min by the last timings here"
        if untimed:
            how_long += f", plus {', '.join(untimed)} (not timed yet)"
    return f"will run {', '.join(stale)} ({len(stale)} of {len(stages)} stages; DVC finds the others up to date): {how_long}"


def is_hint(line: str) -> bool:
    text = line.strip()
    return not text or text in DVC_HINTS or text.startswith("git add ")


@dataclass
class ReproResult:
    code: int
    error: str  # the stage's last error line (``error: ...``, else DVC's ``ERROR: ...``), or ""
    log: Path


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
    """Run ``dvc repro --single-item [--force] STAGE``; ``on_line`` gets each line shown."""
    log = LOGS / f"{stage}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    errors: list[str] = []

    def line(text: str) -> None:
        if text.startswith(ERROR_PREFIXES):
            errors.append(text)
        on_line(text)

    echo = _Echo(sys.stdout.buffer, line)
    cmd = [dvc_exe(), "repro", "--single-item", *(["--force"] if force else []), stage]
    # a session of its own: a Ctrl-C reaches this process only, which then stops the whole tree
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            assert proc.stdout is not None
            for chunk in iter(lambda: proc.stdout.read1(4096), b""):
                out.write(chunk)
                out.flush()  # the log is read while the stage runs (tail -f, tests)
                echo.feed(chunk)
            echo.close()
            code = proc.wait()
        except BaseException:  # Ctrl-C, or the flow cancelled
            stop_tree(proc.pid)
            raise
        finally:
            proc.stdout.close()
    own = [e for e in errors if e.startswith("error: ")]
    return ReproResult(code, (own or errors or [""])[-1], log)


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
