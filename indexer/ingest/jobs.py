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

from sqlalchemy import delete, func, or_, select, text, update
from sqlalchemy.orm import Session, sessionmaker

from indexer.enums import JobStatus, Stage
from indexer.errors import AccessError, IngestError
from indexer.ingest.access import check_source, within_buckets, within_roots
from indexer.names import (
    display_name,
    display_stored_path,
    is_remote,
    is_s3,
    is_url,
    path_to_db,
    shorten_name,
    source_name,
    split_s3,
)
from indexer.settings import Settings
from indexer.storage.db import AsrCheckpoint, Job, JobItem, utcnow
from indexer.storage.media import MediaStore

log = logging.getLogger(__name__)

# A job is finished once none of its items can still run: each is done, failed or cancelled.
FINISHED_STATUSES: frozenset[str] = frozenset(JobStatus.finished())  # of jobs and of items

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
    stage_progress: float | None = None  # of the current stage (transcribe: the fraction of the audio transcribed)


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


def expand_paths(paths: Iterable[str | Path], recursive: bool,
                 allowed_roots: Sequence[Path] | None = None) -> list[Path]:
    """Files as given, and the media files inside given folders (their subfolders too with ``recursive``).

    With ``allowed_roots``, a folder outside them is never listed (its contents must not leak into item
    names); it becomes one item that fails the access check."""
    roots = [Path(r).expanduser() for r in allowed_roots or []]
    out: list[Path] = []
    for raw in paths:
        p = Path(raw).expanduser()
        try:
            if (roots and not within_roots(p, roots)) or not p.is_dir():
                out.append(p)  # outside, missing, unreadable or looping paths become items failed with a reason
                continue
            found = p.rglob("*") if recursive else p.iterdir()
            out += sorted(f for f in found if f.is_file() and f.suffix.lower() in MEDIA_SUFFIXES)
        except (OSError, RuntimeError):  # a symlink loop, a name too long, a folder that cannot be listed
            out.append(p)
    return out


LIST_PAGE_SIZE = 1000  # objects per listing request (S3's maximum)


def expand_sources(sources: Iterable[str | Path], recursive: bool, allowed_roots: Sequence[Path] | None = None,
                   allowed_buckets: Sequence[str] | None = None,
                   media: MediaStore | None = None) -> list[str | Path]:
    """``expand_paths`` for every kind of bulk source, in the order given: local files and folders as there; an
    ``s3://bucket/prefix`` read as a folder (its media objects, listed page by page; only those directly in it
    without ``recursive``) or as one object when it names one; http(s) URLs as they are (fetched by the worker).

    An object URI outside ``allowed_buckets`` (when given) is not listed: it becomes one item that fails the
    check. A store that does not answer raises ``StoreUnavailableError``."""
    out: list[str | Path] = []
    for raw in sources:
        if is_url(raw):
            out.append(raw)
        elif is_s3(raw):
            assert isinstance(raw, str)
            if (allowed_buckets and not within_buckets(raw, allowed_buckets)) or media is None:
                out.append(raw)
            else:
                out += _list_objects(raw, recursive, media)
        else:
            out += expand_paths([raw], recursive, allowed_roots)
    return out


def _list_objects(uri: str, recursive: bool, media: MediaStore) -> list[str | Path]:
    s3 = media.s3()
    _, key = split_s3(uri)
    if key and not key.endswith("/") and media.exists(uri):
        return [uri]  # one object, whatever its name
    found: list[str | Path] = [info.ref for info in s3.listing(uri, recursive, LIST_PAGE_SIZE)
                               if Path(split_s3(info.ref)[1]).suffix.lower() in MEDIA_SUFFIXES]
    return found or [uri]  # nothing there: one item that says so


