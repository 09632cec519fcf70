"""Advisory file locks (fcntl.flock): the OS releases them when their process ends, however it ends, so a
killed process leaves no stale lock behind."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path


def _locked(path: Path, wait: bool) -> int | None:
    """An open descriptor of `path` (created if missing) holding its exclusive lock; None where another process
    holds it and `wait` is false. Keep the descriptor open for as long as the lock is needed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def try_lock(path: Path) -> int | None:
    """The lock of `path` if no other process holds it, else None."""
    return _locked(path, wait=False)


def wait_for_lock(path: Path) -> int:
    """The lock of `path`, waiting for any other holder to release it."""
    return _locked(path, wait=True)
