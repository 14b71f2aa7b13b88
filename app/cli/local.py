"""In-process answers in the API's shapes, built by the routers' own conversions, so a command prints the same JSON
with and without ``--server`` (``app/cli/remote.py`` is the other side)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from app.schemas import JobOut, SearchResponse
    from indexer.search.ranking import SearchPage
    from indexer.search.service import SearchService
    from indexer.settings import Settings


def search_response(service: SearchService, query: str, k: int, page: SearchPage) -> SearchResponse:
    """``GET /v1/search?q=query&k=k`` for a first page searched in this process: the router's result conversion
    (media URLs, signed or presigned as the API makes them; highlights; moments) and page token."""
    from app.admission import SearchAdmission
    from app.deps import AppState
    from app.media import MediaLinks
    from app.routers.search import _query_fingerprint, encode_page_token, to_api
    from app.schemas import SearchResponse
    from app.security import Guard
    from indexer.ingest.jobs import JobQueue

    services = service.services
    settings = services.settings
    guard = Guard(services.sessions, settings.api)
    # The state a router sees, for its conversion; nothing here is served or admitted.
    state = AppState(settings, services, service, JobQueue.from_settings(services.sessions, settings), "none",
                     SearchAdmission(1, 0, 0.0), guard, MediaLinks(guard, services.media, settings, services.sessions))
    rows = state.links.rows(r.video_id for r in page.results) if state.links.needs_rows() else {}
    more = len(page.results) < page.total_candidates
    token = encode_page_token(len(page.results), page.as_of, _query_fingerprint(query, k, None)) if more else None
    return SearchResponse(query=query, mode=page.mode, next_page_token=token,
                          results=[to_api(r, query, state, rows.get(r.video_id)) for r in page.results])


def job(settings: Settings, job_id: int, wait: bool, poll_s: float = 0.5) -> JobOut | None:
    """``GET /v1/jobs/{id}`` from the database (None: no such job); with ``wait``, once the job has finished (the
    workers, not this process, do the work)."""
    from app.routers.jobs import job_out
    from indexer.ingest.jobs import FINISHED_STATUSES, JobQueue
    from indexer.storage.db import make_engine, session_factory
    from indexer.storage.migrate import init_db

    init_db(settings.db_url)
    queue = JobQueue(session_factory(make_engine(settings.db_url)))
    while True:
        summary = queue.summary(job_id)
        if summary is None or not wait or summary.status in FINISHED_STATUSES:
            return None if summary is None else job_out(summary)
        time.sleep(poll_s)
