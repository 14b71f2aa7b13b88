"""Receiving an upload over HTTP for the videos router; what happens to the file then is
``indexer.ingest.uploads``.

An upload is received only after the key rules passed and its declared length fits (nothing is stored
before); it is then streamed to disk while it is hashed and measured against the size limit (whatever the
client declared) and the body and idle timeouts, checked cheaply (probe) so a non-video gets a 415 at once,
then either recognised as an already indexed file or stored under its content hash with a reserved video row
(status ``pending``) and a job for the worker. With object storage (``SAVE_SEARCH_MEDIA_URI=s3://...``) the body
is received into the API's staging folder and goes to the store only once it passed every check; a store that is
down is a 503 with ``Retry-After`` and nothing is recorded.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from fastapi import HTTPException, Request
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.concurrency import run_in_threadpool

from indexer.errors import BadInputError, StoreUnavailableError
from indexer.ingest import uploads
from indexer.names import name_problem, shorten_name
from indexer.settings import Settings
from indexer.storage.media import MediaStore, make_media_store

from .deps import AppState
from .schemas import UploadAccepted

log = logging.getLogger(__name__)

UNSUPPORTED_KINDS = {"not_media", "no_video_stream", "unsupported_codec"}
MULTIPART_OVERHEAD = 64 * 1024  # boundaries, part headers and small fields around the file
MAX_FIELD_BYTES = 16 * 1024  # parts other than the file are read into memory: keep them small
FLUSH_BYTES = 1 << 20  # file data is written in blocks of this size, off the event loop
CLOSE = {"Connection": "close"}  # the rest of a refused body is never read: do not reuse the connection
STORE_RETRY_AFTER_S = 30  # a media store that did not answer: when to try the upload again


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
        self.out: BinaryIO | None = None
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
            self.tmp = self.folder / f".tmp-{uuid.uuid4().hex}{uploads.safe_suffix(self.filename)}"
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


async def receive_upload(request: Request, settings: Settings, media: MediaStore | None = None) -> ReceivedFile:
    """Stream a multipart upload's ``file`` part to a temporary file in the staging folder (``uploads.staging_dir``).

    Called after the key rules passed. A declared length over the limit is refused before any byte is read;
    the bytes really received are counted against the same limit (a client may lie or send chunked), and the
    body must keep arriving (``upload_idle_timeout_s``) and be complete within ``upload_body_timeout_s``."""
    limit = settings.ingest.max_size_bytes
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limit + MULTIPART_OVERHEAD):
        raise _too_large(limit) if declared.isdigit() else HTTPException(400, "Content-Length is not a number")
    content_type, options = parse_options_header(request.headers.get("content-type"))
    if content_type != b"multipart/form-data" or not options.get(b"boundary"):
        raise HTTPException(422, "file: send the video as multipart/form-data in a field named 'file'",
                            headers=CLOSE)
    folder = uploads.staging_dir(settings, media or make_media_store(settings))
    folder.mkdir(parents=True, exist_ok=True)
    writer = _FilePartWriter(folder, limit)
    parser = MultipartParser(options[b"boundary"], writer.callbacks())  # type: ignore[arg-type]  # a TypedDict
    loop = asyncio.get_running_loop()
    deadline = loop.time() + settings.api.upload_body_timeout_s
    chunks = request.stream().__aiter__()
    received = 0
    try:
        while (chunk := await _next_chunk(chunks, min(settings.api.upload_idle_timeout_s,
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


def accept_upload(state: AppState, received: ReceivedFile) -> UploadAccepted:
    """Hand a complete upload to ingest (``indexer.ingest.uploads``) and map a refused file to its status code:
    415 not a video, 413 too large, 422 otherwise; 503 when the media store could not take it."""
    try:
        outcome = uploads.accept_upload(state.services.sessions, state.settings, received.tmp, received.filename,
                                        received.size, received.content_hash, state.services.media)
    except StoreUnavailableError as exc:
        log.warning("upload %r refused: %s", received.filename, exc.reason)
        raise HTTPException(503, "the media store is unavailable; nothing was stored, send the upload again later",
                            headers={"Retry-After": str(STORE_RETRY_AFTER_S)}) from exc
    except BadInputError as exc:
        code = 415 if exc.kind in UNSUPPORTED_KINDS else 413 if exc.kind == "too_large" else 422
        raise HTTPException(code, exc.reason) from exc
    return UploadAccepted(video_id=outcome.video_id, job_id=outcome.job_id, status=outcome.status,
                          duplicate=outcome.duplicate)
