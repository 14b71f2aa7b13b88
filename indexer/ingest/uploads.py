"""Accepting an uploaded file: probe it cheaply, then either recognise a video already in the collection or keep
the file in the media store under its content hash with a reserved video row (status ``pending``) and a job for the
worker. With object storage the file is received on the API's disk (``staging_dir``), checked there, and then
streamed to the store as a multipart upload: a refused upload stores nothing, and an upload is only accepted
once the store holds it (a store that is down: ``StoreUnavailableError``, answered 503, nothing recorded).

The HTTP side (streaming the body to a temporary file, limits, status codes) is ``app.uploads``; this is what
happens to the file once it is complete, in one place for every way a file arrives.
"""

from __future__ import annotations

import contextlib
import mimetypes
import os
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import sessionmaker

from indexer.enums import JobKind, JobStatus, Stage, VideoStatus
from indexer.errors import BadInputError
from indexer.ingest.probe import probe
from indexer.settings import Settings
from indexer.storage.db import Job, JobItem, Video
from indexer.storage.media import UPLOADS, MediaStore


@dataclass(frozen=True)
class UploadOutcome:
    video_id: int
    job_id: int
    status: JobStatus  # done: an indexed video had these bytes already; queued: the worker will index it
    duplicate: bool = False


def uploads_dir(settings: Settings) -> Path:
    """Where uploaded files are kept (named by content hash) in a local media folder; the service owns and deletes
    them."""
    return settings.media_dir / UPLOADS


def staging_dir(settings: Settings, media: MediaStore) -> Path:
    """Where an upload is written while it arrives: next to where it will be kept in a local media folder (one
    rename keeps it), under the API's home with object storage."""
    return settings.staging_dir if media.remote else uploads_dir(settings)


def accept_upload(sessions: sessionmaker, settings: Settings, tmp: Path, filename: str, size: int,
                  content_hash: str, media: MediaStore) -> UploadOutcome:
    """Probe ``tmp`` (a complete upload, already hashed), then reuse the video it duplicates or keep it in the media
    store with a reserved video row and a queued job. ``BadInputError`` says why a file is refused, with
    ``filename`` in place of server paths; ``StoreUnavailableError`` that the store could not take it. ``tmp`` is
    gone afterwards in every case."""
    try:
        try:
            info = probe(tmp, settings.ingest.max_duration_s, settings.ingest.max_size_bytes)
        except BadInputError as exc:
            reason = exc.reason.replace(str(tmp), filename).replace(tmp.name, filename)  # no server paths
            raise BadInputError(f"{filename}: {reason}", kind=exc.kind) from exc
        with sessions() as s:
            existing = s.scalar(select(Video).where(Video.content_hash == content_hash))
        if existing is not None and existing.status != VideoStatus.FAILED:
            if existing.status == VideoStatus.INDEXED:
                job_id = finished_job(sessions, existing.id, existing.source_path, filename)
                return UploadOutcome(existing.id, job_id, JobStatus.DONE, duplicate=True)
            return UploadOutcome(existing.id, job_of(sessions, existing.id), JobStatus.QUEUED, duplicate=True)
        final = media.ref(UPLOADS, f"{content_hash}{safe_suffix(filename)}")
        if media.remote:
            media.put(tmp, final, mimetypes.guess_type(filename)[0] or "application/octet-stream")
        else:
            os.replace(tmp, final)  # the staging folder is the uploads folder: atomic
        try:
            with sessions.begin() as s:
                if existing is not None:  # a failed earlier attempt: try again with the same row
                    video = s.get(Video, existing.id)
                    video.status, video.error, video.source_path = VideoStatus.PENDING, None, final
                else:
                    video = Video(content_hash=content_hash, filename=filename, source_path=final,
                                  size_bytes=size, duration_s=info.duration_s, width=info.width, height=info.height,
                                  has_audio=info.has_audio, transcript="", model_mode="pending",
                                  status=VideoStatus.PENDING)
                    s.add(video)
                s.flush()
                job = Job(kind=JobKind.UPLOAD, status=JobStatus.QUEUED)
                job.items.append(JobItem(path=final, filename=filename, status=JobStatus.QUEUED,
                                         video_id=video.id))
                s.add(job)
                s.flush()
                return UploadOutcome(video.id, job.id, JobStatus.QUEUED)
        except IntegrityError:  # the same file uploaded concurrently: the other request reserved it
            with sessions() as s:
                other = s.scalar(select(Video).where(Video.content_hash == content_hash))
            assert other is not None
            return UploadOutcome(other.id, job_of(sessions, other.id), JobStatus.QUEUED, duplicate=True)
        except BaseException:  # e.g. a name the database refuses: no file without a row refers to it
            with sessions() as s:
                if s.scalar(select(Video.id).where(Video.content_hash == content_hash)) is None:
                    with contextlib.suppress(Exception):  # the original error is what matters
                        media.delete(final)
            raise
    finally:
        tmp.unlink(missing_ok=True)


def safe_suffix(filename: str) -> str:
    suffix = Path(filename).suffix.lower()
    return suffix if suffix.isascii() and suffix[1:].isalnum() and len(suffix) <= 6 else ""


def finished_job(sessions: sessionmaker, video_id: int, path: str, filename: str) -> int:
    """A job that is done already: an upload of bytes the collection had."""
    with sessions.begin() as s:
        job = Job(kind=JobKind.UPLOAD, status=JobStatus.DONE)
        job.items.append(JobItem(path=path, filename=filename, status=JobStatus.DONE, video_id=video_id,
                                 progress=1.0, stage=Stage.DONE))
        s.add(job)
        s.flush()
        return job.id


def job_of(sessions: sessionmaker, video_id: int) -> int:
    """The latest job of a video (a finished one is made when it has none)."""
    with sessions() as s:
        job_id = s.scalar(select(JobItem.job_id).where(JobItem.video_id == video_id).order_by(JobItem.id.desc()))
    return job_id if job_id is not None else finished_job(sessions, video_id, "", "")
