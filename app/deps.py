"""Dependencies shared by the routers: the application state and the API-key rules.

Rules: once any key is configured (``SAVE_SEARCH_API_KEYS`` or keys stored hashed in the database), every
write needs one, and reads too when ``SAVE_SEARCH_READ_REQUIRES_KEY`` is set. With no keys at all (the
embedded default) writes are accepted from loopback clients only.

Thumbnails and video files are loaded by ``<img>`` and ``<video>`` elements, which cannot send a key. When
reads need a key, the URLs the API hands out (search results, video metadata) carry a signature instead:
``?exp=<unix time>&sig=<HMAC-SHA256 of "video id:content hash:exp">`` with a secret stored in the database
(shared by every API process), valid for ``media_url_ttl_s`` (counted from the whole second it was issued in, so
a URL lives between ttl - 1 and ttl seconds). Such a URL opens that one video's thumbnail and file only: the
content hash binds it to the file, so an id that SQLite reuses after a delete does not open the new video.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, HTTPException, Query, Request, status
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from indexer.db import ApiKey, Meta, Video
from indexer.jobs import JobQueue
from indexer.search import SearchService
from indexer.settings import Settings
from indexer.worker import Services

from .admission import SearchAdmission
from .schemas import DbId


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_key() -> str:
    return "ss_" + secrets.token_urlsafe(32)


MEDIA_SECRET_KEY = "media_url_secret"  # the Meta row holding the signing secret of media URLs


@dataclass
class AppState:
    settings: Settings
    services: Services
    search: SearchService
    queue: JobQueue
    worker_mode: str  # embedded | external
    admission: SearchAdmission
    _key_cache: tuple[float, set[str]] = field(default=(0.0, set()))
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _media_secret: bytes | None = None

    def key_hashes(self) -> set[str]:
        """Configured keys (hashed) plus the database's; the database part is cached for a few seconds."""
        now = time.monotonic()
        with self._lock:
            stamp, cached = self._key_cache
            if now - stamp > 5.0:
                with self.services.sessions() as s:
                    cached = set(s.scalars(select(ApiKey.key_hash).where(ApiKey.revoked.is_(False))))
                self._key_cache = (now, cached)
        return cached | {hash_key(k) for k in self.settings.api_keys}

    def media_urls_signed(self) -> bool:
        """Whether reads need a key, so that handed-out media URLs must carry a signature."""
        return self.settings.read_requires_key and bool(self.key_hashes())

    def media_secret(self) -> bytes:
        """The signing secret, created once per database (the first API process to need it stores it)."""
        if self._media_secret is None:
            with self.services.sessions() as s:
                value = s.get(Meta, MEDIA_SECRET_KEY)
                if value is None:
                    s.add(Meta(key=MEDIA_SECRET_KEY, value=secrets.token_hex(32)))
                    try:
                        s.commit()
                    except IntegrityError:  # another process stored one first: use that
                        s.rollback()
                    value = s.get(Meta, MEDIA_SECRET_KEY, populate_existing=True)
                self._media_secret = bytes.fromhex(value.value)
        return self._media_secret

    def _media_signature(self, video_id: int, content_hash: str, exp: int) -> str:
        message = f"{video_id}:{content_hash}:{exp}".encode()
        return hmac.new(self.media_secret(), message, hashlib.sha256).hexdigest()

    def content_hashes(self, video_ids: Iterable[int]) -> dict[int, str]:
        """What signed media URLs are bound to, for many videos in one query."""
        ids = set(video_ids)
        if not ids:
            return {}
        with self.services.sessions() as s:
            return dict(s.execute(select(Video.id, Video.content_hash).where(Video.id.in_(ids))).all())

    def media_url(self, video_id: int, kind: str, content_hash: str) -> str:
        """``/v1/videos/{id}/thumbnail`` or ``/media``, signed when reads need a key."""
        url = f"/v1/videos/{video_id}/{kind}"
        if not self.media_urls_signed():
            return url
        exp = int(time.time()) + self.settings.media_url_ttl_s
        return f"{url}?exp={exp}&sig={self._media_signature(video_id, content_hash, exp)}"

    def media_signature_valid(self, video_id: int, exp: int | None, sig: str | None) -> bool:
        if exp is None or sig is None or exp < time.time() or not sig.isascii():
            return False
        content_hash = self.content_hashes([video_id]).get(video_id)
        if content_hash is None:
            return False
        return hmac.compare_digest(sig.encode(), self._media_signature(video_id, content_hash, exp).encode())

    def invalidate_keys(self) -> None:
        with self._lock:
            self._key_cache = (0.0, set())

    @property
    def index_lock(self) -> threading.RLock:
        return self.services.index_lock

    @property
    def auth_mode(self) -> str:
        if not self.key_hashes():
            return "no keys configured: writes only from loopback clients"
        return "api keys: required for writes" + (" and reads" if self.settings.read_requires_key else "")


def get_state(request: Request) -> AppState:
    return request.app.state.save


def _presented_key(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    if header.lower().startswith("bearer "):
        return header[7:].strip() or None
    return request.headers.get("x-api-key") or None


def _is_loopback(request: Request) -> bool:
    host = request.client.host if request.client else ""
    if host in ("testclient", "localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check(request: Request, state: AppState, write: bool) -> None:
    hashes = state.key_hashes()
    key = _presented_key(request)
    if not hashes:
        if write and not _is_loopback(request):
            raise HTTPException(status.HTTP_403_FORBIDDEN,
                                "no API keys are configured, so writes are only accepted from this machine")
        return
    if not write and not state.settings.read_requires_key:
        return
    if key is None:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "an API key is required (Authorization: Bearer <key>)",
                            headers={"WWW-Authenticate": "Bearer"})
    presented = hash_key(key)
    if not any(hmac.compare_digest(presented, h) for h in hashes):
        raise HTTPException(status.HTTP_403_FORBIDDEN, "this API key is not valid")


def require_read(request: Request, state: Annotated[AppState, Depends(get_state)]) -> AppState:
    _check(request, state, write=False)
    return state


def require_write(request: Request, state: Annotated[AppState, Depends(get_state)]) -> AppState:
    _check(request, state, write=True)
    return state


def require_media_read(
    video_id: DbId, request: Request, state: Annotated[AppState, Depends(get_state)],
    exp: int | None = Query(None, ge=0, le=2**62, description="Expiry of a signed media URL (unix seconds)."),
    sig: str | None = Query(None, max_length=128, description="Signature of a signed media URL."),
) -> AppState:
    """A read of one video's thumbnail or file: a valid signed URL is enough, else the usual read rule."""
    if not state.media_urls_signed() or not state.media_signature_valid(video_id, exp, sig):
        _check(request, state, write=False)
    return state


ReadState = Annotated[AppState, Depends(require_read)]
MediaReadState = Annotated[AppState, Depends(require_media_read)]
WriteState = Annotated[AppState, Depends(require_write)]
