"""Media and thumbnails for clients: the URLs the API hands out, and the answers of ``/thumbnail`` and ``/media``.

A file in a local media folder (or a bulk job's path) is served by the API as before (ranges, ``HEAD``). An
object (``s3://``: the media store in object storage, or a bucket a bulk job read) goes one of two ways,
``SAVE_SEARCH_MEDIA_DELIVERY``:

- ``presign`` (default): the ``thumbnail_url`` and ``video_url`` in responses are presigned URLs of the store,
  valid for ``SAVE_SEARCH_MEDIA_URL_TTL_S``; clients fetch from the store directly (ranges included), and the
  API's own ``/thumbnail`` and ``/media`` answer with a redirect to a fresh one;
- ``proxy``: the URLs are the API's (signed when reads need a key, as for local files), and the API streams the
  object, answering ``Range`` requests with 206 (one range; several are answered with the whole object, which
  HTTP allows), for clients that cannot reach the store.
"""

from __future__ import annotations

import mimetypes
import re
from collections.abc import Iterable
from dataclasses import dataclass

from fastapi import HTTPException, Request
from fastapi.responses import RedirectResponse, Response, StreamingResponse
from sqlalchemy import select
from sqlalchemy.orm import sessionmaker

from indexer.enums import MediaDelivery
from indexer.errors import AccessError, IngestError
from indexer.names import is_s3
from indexer.settings import Settings
from indexer.storage.db import Video
from indexer.storage.media import MediaStore, ObjectInfo

from .security import Guard

STORE_RETRY_AFTER_S = 30
_RANGE = re.compile(r"bytes=(\d*)-(\d*)")


@dataclass(frozen=True)
class MediaRow:
    """What the URLs of one video depend on."""

    content_hash: str
    filename: str
    source_path: str | None
    thumbnail_path: str | None


def media_type(filename: str, ref: str | None = None) -> str:
    return (mimetypes.guess_type(filename)[0] or (mimetypes.guess_type(ref)[0] if ref else None)
            or "video/mp4")


class MediaLinks:
    """The ``thumbnail_url`` and ``video_url`` of videos, by the rules of the module docstring."""

    def __init__(self, guard: Guard, media: MediaStore, settings: Settings, sessions: sessionmaker) -> None:
        self.guard, self.media, self.settings, self.sessions = guard, media, settings, sessions

    @property
    def presign(self) -> bool:
        return self.settings.media.delivery == MediaDelivery.PRESIGN

    def needs_rows(self) -> bool:
        """Whether URLs depend on the rows (signatures, or objects that may be presigned): a search then reads them
        for its page."""
        return self.guard.media_urls_signed() or (self.presign and (
            self.media.remote or bool(self.settings.ingest.allowed_buckets)))

    def rows(self, video_ids: Iterable[int]) -> dict[int, MediaRow]:
        ids = set(video_ids)
        if not ids:
            return {}
        with self.sessions() as s:
            found = s.execute(select(Video.id, Video.content_hash, Video.filename, Video.source_path,
                                     Video.thumbnail_path).where(Video.id.in_(ids))).all()
        return {int(r[0]): MediaRow(str(r[1]), str(r[2]), r[3], r[4]) for r in found}

    def presigned(self, ref: str | None, content_type: str) -> str | None:
        """A presigned URL of an object (None: not an object, presigning is off, or it failed)."""
        if not (self.presign and ref and is_s3(ref)):
            return None
        try:
            return self.media.s3().presign(ref, self.settings.api.media_url_ttl_s, content_type)
        except Exception:  # noqa: BLE001 - e.g. no credentials: the API's own URL still works (it says why)
            return None

    def urls(self, video_id: int, row: MediaRow | None) -> tuple[str, str]:
        """(thumbnail URL, video URL) of one video."""
        content_hash = row.content_hash if row else ""
        thumb = self.presigned(row.thumbnail_path, "image/jpeg") if row else None
        video = self.presigned(row.source_path, media_type(row.filename, row.source_path)) if row else None
        return (thumb or self.guard.media_url(video_id, "thumbnail", content_hash),
                video or self.guard.media_url(video_id, "media", content_hash))


def store_http_error(exc: IngestError) -> HTTPException:
    if isinstance(exc, AccessError) and exc.kind == "not_found":
        return HTTPException(404, "the media file of this video is no longer available")
    return HTTPException(503, "the media store is unavailable; try again later",
                         headers={"Retry-After": str(STORE_RETRY_AFTER_S)})


def byte_range(header: str | None, size: int) -> tuple[int, int] | None:
    """The one range a ``Range`` header asks for, as (first, last) inclusive; None: answer the whole object (no
    header, a malformed one, or several ranges); a 416 when it lies outside the object."""
    if not header:
        return None
    match = _RANGE.fullmatch(header.strip())
    if match is None or (not match.group(1) and not match.group(2)):
        return None
    first, last = match.group(1), match.group(2)
    if not first:  # the last N bytes
        start, end = max(0, size - int(last)), size - 1
        if int(last) == 0:
            start = size
    else:
        start, end = int(first), min(int(last), size - 1) if last else size - 1
        if last and int(last) < start:
            return None  # syntactically invalid: ignored
    if start >= size or size == 0:
        raise HTTPException(416, "the requested range is outside the file",
                            headers={"Content-Range": f"bytes */{size}"})
    return start, end


def object_response(request: Request, links: MediaLinks, ref: str, content_type: str,
                    headers: dict[str, str] | None = None) -> Response:
    """The answer for an object: a redirect to a presigned URL, or the object streamed with range support."""
    headers = dict(headers or {})
    if links.presign:
        url = links.presigned(ref, content_type)
        if url is not None:
            return RedirectResponse(url, status_code=307, headers={"Cache-Control": "no-store"})
    s3 = links.media.s3()
    try:
        info: ObjectInfo = s3.head(ref)
        wanted = byte_range(request.headers.get("range"), info.size)
        if_range = request.headers.get("if-range")
        if wanted is not None and if_range is not None and if_range.strip() != info.etag:
            wanted = None  # the client's copy is of another version: send the whole object
        start, end = wanted if wanted is not None else (0, info.size - 1)
        headers.update({"Accept-Ranges": "bytes", "Content-Length": str(max(0, end - start + 1)),
                        "ETag": info.etag})
        status = 200
        if wanted is not None:
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end}/{info.size}"
        if request.method == "HEAD" or info.size == 0:
            return Response(status_code=status, headers=headers, media_type=content_type)
        body = s3.read_range(ref, start, end)
    except IngestError as exc:
        raise store_http_error(exc) from exc
    return StreamingResponse(body, status_code=status, headers=headers, media_type=content_type)
