"""Each worker's private scratch folder, and the start-up janitor for what dead workers left behind.

A worker decodes into ``home/work/<worker id>/`` and holds an exclusive ``flock`` on ``<worker id>.lock`` next
to it for as long as it lives. The lock is the proof of life on this host: a second process with the same id
is refused (it would otherwise requeue and delete the first one's work), and a folder whose lock nobody holds
belongs to a dead worker and is removed. Thumbnails are written into the scratch folder and put into the media
store just before the database commit; one put there by a worker killed before its commit is unreferenced, and
the worker's start-up deletes it once it is older than a grace period (a live worker commits within moments of the
move; ``indexer.storage.media.MediaStore.sweep``).
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

from indexer.storage.files import try_lock

log = logging.getLogger(__name__)

LOCK_SUFFIX = ".lock"


class WorkerIdInUse(RuntimeError):
    """Another live process on this host already runs a worker under this id."""


def claim_work_dir(root: Path, owner: str) -> tuple[Path, int]:
    """The worker's scratch folder, emptied, and the descriptor of the lock that proves it alive (keep it open)."""
    root.mkdir(parents=True, exist_ok=True)
    fd = try_lock(root / f"{owner}{LOCK_SUFFIX}")
    if fd is None:
        raise WorkerIdInUse(f"a worker with id {owner!r} is already running on this host; every worker needs its "
                            "own id (leave --worker-id out to get a unique one)") from None
    work = root / owner
    shutil.rmtree(work, ignore_errors=True)  # what this id's previous life left
    work.mkdir()
    return work, fd


def release_work_dir(work: Path, lock_fd: int) -> None:
    """At a clean exit: remove the scratch folder and its lock file, then let go of the lock."""
    shutil.rmtree(work, ignore_errors=True)
    Path(f"{work}{LOCK_SUFFIX}").unlink(missing_ok=True)
    os.close(lock_fd)


def sweep_abandoned_work_dirs(root: Path) -> int:
    """Remove the scratch folders (and lock files) of workers that are no longer alive. Returns how many."""
    removed = 0
    for lock in root.glob(f"*{LOCK_SUFFIX}") if root.is_dir() else ():
        fd = try_lock(lock, create=False)
        if fd is None:
            continue  # its worker is alive
        try:
            shutil.rmtree(root / lock.name[: -len(LOCK_SUFFIX)], ignore_errors=True)
            lock.unlink(missing_ok=True)
            removed += 1
        finally:
            os.close(fd)
    return removed