class JobQueue:
    def __init__(self, sessions: sessionmaker, max_attempts: int = 3, lease_seconds: float = 600.0,
                 backoff_s: float = 5.0) -> None:
        self.sessions = sessions
        self.max_attempts = max_attempts
        self.lease = dt.timedelta(seconds=lease_seconds)
        self.backoff_s = backoff_s

    @classmethod
    def from_settings(cls, sessions: sessionmaker, settings: Settings) -> JobQueue:
        ingest = settings.ingest
        return cls(sessions, ingest.max_attempts, ingest.lease_seconds, ingest.retry_backoff_s)

    # ------------------------------------------------------------------ enqueue
    def enqueue(self, kind: str, paths: Sequence[str | Path], allowed_roots: Sequence[Path] | None = None,
                filenames: Sequence[str] | None = None, delete_after: bool = False,
                allowed_buckets: Sequence[str] | None = None) -> int:
        """Create a job with one item per source (a path, an ``s3://`` object or a URL). Sources refused by the
        access check (outside the allowed roots or buckets, missing, unreadable, a malformed URL) become failed
        items with the reason, so every input has an outcome."""
        with self.sessions.begin() as s:
            job = Job(kind=kind, status=JobStatus.QUEUED)
            s.add(job)
            for i, raw in enumerate(paths):
                shown = filenames[i] if filenames else source_name(str(raw)) if is_remote(raw) else Path(raw).name
                name = shorten_name(display_name(shown))
                item = JobItem(path=path_to_db(raw), filename=name, status=JobStatus.QUEUED, delete_after=delete_after)
                try:
                    item.path = check_source(raw, allowed_roots, allowed_buckets)
                except AccessError as exc:
                    item.status, item.error, item.error_kind = JobStatus.FAILED, exc.reason, exc.kind
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
                     .where(or_(JobItem.status == JobStatus.QUEUED,
                                (JobItem.status == JobStatus.RUNNING) & (JobItem.lease_until < now)))
                     .where(JobItem.next_attempt_at <= now)
                     .order_by(JobItem.id).limit(limit))
            if s.get_bind().dialect.name == "postgresql":
                query = query.with_for_update(skip_locked=True)
            ids = list(s.scalars(query))
            if ids:
                s.execute(update(JobItem).where(JobItem.id.in_(ids)).values(
                    status=JobStatus.RUNNING, lease_owner=owner, lease_until=now + self.lease,
                    attempts=JobItem.attempts + 1, stage=Stage.CLAIMED, updated_at=now))
                for job_id in set(s.scalars(select(JobItem.job_id).where(JobItem.id.in_(ids)))):
                    s.execute(update(Job).where(Job.id == job_id, Job.status == JobStatus.QUEUED)
                              .values(status=JobStatus.RUNNING, updated_at=now))
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
            res = s.execute(update(JobItem).where(JobItem.status == JobStatus.RUNNING, JobItem.lease_owner == owner)
                            .values(status=JobStatus.QUEUED, lease_owner=None, lease_until=None, stage=None))
            return res.rowcount or 0

    def heartbeat(self, item_id: int, owner: str, stage: str | None = None, progress: float | None = None,
                  stage_progress: float | None = None) -> bool:
        """Extend the lease and report where the item is: its stage (a new stage resets ``stage_progress``), the
        overall progress, and how far into the stage it is; False if the item is no longer ours."""
        values: dict = {"lease_until": utcnow() + self.lease}
        if stage is not None:
            values["stage"] = stage
            values["stage_progress"] = stage_progress
        elif stage_progress is not None:
            values["stage_progress"] = stage_progress
        if progress is not None:
            values["progress"] = progress
        with self.sessions.begin() as s:
            res = s.execute(update(JobItem).where(JobItem.id == item_id, JobItem.lease_owner == owner,
                                                  JobItem.status == JobStatus.RUNNING).values(**values))
            return bool(res.rowcount)

    # ------------------------------------------------------------------ outcomes
    def mark_done(self, s: Session, item_id: int, owner: str, video_id: int, content_hash: str | None) -> bool:
        """Inside the caller's transaction (the commit point with the video row). False if we lost the item."""
        res = s.execute(update(JobItem).where(JobItem.id == item_id, JobItem.lease_owner == owner,
                                              JobItem.status == JobStatus.RUNNING)
                        .values(status=JobStatus.DONE, video_id=video_id, content_hash=content_hash, stage=Stage.DONE,
                                progress=1.0, error=None, error_kind=None, lease_until=None))
        done = bool(res.rowcount)  # type: ignore[attr-defined]  # an UPDATE's CursorResult
        if done:
            s.execute(delete(AsrCheckpoint).where(AsrCheckpoint.item_id == item_id))
            item = s.get(JobItem, item_id)
            assert item is not None
            self._refresh_job(s, item.job)
        return done

    def mark_failed(self, item_id: int, owner: str, error: IngestError) -> str:
        """Permanent errors fail the item; transient ones retry with exponential backoff up to max_attempts."""
        with self.sessions.begin() as s:
            item = s.get(JobItem, item_id)
            if item is None or item.lease_owner != owner or item.status != JobStatus.RUNNING:
                return "lost"
            item.error, item.error_kind = error.reason, error.kind
            item.lease_until = None
            if error.permanent or item.attempts >= self.max_attempts:
                item.status = JobStatus.FAILED
                s.execute(delete(AsrCheckpoint).where(AsrCheckpoint.item_id == item_id))
                if not error.permanent:
                    item.error = f"{error.reason} (gave up after {item.attempts} attempts)"
            else:
                item.status = JobStatus.QUEUED
                delay = self.backoff_s * 2 ** (item.attempts - 1)
                item.next_attempt_at = utcnow() + dt.timedelta(seconds=delay)
            self._refresh_job(s, item.job)
            return item.status

    # ------------------------------------------------------------------ checkpoints of long work
    def save_checkpoint(self, item_id: int, owner: str, content_hash: str, state: str) -> bool:
        """Keep a running item's progress (``state``: JSON) so that whoever claims it next, after a crash,
        continues from there. Written only while this worker holds the item (in the same transaction as the check
        and a lease extension); False if it no longer does."""
        with self.sessions.begin() as s:
            res = s.execute(update(JobItem).where(JobItem.id == item_id, JobItem.lease_owner == owner,
                                                  JobItem.status == JobStatus.RUNNING)
                            .values(lease_until=utcnow() + self.lease))
            if not res.rowcount:
                return False
            row = s.get(AsrCheckpoint, item_id)
            if row is None:
                s.add(AsrCheckpoint(item_id=item_id, content_hash=content_hash, state=state))
            else:
                row.content_hash, row.state = content_hash, state
            return True

    def load_checkpoint(self, item_id: int, content_hash: str) -> str | None:
        """The saved state of this item for this file, if any (a checkpoint of other bytes is ignored)."""
        with self.sessions() as s:
            row = s.get(AsrCheckpoint, item_id)
            return row.state if row is not None and row.content_hash == content_hash else None

    @staticmethod
    def cancel_items_of(s: Session, video_id: int) -> int:
        """In the caller's transaction (a deletion): unfinished items of this video are cancelled and their jobs
        re-evaluated, so a job whose last item was the deleted video finishes. A worker still holding one loses
        it at its commit point (``mark_done`` finds it no longer running)."""
        items = list(s.scalars(select(JobItem).where(JobItem.video_id == video_id,
                                                      JobItem.status.in_((JobStatus.QUEUED, JobStatus.RUNNING)))))
        for item in items:
            item.status, item.stage, item.lease_until = JobStatus.CANCELLED, Stage.CANCELLED, None
            item.error, item.error_kind = "cancelled: the video was deleted", "cancelled"
        for job in {item.job for item in items}:
            JobQueue._refresh_job(s, job)
        return len(items)

    @staticmethod
    def _refresh_job(s: Session, job: Job) -> None:
        s.flush()
        counts = dict(s.execute(select(JobItem.status, func.count()).where(JobItem.job_id == job.id)
                                .group_by(JobItem.status)).all())
        total = sum(counts.values())
        finished = sum(counts.get(status, 0) for status in FINISHED_STATUSES)
        if total and finished == total:  # done if anything was indexed, else failed, else all were cancelled
            job.status = (JobStatus.DONE if counts.get(JobStatus.DONE) else JobStatus.FAILED
                          if counts.get(JobStatus.FAILED) else JobStatus.CANCELLED)
        # running once a worker has started on it
        elif counts.get(JobStatus.RUNNING, 0) or job.status == JobStatus.RUNNING:
            job.status = JobStatus.RUNNING
        else:
            job.status = JobStatus.QUEUED
        job.updated_at = utcnow()

    # ------------------------------------------------------------------ reading
    def summary(self, job_id: int) -> JobSummary | None:
        with self.sessions() as s:
            job = s.get(Job, job_id)
            if job is None:
                return None
            items = [ItemOutcome(i.id, display_stored_path(i.path), i.filename, i.status, i.video_id, i.error,
                                 i.error_kind, i.attempts, i.stage, i.progress, i.stage_progress) for i in job.items]
            count = {k: sum(1 for i in items if i.status == k) for k in JobStatus}
            total = len(items)
            progress = (sum(1.0 if i.status in FINISHED_STATUSES else i.progress for i in items) / total
                        if total else 1.0)
            return JobSummary(job.id, job.kind, job.status, total, count[JobStatus.DONE], count[JobStatus.FAILED],
                              count[JobStatus.QUEUED], count[JobStatus.RUNNING], count[JobStatus.CANCELLED],
                              round(progress, 4), items)

    def pending(self) -> int:
        """Items waiting or in progress (queue depth)."""
        with self.sessions() as s:
            return s.scalar(select(func.count()).select_from(JobItem)
                            .where(JobItem.status.in_((JobStatus.QUEUED, JobStatus.RUNNING)))) or 0


def default_owner(worker_id: str | None = None) -> str:
    """The given worker id, else one unique to this process (host, pid, a random part): two workers started the
    same way on one host must never share claims, scratch folders or feature shards. A worker restarted under
    a fixed id takes back what it held at once; items of a unique id come back when their lease expires."""
    if worker_id:
        return worker_id
    host = re.sub(r"[^A-Za-z0-9_.-]", "-", os.uname().nodename)[:64].lstrip("-_.") or "host"
    return f"{host}-{os.getpid()}-{secrets.token_hex(4)}"
