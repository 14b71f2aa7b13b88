"""Dependencies shared by the routers: the application state and the API-key rules.

Rules: once any key is configured (``SAVE_SEARCH_API_KEYS`` or keys stored hashed in the database), every
write needs one, and reads too when ``SAVE_SEARCH_READ_REQUIRES_KEY`` is set. With no keys at all (the
embedded default) writes are accepted from loopback clients only.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from sqlalchemy import select

from indexer.db import ApiKey
from indexer.jobs import JobQueue
from indexer.search import SearchService
from indexer.settings import Settings
from indexer.worker import Services


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_key() -> str:
    return "ss_" + secrets.token_urlsafe(32)


@dataclass
class AppState:
    settings: Settings
    services: Services
    search: SearchService
    queue: JobQueue
    worker_mode: str  # embedded | external
    _key_cache: tuple[float, set[str]] = field(default=(0.0, set()))
    _lock: threading.Lock = field(default_factory=threading.Lock)

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


ReadState = Annotated[AppState, Depends(require_read)]
WriteState = Annotated[AppState, Depends(require_write)]
