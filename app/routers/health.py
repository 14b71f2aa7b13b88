"""Liveness, readiness (which model mode is loaded and why) and Prometheus metrics.

Only liveness is open to everyone; readiness and metrics follow the read rule (they show counts and modes)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import func, select

from indexer.enums import VideoStatus
from indexer.storage.db import Video

from ..deps import ReadState
from ..schemas import Health, Ready

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health)
async def healthz() -> Health:  # async: liveness never waits behind searches in the thread pool
    return Health(status="ok")


@router.get("/readyz", response_model=Ready)
def readyz(state: ReadState) -> Ready:
    status = state.services.encoder.status()
    with state.services.sessions() as s:
        videos = s.scalar(select(func.count()).select_from(Video).where(Video.status == VideoStatus.INDEXED)) or 0
    return Ready(ready=True, mode=status.mode, reason=status.reason, model=status.details, videos=videos,
                 queue_depth=state.queue.pending(), worker=state.worker_mode, auth=state.guard.auth_mode)


@router.get("/metrics", response_class=PlainTextResponse)
def metrics(request: Request, _: ReadState) -> PlainTextResponse:  # scrapers send the key like any reader
    return PlainTextResponse(generate_latest(request.app.state.metrics.registry), media_type=CONTENT_TYPE_LATEST)
