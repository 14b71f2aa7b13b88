"""Non-blocking exclusive file locks: the one way a process proves it alone owns something on this host."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path


def try_lock(path: Path, create: bool = True) -> int | None:
    """An open descriptor holding an exclusive ``flock`` on ``path`` (the lock lasts until it is closed), or None
    when another process holds it. ``create=False`` raises FileNotFoundError for a missing file."""
    fd = os.open(path, os.O_RDWR | (os.O_CREAT if create else 0), 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd
