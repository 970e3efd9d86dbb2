"""How a stage's output reaches the terminal through the pipeline flow: every line once, progress
bars as they come, DVC's git/remote hints (8 lines per stage) left out, the stage's error kept."""

from __future__ import annotations

import io

from flows.dvc_runner import _Echo, is_hint

DVC_TAIL = (b"Updating lock file 'dvc.lock'\n\nTo track the changes with git, run:\n\n\tgit add dvc.lock\n\n"
            b"To enable auto staging, run:\n\n\tdvc config core.autostage true\n"
            b"Use `dvc push` to send your updates to remote storage.\n")


def echo(chunks: list[bytes]) -> tuple[bytes, list[str]]:
    terminal, lines = io.BytesIO(), []
    e = _Echo(terminal, lines.append)
    for chunk in chunks:
        e.feed(chunk)
    e.close()
    return terminal.getvalue(), lines


def test_dvc_hints_are_left_out_and_each_line_shown_once() -> None:
    shown, lines = echo([b"Running stage 'ingest':\n> sslpipe stage ingest\ningest done in 3.0 s\n", DVC_TAIL])
    assert shown == b"Running stage 'ingest':\n> sslpipe stage ingest\ningest done in 3.0 s\nUpdating lock file 'dvc.lock'\n"
    assert lines == ["Running stage 'ingest':", "> sslpipe stage ingest", "ingest done in 3.0 s", "Updating lock file 'dvc.lock'"]


def test_a_hint_split_across_reads_is_still_left_out() -> None:
    shown, _ = echo([DVC_TAIL[:45], DVC_TAIL[45:90], DVC_TAIL[90:]])
    assert shown == b"Updating lock file 'dvc.lock'\n"


def test_progress_bars_show_as_they_come_and_end_once() -> None:
    terminal, lines = io.BytesIO(), []
    e = _Echo(terminal, lines.append)
    e.feed(b"\r 50%|#####     | 1/2")
    assert terminal.getvalue() == b"\r 50%|#####     | 1/2"  # before its line ends
    e.feed(b"\r100%|##########| 2/2\n")
    e.feed(b"pretrain done\n")
    assert terminal.getvalue() == b"\r 50%|#####     | 1/2\r100%|##########| 2/2\npretrain done\n"
    assert lines == ["100%|##########| 2/2", "pretrain done"]


def test_hints_are_recognised_and_output_is_not() -> None:
    assert is_hint("\tgit add dvc.lock") and is_hint("") and is_hint("Use `dvc push` to send your updates to remote storage.")
    assert not is_hint("error: /tmp/empty: no images found") and not is_hint("Running stage 'ingest':")


def test_sigterm_mid_stage_stops_the_whole_tree(tmp_path) -> None:
    """A worker cancelling the flow run sends SIGTERM to the flow's process: the stage's tree (DVC
    runs in a session of its own) stops with it, and the process exits 143."""
    import os
    import signal
    import subprocess
    import sys
    import time

    import psutil

    fake_dvc = tmp_path / "dvc"  # a stage that starts a child of its own and waits
    fake_dvc.write_text(f"#!/bin/bash\nsleep 300 &\necho $! > {tmp_path}/child.pid\necho started\nwait\n")
    fake_dvc.chmod(0o755)
    script = ("import flows.dvc_runner as r; r.dvc_exe = lambda: " + repr(str(fake_dvc)) +
              "; r.repro('train', dict(__import__('os').environ), print)")
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=tmp_path, env={**os.environ, "PYTHONPATH": os.getcwd()})
    pid_file = tmp_path / "child.pid"
    for _ in range(300):
        if pid_file.exists() and pid_file.read_text().strip():
            break
        time.sleep(0.1)
    child = int(pid_file.read_text())
    assert psutil.pid_exists(child)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 143
    assert not psutil.pid_exists(child) or psutil.Process(child).status() == psutil.STATUS_ZOMBIE
