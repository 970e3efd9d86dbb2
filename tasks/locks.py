"""A project-wide lock between processes: an exclusive ``flock`` on a file under ``.sslpipe/locks``.
The kernel drops it when its holder exits, however it exits, so a killed run never leaves it held."""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager

from tasks import paths

LOCKS = paths.STATE / "locks"


class LockTimeout(TimeoutError):
    """Another process held the lock for longer than we were willing to wait."""


@contextmanager
def project_lock(name: str, timeout_s: float = 3600, poll_s: float = 0.5) -> Iterator[float]:
    """Hold ``.sslpipe/locks/<name>.lock`` for the block; yields the seconds spent waiting.

    Raises:
        LockTimeout: when it is still held by another process after ``timeout_s``.
    """
    path = LOCKS / f"{name}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    start = time.monotonic()
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() - start > timeout_s:
                    raise LockTimeout(f"{path}: still held by another process after {timeout_s:.0f} s") from None
                time.sleep(poll_s)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())  # who holds it, for people looking
        yield time.monotonic() - start
    finally:
        os.close(fd)  # releases the lock
