"""Filesystem primitives: non-blocking exclusive file locks (the one way a process proves it alone owns something
on this host) and durable directory entries."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

# Something written before the commit that references it (a thumbnail, a frame-feature row) and still unreferenced
# after this long belongs to no commit in progress: sweeps may remove it.
ORPHAN_GRACE_S = 300.0


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


def fsync_dir(path: Path) -> None:
    """Make a created/renamed directory entry durable (best effort: some network filesystems refuse)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
