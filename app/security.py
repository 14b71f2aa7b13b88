"""API keys and signed media URLs: who may read and write, decided in one place.

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

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import sessionmaker

from indexer.settings import ApiSettings
from indexer.storage.db import ApiKey, Meta, Video

MEDIA_SECRET_KEY = "media_url_secret"  # the Meta row holding the signing secret of media URLs
KEY_CACHE_S = 5.0  # keys stored in the database are re-read this often


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_key() -> str:
    return "ss_" + secrets.token_urlsafe(32)


def is_loopback(host: str) -> bool:
    if host in ("testclient", "localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class AccessDenied(Exception):
    """A request may not do this: ``status`` is 401 (no key given) or 403 (a wrong key, or a write from another
    machine while no keys exist)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status, self.reason = status, reason


class Guard:
    """The key rules and media URL signing of one API process (keys and secret shared through the database)."""

    def __init__(self, sessions: sessionmaker, settings: ApiSettings) -> None:
        self.sessions = sessions
        self.settings = settings
        self._key_cache: tuple[float, set[str]] = (0.0, set())
        self._lock = threading.Lock()
        self._media_secret: bytes | None = None

    # ------------------------------------------------------------------ keys
    def key_hashes(self) -> set[str]:
        """Configured keys (hashed) plus the database's; the database part is cached for ``KEY_CACHE_S``."""
        now = time.monotonic()
        with self._lock:
            stamp, cached = self._key_cache
            if now - stamp > KEY_CACHE_S:
                with self.sessions() as s:
                    cached = set(s.scalars(select(ApiKey.key_hash).where(ApiKey.revoked.is_(False))))
                self._key_cache = (now, cached)
        return cached | {hash_key(k) for k in self.settings.api_keys}

    def invalidate_keys(self) -> None:
        with self._lock:
            self._key_cache = (0.0, set())

    def check(self, key: str | None, client_host: str, write: bool) -> None:
        """Raise ``AccessDenied`` unless a request with this key (or none) from this client may read or write."""
        hashes = self.key_hashes()
        if not hashes:
            if write and not is_loopback(client_host):
                raise AccessDenied(403, "no API keys are configured, so writes are only accepted from this machine")
            return
        if not write and not self.settings.read_requires_key:
            return
        if key is None:
            raise AccessDenied(401, "an API key is required (Authorization: Bearer <key>)")
        presented = hash_key(key)
        if not any(hmac.compare_digest(presented, h) for h in hashes):
            raise AccessDenied(403, "this API key is not valid")

    @property
    def auth_mode(self) -> str:
        if not self.key_hashes():
            return "no keys configured: writes only from loopback clients"
        return "api keys: required for writes" + (" and reads" if self.settings.read_requires_key else "")

    # ------------------------------------------------------------------ media URLs
    def media_urls_signed(self) -> bool:
        """Whether reads need a key, so that handed-out media URLs must carry a signature."""
        return self.settings.read_requires_key and bool(self.key_hashes())

    def media_secret(self) -> bytes:
        """The signing secret, created once per database (the first API process to need it stores it)."""
        if self._media_secret is None:
            with self.sessions() as s:
                value = s.get(Meta, MEDIA_SECRET_KEY)
                if value is None:
                    s.add(Meta(key=MEDIA_SECRET_KEY, value=secrets.token_hex(32)))
                    try:
                        s.commit()
                    except IntegrityError:  # another process stored one first: use that
                        s.rollback()
                    value = s.get(Meta, MEDIA_SECRET_KEY, populate_existing=True)
                assert value is not None
                self._media_secret = bytes.fromhex(value.value)
        return self._media_secret

    def _signature(self, video_id: int, content_hash: str, exp: int) -> str:
        message = f"{video_id}:{content_hash}:{exp}".encode()
        return hmac.new(self.media_secret(), message, hashlib.sha256).hexdigest()

    def content_hashes(self, video_ids: Iterable[int]) -> dict[int, str]:
        """What signed media URLs are bound to, for many videos in one query."""
        ids = set(video_ids)
        if not ids:
            return {}
        with self.sessions() as s:
            return {int(i): str(h) for i, h in s.execute(select(Video.id, Video.content_hash)
                                                          .where(Video.id.in_(ids))).all()}

    def media_url(self, video_id: int, kind: str, content_hash: str) -> str:
        """``/v1/videos/{id}/thumbnail`` or ``/media``, signed when reads need a key."""
        url = f"/v1/videos/{video_id}/{kind}"
        if not self.media_urls_signed():
            return url
        exp = int(time.time()) + self.settings.media_url_ttl_s
        return f"{url}?exp={exp}&sig={self._signature(video_id, content_hash, exp)}"

    def media_signature_valid(self, video_id: int, exp: int | None, sig: str | None) -> bool:
        if exp is None or sig is None or exp < time.time() or not sig.isascii():
            return False
        content_hash = self.content_hashes([video_id]).get(video_id)
        if content_hash is None:
            return False
        return hmac.compare_digest(sig.encode(), self._signature(video_id, content_hash, exp).encode())
