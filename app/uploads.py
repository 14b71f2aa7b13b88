"""Upload and deletion services used by the videos router.

An upload is received only after the key rules passed and its declared length fits (nothing is stored
before); it is then streamed to disk while it is hashed and measured against the size limit (whatever the
client declared) and the body and idle timeouts, checked cheaply (probe) so a non-video gets a 415 at once,
then either recognised as an already indexed file or stored under its content hash with a reserved video row
(status ``pending``) and a job for the worker.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import uuid
from dataclasses import dataclass
from pathlib import Path

from fastapi import HTTPException, Request
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from starlette.concurrency import run_in_threadpool

from indexer.db import Job, JobItem, Video
from indexer.errors import BadInputError
from indexer.names import name_problem, path_from_db, shorten_name
from indexer.probe import probe
from indexer.settings import Settings

from .deps import AppState
from .schemas import UploadAccepted

log = logging.getLogger(__name__)

UNSUPPORTED_KINDS = {"not_media", "no_video_stream", "unsupported_codec"}
MULTIPART_OVERHEAD = 64 * 1024  # boundaries, part headers and small fields around the file
MAX_FIELD_BYTES = 16 * 1024  # parts other than the file are read into memory: keep them small
FLUSH_BYTES = 1 << 20  # file data is written in blocks of this size, off the event loop
CLOSE = {"Connection": "close"}  # the rest of a refused body is never read: do not reuse the connection


@dataclass
class ReceivedFile:
    """An upload's file part, on disk under a temporary name, with what was measured while receiving it."""

    tmp: Path
    filename: str
    size: int
    content_hash: str


def _too_large(limit: int) -> HTTPException:
    return HTTPException(413, f"the upload is larger than the maximum of {limit} bytes", headers=CLOSE)


class _FilePartWriter:
    """Callbacks of python-multipart's streaming parser: the ``file`` part goes to a temporary file (hashed and
    counted as it arrives), other small fields are ignored. Data is buffered and written by ``flush``."""

    def __init__(self, folder: Path, limit: int) -> None:
        self.folder, self.limit = folder, limit
        self.header_name, self.header_value = bytearray(), bytearray()
        self.part_headers: dict[str, bytes] = {}
        self.in_file = False
        self.field_bytes = 0
        self.buffer = bytearray()
        self.digest, self.size = hashlib.sha256(), 0
        self.filename: str | None = None
        self.tmp: Path | None = None
        self.out = None
        self.file_done = False

    def callbacks(self) -> dict:
        return {"on_part_begin": self._part_begin, "on_header_field": self._header_field,
                "on_header_value": self._header_value, "on_header_end": self._header_end,
                "on_headers_finished": self._headers_finished, "on_part_data": self._part_data,
                "on_part_end": self._part_end}

    def _part_begin(self) -> None:
        self.part_headers = {}

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self.header_name += data[start:end]

    def _header_value(self, data: bytes, start: int, end: int) -> None:
        self.header_value += data[start:end]

    def _header_end(self) -> None:
        self.part_headers[bytes(self.header_name).decode("latin-1").lower()] = bytes(self.header_value)
        self.header_name.clear()
        self.header_value.clear()

    def _headers_finished(self) -> None:
        _, options = parse_options_header(self.part_headers.get("content-disposition", b""))
        self.in_file = options.get(b"name") == b"file" and b"filename" in options and not self.file_done
        if self.in_file:
            raw = options[b"filename"].decode("utf-8", "surrogateescape")
            self.filename = _upload_filename(raw)
            self.tmp = self.folder / f".tmp-{uuid.uuid4().hex}{_safe_suffix(self.filename)}"
            self.out = self.tmp.open("wb")

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if not self.in_file:
            self.field_bytes += end - start
            if self.field_bytes > MAX_FIELD_BYTES:
                raise HTTPException(413, f"form fields other than the file are limited to {MAX_FIELD_BYTES} bytes")
            return
        self.size += end - start
        if self.size > self.limit:
            raise _too_large(self.limit)
        self.buffer += data[start:end]

    def _part_end(self) -> None:
        if self.in_file:
            self.in_file, self.file_done = False, True

    def flush(self) -> None:
        if self.buffer and self.out is not None:
            self.digest.update(self.buffer)
            self.out.write(self.buffer)
            self.buffer.clear()

    def finish(self) -> None:
        self.flush()
        if self.out is not None:
            self.out.flush()
            os.fsync(self.out.fileno())
            self.out.close()

    def discard(self) -> None:
        if self.out is not None:
            self.out.close()
        if self.tmp is not None:
            self.tmp.unlink(missing_ok=True)


def _upload_filename(raw: str) -> str:
    """The client's file name, without folders, shortened keeping its extension; NUL or bytes that are not
    UTF-8 are a 422 (the name is shown and stored as text)."""
    name = raw.replace("\\", "/").rsplit("/", 1)[-1]
    if problem := name_problem(name):
        raise HTTPException(422, problem)
    return shorten_name(name) or "upload"


