"""Dependencies shared by the routers: the application state and the access rules as FastAPI dependencies (the
rules themselves are ``app.security``)."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, HTTPException, Query, Request

from indexer.ingest.jobs import JobQueue
from indexer.search.service import SearchService
from indexer.services import Services
from indexer.settings import Settings

from .admission import SearchAdmission
from .media import MediaLinks
from .schemas import DbId
from .security import AccessDenied, Guard


@dataclass
class AppState:
    settings: Settings
    services: Services
    search: SearchService
    queue: JobQueue
    worker_mode: str  # embedded | external
    admission: SearchAdmission
    guard: Guard
    links: MediaLinks  # the URLs of thumbnails and media files (app/media.py)

    @property
    def index_lock(self) -> threading.RLock:
        return self.services.index_lock


def get_state(request: Request) -> AppState:
    return request.app.state.save


def _presented_key(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    if header.lower().startswith("bearer "):
        return header[7:].strip() or None
    return request.headers.get("x-api-key") or None


def _check(request: Request, state: AppState, write: bool) -> None:
    try:
        state.guard.check(_presented_key(request), request.client.host if request.client else "", write)
    except AccessDenied as exc:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        raise HTTPException(exc.status, exc.reason, headers=headers) from None


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
    guard = state.guard
    if not guard.media_urls_signed() or not guard.media_signature_valid(video_id, exp, sig):
        _check(request, state, write=False)
    return state


ReadState = Annotated[AppState, Depends(require_read)]
MediaReadState = Annotated[AppState, Depends(require_media_read)]
WriteState = Annotated[AppState, Depends(require_write)]
