"""Upload and deletion services used by the videos router.

An upload is streamed to disk while it is hashed and measured, checked cheaply (probe) so a non-video gets a
415 at once, then either recognised as an already indexed file or stored under its content hash with a
reserved video row (status ``pending``) and a job for the worker.
"""

from __future__ import annotations

import hashlib
import logging
import os
import uuid
from pathlib import Path

from fastapi import HTTPException, UploadFile
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from indexer.db import Job, JobItem, Video
from indexer.errors import BadInputError
from indexer.probe import probe

from .deps import AppState
from .schemas import UploadAccepted

log = logging.getLogger(__name__)

CHUNK = 1 << 20
UNSUPPORTED_KINDS = {"not_media", "no_video_stream", "unsupported_codec"}


def _safe_suffix(filename: str) -> str:
    suffix = Path(filename).suffix.lower()
    return suffix if suffix.isascii() and suffix[1:].isalnum() and len(suffix) <= 6 else ""


def _finished_job(state: AppState, video_id: int, path: str, filename: str) -> int:
    with state.services.sessions.begin() as s:
        job = Job(kind="upload", status="done")
        job.items.append(JobItem(path=path, filename=filename, status="done", video_id=video_id, progress=1.0,
                                 stage="done"))
        s.add(job)
        s.flush()
        return job.id


def accept_upload(state: AppState, upload: UploadFile) -> UploadAccepted:
    settings = state.settings
    filename = Path(upload.filename or "upload").name[:255] or "upload"
    folder = settings.media_dir / "uploads"
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".tmp-{uuid.uuid4().hex}{_safe_suffix(filename)}"
    digest, size = hashlib.sha256(), 0
    try:
        with tmp.open("wb") as out:
            while chunk := upload.file.read(CHUNK):
                size += len(chunk)
                if size > settings.max_size_bytes:
                    raise HTTPException(413, f"the upload is larger than the maximum of {settings.max_size_bytes} "
                                             "bytes")
                digest.update(chunk)
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        try:
            info = probe(tmp, settings.max_duration_s, settings.max_size_bytes)
        except BadInputError as exc:
            code = 415 if exc.kind in UNSUPPORTED_KINDS else 413 if exc.kind == "too_large" else 422
            reason = exc.reason.replace(str(tmp), filename).replace(tmp.name, filename)  # no server paths
            raise HTTPException(code, f"{filename}: {reason}") from exc
        content_hash = digest.hexdigest()
        with state.services.sessions() as s:
            existing = s.scalar(select(Video).where(Video.content_hash == content_hash))
        if existing is not None and existing.status != "failed":
            job_id = _finished_job(state, existing.id, existing.source_path, filename) \
                if existing.status == "indexed" else _job_of(state, existing.id)
            return UploadAccepted(video_id=existing.id, job_id=job_id, status="done" if existing.status == "indexed"
                                  else "queued", duplicate=True)
        final = folder / f"{content_hash}{_safe_suffix(filename)}"
        os.replace(tmp, final)
        try:
            with state.services.sessions.begin() as s:
                if existing is not None:  # a failed earlier attempt: try again with the same row
                    video = s.get(Video, existing.id)
                    video.status, video.error, video.source_path = "pending", None, str(final)
                else:
                    video = Video(content_hash=content_hash, filename=filename, source_path=str(final),
                                  size_bytes=size, duration_s=info.duration_s, width=info.width, height=info.height,
                                  has_audio=info.has_audio, transcript="", model_mode="pending", status="pending")
                    s.add(video)
                s.flush()
                job = Job(kind="upload", status="queued")
                job.items.append(JobItem(path=str(final), filename=filename, status="queued", video_id=video.id))
                s.add(job)
                s.flush()
                return UploadAccepted(video_id=video.id, job_id=job.id, status="queued")
        except IntegrityError:  # the same file uploaded concurrently: the other request reserved it
            with state.services.sessions() as s:
                other = s.scalar(select(Video).where(Video.content_hash == content_hash))
            return UploadAccepted(video_id=other.id, job_id=_job_of(state, other.id), status="queued",
                                  duplicate=True)
    finally:
        tmp.unlink(missing_ok=True)
        upload.file.close()


def _job_of(state: AppState, video_id: int) -> int:
    with state.services.sessions() as s:
        job_id = s.scalar(select(JobItem.job_id).where(JobItem.video_id == video_id).order_by(JobItem.id.desc()))
    return job_id if job_id is not None else _finished_job(state, video_id, "", "")


def delete_video(state: AppState, video_id: int) -> bool:
    """Remove the row (segments cascade), cancel its pending work, drop it from the indexes and delete the files
    we own (thumbnail, uploaded copy). Source files of bulk jobs belong to the user and are left alone. Stored
    frame features stay in their append-only shard until a compaction (they are no longer referenced)."""
    uploads = (state.settings.media_dir / "uploads").resolve()
    with state.services.sessions.begin() as s:
        video = s.get(Video, video_id)
        if video is None:
            return False
        owned = [Path(video.thumbnail_path)] if video.thumbnail_path else []
        source = Path(video.source_path)
        if source.resolve().parent == uploads:
            owned.append(source)
        s.execute(update(JobItem).where(JobItem.video_id == video_id, JobItem.status.in_(("queued", "running")))
                  .values(status="failed", error="cancelled: the video was deleted", error_kind="cancelled"))
        s.delete(video)
    with state.index_lock:
        state.services.catalog.sync_and_publish()
    for path in owned:
        path.unlink(missing_ok=True)
    return True