def _parse(parser: MultipartParser, chunk: bytes | None) -> None:
    """Feed the parser (``None``: the body ended); a malformed body is the client's error."""
    try:
        parser.write(chunk) if chunk is not None else parser.finalize()
    except MultipartParseError as exc:
        raise HTTPException(422, f"the multipart body is malformed: {exc}", headers=CLOSE) from exc


async def _next_chunk(chunks, timeout_s: float) -> bytes | None:
    try:
        return await asyncio.wait_for(anext(chunks), timeout=max(0.0, timeout_s))
    except StopAsyncIteration:
        return None
    except TimeoutError:
        raise HTTPException(408, "the upload was too slow: no data arrived in time", headers=CLOSE) from None


async def receive_upload(request: Request, settings: Settings) -> ReceivedFile:
    """Stream a multipart upload's ``file`` part to a temporary file in the uploads folder.

    Called after the key rules passed. A declared length over the limit is refused before any byte is read;
    the bytes really received are counted against the same limit (a client may lie or send chunked), and the
    body must keep arriving (``upload_idle_timeout_s``) and be complete within ``upload_body_timeout_s``."""
    limit = settings.max_size_bytes
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limit + MULTIPART_OVERHEAD):
        raise _too_large(limit) if declared.isdigit() else HTTPException(400, "Content-Length is not a number")
    content_type, options = parse_options_header(request.headers.get("content-type"))
    if content_type != b"multipart/form-data" or not options.get(b"boundary"):
        raise HTTPException(422, "file: send the video as multipart/form-data in a field named 'file'",
                            headers=CLOSE)
    folder = settings.media_dir / "uploads"
    folder.mkdir(parents=True, exist_ok=True)
    writer = _FilePartWriter(folder, limit)
    parser = MultipartParser(options[b"boundary"], writer.callbacks())
    loop = asyncio.get_running_loop()
    deadline = loop.time() + settings.upload_body_timeout_s
    chunks = request.stream().__aiter__()
    received = 0
    try:
        while (chunk := await _next_chunk(chunks, min(settings.upload_idle_timeout_s,
                                                      deadline - loop.time()))) is not None:
            received += len(chunk)
            if received > limit + MULTIPART_OVERHEAD:
                raise _too_large(limit)
            _parse(parser, chunk)
            if len(writer.buffer) >= FLUSH_BYTES:
                await run_in_threadpool(writer.flush)
        _parse(parser, None)
        if not writer.file_done or writer.tmp is None:
            raise HTTPException(422, "file: a multipart field 'file' with a file name is required")
        await run_in_threadpool(writer.finish)
    except BaseException:
        writer.discard()
        raise
    return ReceivedFile(writer.tmp, writer.filename or "upload", writer.size, writer.digest.hexdigest())


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


def accept_upload(state: AppState, received: ReceivedFile) -> UploadAccepted:
    """Probe a received file, then reuse the video it duplicates or store it and queue a job for it."""
    settings = state.settings
    folder = settings.media_dir / "uploads"
    tmp, filename, size, content_hash = received.tmp, received.filename, received.size, received.content_hash
    try:
        try:
            info = probe(tmp, settings.max_duration_s, settings.max_size_bytes)
        except BadInputError as exc:
            code = 415 if exc.kind in UNSUPPORTED_KINDS else 413 if exc.kind == "too_large" else 422
            reason = exc.reason.replace(str(tmp), filename).replace(tmp.name, filename)  # no server paths
            raise HTTPException(code, f"{filename}: {reason}") from exc
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
        except BaseException:  # e.g. a name the database refuses: no file without a row refers to it
            with state.services.sessions() as s:
                if s.scalar(select(Video.id).where(Video.content_hash == content_hash)) is None:
                    final.unlink(missing_ok=True)
            raise
    finally:
        tmp.unlink(missing_ok=True)


def _job_of(state: AppState, video_id: int) -> int:
    with state.services.sessions() as s:
        job_id = s.scalar(select(JobItem.job_id).where(JobItem.video_id == video_id).order_by(JobItem.id.desc()))
    return job_id if job_id is not None else _finished_job(state, video_id, "", "")


def delete_video(state: AppState, video_id: int) -> bool:
    """Remove the row (segments cascade), cancel its pending work, drop it from the indexes and delete the files
    we own (thumbnail, uploaded copy). Source files of bulk jobs belong to the user and are left alone. Stored
    frame features stay in their append-only shard until a compaction (they are no longer referenced); in Milvus
    they go with the vectors. A crash before the index removal is repaired by the next start-up or
    `save-search reindex --verify`."""
    uploads = (state.settings.media_dir / "uploads").resolve()
    with state.services.sessions.begin() as s:
        video = s.get(Video, video_id)
        if video is None:
            return False
        owned = [Path(video.thumbnail_path)] if video.thumbnail_path else []
        source = path_from_db(video.source_path)
        if source.resolve().parent == uploads:
            owned.append(source)
        state.queue.cancel_items_of(s, video_id)
        s.delete(video)
    try:
        with state.index_lock:
            state.services.catalog.remove_videos([video_id])
    except Exception:  # noqa: BLE001 - the row is gone, so search never shows it; the next repair drops the entries
        log.exception("video %s is deleted but its index entries remain until the next repair", video_id)
    for path in owned:
        path.unlink(missing_ok=True)
    return True
