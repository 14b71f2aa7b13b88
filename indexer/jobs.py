"""The job queue in the database: jobs of items, claims with leases, retries with backoff.

Claims are safe with several workers: PostgreSQL uses ``FOR UPDATE SKIP LOCKED``; SQLite serialises writers
(``BEGIN IMMEDIATE``), so a select-then-update inside one transaction cannot race. A worker that dies keeps
its items only until their lease runs out (or until it restarts under the same worker id).
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import re
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import func, or_, select, text, update
from sqlalchemy.orm import Session, sessionmaker

from .db import Job, JobItem, utcnow
from .errors import AccessError, IngestError
from .names import display_name, display_stored_path, path_to_db, shorten_name
from .probe import check_access

log = logging.getLogger(__name__)

# A job is finished once none of its items can still run: each is done, failed or cancelled.
FINISHED_ITEM_STATUSES = ("done", "failed", "cancelled")
FINISHED_JOB_STATUSES = ("done", "failed", "cancelled")

MEDIA_SUFFIXES = frozenset({".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".mpg", ".mpeg", ".wmv", ".flv",
                            ".ts", ".mts", ".m2ts", ".3gp", ".ogv"})


@dataclass
class ItemOutcome:
    item_id: int
    path: str
    filename: str
    status: str
    video_id: int | None
    error: str | None
    error_kind: str | None
    attempts: int
    stage: str | None
    progress: float


@dataclass
class JobSummary:
    id: int
    kind: str
    status: str
    total: int
    done: int
    failed: int
    queued: int
    running: int
    cancelled: int
    progress: float
    items: list[ItemOutcome]


def _inside(path: Path, roots: Sequence[Path]) -> bool:
    resolved = path.resolve()
    return any(resolved == r or resolved.is_relative_to(r) for r in roots)


def expand_paths(paths: Iterable[str | Path], recursive: bool,
                 allowed_roots: Sequence[Path] | None = None) -> list[Path]:
    """Files as given, and the media files inside given folders (their subfolders too with ``recursive``).

    With ``allowed_roots``, a folder outside them is never listed (its contents must not leak into item
    names); it becomes one item that fails the access check."""
    roots = [Path(r).expanduser().resolve() for r in allowed_roots or []]
    out: list[Path] = []
    for raw in paths:
        p = Path(raw).expanduser()
        try:
            if (roots and not _inside(p, roots)) or not p.is_dir():
                out.append(p)  # outside, missing, unreadable or looping paths become items failed with a reason
                continue
            found = p.rglob("*") if recursive else p.iterdir()
            out += sorted(f for f in found if f.is_file() and f.suffix.lower() in MEDIA_SUFFIXES)
        except (OSError, RuntimeError):  # a symlink loop, a name too long, a folder that cannot be listed
            out.append(p)
    return out


class JobQueue:
    def __init__(self, sessions: sessionmaker, max_attempts: int = 3, lease_seconds: float = 600.0,
                 backoff_s: float = 5.0) -> None:
        self.sessions = sessions
        self.max_attempts = max_attempts
        self.lease = dt.timedelta(seconds=lease_seconds)
        self.backoff_s = backoff_s

    # ------------------------------------------------------------------ enqueue
    def enqueue(self, kind: str, paths: Sequence[str | Path], allowed_roots: Sequence[Path] | None = None,
                filenames: Sequence[str] | None = None, delete_after: bool = False) -> int:
        """Create a job with one item per path. Paths refused by the access check (outside the allowed roots,
        missing, unreadable) become failed items with the reason, so every input has an outcome."""
        with self.sessions.begin() as s:
            job = Job(kind=kind, status="queued")
            s.add(job)
            for i, raw in enumerate(paths):
                name = shorten_name(display_name(filenames[i] if filenames else Path(raw).name))
                item = JobItem(path=path_to_db(raw), filename=name, status="queued", delete_after=delete_after)
                try:
                    item.path = path_to_db(check_access(raw, allowed_roots))
                except AccessError as exc:
                    item.status, item.error, item.error_kind = "failed", exc.reason, exc.kind
                job.items.append(item)
            s.flush()
            self._refresh_job(s, job)
            return job.id

    # ------------------------------------------------------------------ claims
    def _begin_write(self, s: Session) -> None:
        if s.get_bind().dialect.name == "sqlite":
            s.execute(text("BEGIN IMMEDIATE"))

    def claim(self, owner: str, limit: int = 1) -> list[int]:
        """Atomically take up to ``limit`` claimable items: queued and due, or running with an expired lease."""
        now = utcnow()
        s = self.sessions()
        try:
            self._begin_write(s)
            query = (select(JobItem.id)
                     .where(or_(JobItem.status == "queued",
                                (JobItem.status == "running") & (JobItem.lease_until < now)))
                     .where(JobItem.next_attempt_at <= now)
                     .order_by(JobItem.id).limit(limit))
            if s.get_bind().dialect.name == "postgresql":
                query = query.with_for_update(skip_locked=True)
            ids = list(s.scalars(query))
            if ids:
                s.execute(update(JobItem).where(JobItem.id.in_(ids)).values(
                    status="running", lease_owner=owner, lease_until=now + self.lease,
                    attempts=JobItem.attempts + 1, stage="claimed", updated_at=now))
                for job_id in set(s.scalars(select(JobItem.job_id).where(JobItem.id.in_(ids)))):
                    s.execute(update(Job).where(Job.id == job_id, Job.status == "queued")
                              .values(status="running", updated_at=now))
            s.commit()
            return ids
        except Exception:
            s.rollback()
            raise
        finally:
            s.close()

    def release_own(self, owner: str) -> int:
        """At start-up: items this worker id held when it died go back to the queue at once."""
        with self.sessions.begin() as s:
            res = s.execute(update(JobItem).where(JobItem.status == "running", JobItem.lease_owner == owner)
                            .values(status="queued", lease_owner=None, lease_until=None, stage=None))
            return res.rowcount or 0

    def heartbeat(self, item_id: int, owner: str, stage: str | None = None, progress: float | None = None) -> bool:
        """Extend the lease (and report the stage); False if the item is no longer ours."""
        values: dict = {"lease_until": utcnow() + self.lease}
        if stage is not None:
            values["stage"] = stage
        if progress is not None:
            values["progress"] = progress
        with self.sessions.begin() as s:
            res = s.execute(update(JobItem).where(JobItem.id == item_id, JobItem.lease_owner == owner,
                                                  JobItem.status == "running").values(**values))
            return bool(res.rowcount)

    # ------------------------------------------------------------------ outcomes
    def mark_done(self, s: Session, item_id: int, owner: str, video_id: int, content_hash: str | None) -> bool:
        """Inside the caller's transaction (the commit point with the video row). False if we lost the item."""
        res = s.execute(update(JobItem).where(JobItem.id == item_id, JobItem.lease_owner == owner,
                                              JobItem.status == "running")
                        .values(status="done", video_id=video_id, content_hash=content_hash, stage="done",
                                progress=1.0, error=None, error_kind=None, lease_until=None))
        if res.rowcount:
            self._refresh_job(s, s.get(JobItem, item_id).job)
        return bool(res.rowcount)

    def mark_failed(self, item_id: int, owner: str, error: IngestError) -> str:
        """Permanent errors fail the item; transient ones retry with exponential backoff up to max_attempts."""
        with self.sessions.begin() as s:
            item = s.get(JobItem, item_id)
            if item is None or item.lease_owner != owner or item.status != "running":
                return "lost"
            item.error, item.error_kind = error.reason, error.kind
            item.lease_until = None
            if error.permanent or item.attempts >= self.max_attempts:
                item.status = "failed"
                if not error.permanent:
                    item.error = f"{error.reason} (gave up after {item.attempts} attempts)"
            else:
                item.status = "queued"
                delay = self.backoff_s * 2 ** (item.attempts - 1)
                item.next_attempt_at = utcnow() + dt.timedelta(seconds=delay)
            self._refresh_job(s, item.job)
            return item.status

    def cancel_items_of(self, s: Session, video_id: int) -> int:
        """In the caller's transaction (a deletion): unfinished items of this video are cancelled and their jobs
        re-evaluated, so a job whose last item was the deleted video finishes. A worker still holding one loses
        it at its commit point (``mark_done`` finds it no longer running)."""
        items = list(s.scalars(select(JobItem).where(JobItem.video_id == video_id,
                                                      JobItem.status.in_(("queued", "running")))))
        for item in items:
            item.status, item.stage, item.lease_until = "cancelled", "cancelled", None
            item.error, item.error_kind = "cancelled: the video was deleted", "cancelled"
        for job in {item.job for item in items}:
            self._refresh_job(s, job)
        return len(items)

    def _refresh_job(self, s: Session, job: Job) -> None:
        s.flush()
        counts = dict(s.execute(select(JobItem.status, func.count()).where(JobItem.job_id == job.id)
                                .group_by(JobItem.status)).all())
        total = sum(counts.values())
        finished = sum(counts.get(status, 0) for status in FINISHED_ITEM_STATUSES)
        if total and finished == total:  # done if anything was indexed, else failed, else all were cancelled
            job.status = "done" if counts.get("done") else "failed" if counts.get("failed") else "cancelled"
        elif counts.get("running", 0) or job.status == "running":  # running once a worker has started on it
            job.status = "running"
        else:
            job.status = "queued"
        job.updated_at = utcnow()

    # ------------------------------------------------------------------ reading
    def summary(self, job_id: int) -> JobSummary | None:
        with self.sessions() as s:
            job = s.get(Job, job_id)
            if job is None:
                return None
            items = [ItemOutcome(i.id, display_stored_path(i.path), i.filename, i.status, i.video_id, i.error,
                                 i.error_kind, i.attempts, i.stage, i.progress) for i in job.items]
            count = {k: sum(1 for i in items if i.status == k)
                     for k in ("done", "failed", "queued", "running", "cancelled")}
            total = len(items)
            progress = (sum(1.0 if i.status in FINISHED_ITEM_STATUSES else i.progress for i in items) / total
                        if total else 1.0)
            return JobSummary(job.id, job.kind, job.status, total, count["done"], count["failed"], count["queued"],
                              count["running"], count["cancelled"], round(progress, 4), items)

    def pending(self) -> int:
        """Items waiting or in progress (queue depth)."""
        with self.sessions() as s:
            return s.scalar(select(func.count()).select_from(JobItem)
                            .where(JobItem.status.in_(("queued", "running")))) or 0


def default_owner(worker_id: str | None = None) -> str:
    """The given worker id, else one unique to this process (host, pid, a random part): two workers started the
    same way on one host must never share claims, scratch folders or feature shards. A worker restarted under
    a fixed id takes back what it held at once; items of a unique id come back when their lease expires."""
    if worker_id:
        return worker_id
    host = re.sub(r"[^A-Za-z0-9_.-]", "-", os.uname().nodename)[:64].lstrip("-_.") or "host"
    return f"{host}-{os.getpid()}-{secrets.token_hex(4)}"
