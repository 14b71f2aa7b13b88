"""The FastAPI application: thin routers over the indexer's services.

``create_app`` loads the models once (``Services``), optionally runs an embedded ingest worker in a thread
(the single-process default of ``save-search serve``), and serves the search page at ``/``.
"""

from __future__ import annotations

import gc
import logging
import threading
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from indexer.ingest.jobs import JobQueue
from indexer.ingest.worker import Worker
from indexer.search.service import SearchService
from indexer.services import Services
from indexer.settings import Settings

from .admission import SearchAdmission, search_concurrency
from .deps import AppState
from .media import MediaLinks
from .metrics import Metrics, MetricsMiddleware
from .routers import health, jobs, search, videos
from .security import Guard

log = logging.getLogger(__name__)
STATIC = Path(__file__).resolve().parent / "static"
API_VERSION = "1.0.0"


class InternalErrorMiddleware:
    """An unexpected exception becomes a logged 500 with a JSON body, and goes no further.

    Starlette's own handler answers 500 but re-raises, and the server then closes the connection, so a client
    on keep-alive sees a reset instead of the answer. Once a response has started nothing can be sent, and the
    exception is re-raised as before."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def send_tracked(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, send_tracked)
        except Exception:
            if started:
                raise
            log.exception("unhandled error in %s %s", scope["method"], scope["path"])
            response = JSONResponse(status_code=500, content={"detail": "internal server error (logged)"})
            await response(scope, receive, send)


def create_app(settings: Settings | None = None, embedded_worker: bool = True,
               services: Services | None = None) -> FastAPI:
    settings = settings or Settings.from_env()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        svc = services or Services(settings)
        queue = JobQueue.from_settings(svc.sessions, settings)
        admission = SearchAdmission(search_concurrency(settings), settings.search.queue,
                                    settings.search.queue_timeout_s)
        guard = Guard(svc.sessions, settings.api)
        state = AppState(settings, svc, SearchService(svc), queue, "embedded" if embedded_worker else "external",
                         admission, guard, MediaLinks(guard, svc.media, settings, svc.sessions))
        app.state.save = state
        app.state.metrics = Metrics(svc.sessions, svc.catalog, admission)
        # What is loaded by now (models, tokenizers, ORM metadata, indexes) lives as long as the process: out of the
        # cyclic garbage collector, whose full passes over it cost a search tens of ms at random (BENCHMARKS.md,
        # "Search latency end to end").
        gc.freeze()
        status = svc.encoder.status()
        log.info("model mode: %s (%s)", status.mode, status.reason)
        log.info("auth: %s", state.guard.auth_mode)
        stop = threading.Event()
        thread = None
        if embedded_worker:
            worker = Worker(svc)
            thread = threading.Thread(target=worker.run, kwargs={"stop": stop, "poll_s": 0.5}, name="ingest-worker",
                                      daemon=True)
            thread.start()
        try:
            yield
        finally:
            stop.set()
            if thread is not None:
                thread.join(timeout=30)
            gc.unfreeze()  # what this app held may be garbage now (an app per test, or a restart in-process)

    app = FastAPI(title="save-search", version=API_VERSION, lifespan=lifespan,
                  description="Text-to-video search that understands what is said (SAVE: CLIP frames, AST audio, "
                              "Whisper transcripts, gated fusion). Scores and modes are explained in the README.")
    app.add_middleware(InternalErrorMiddleware)
    app.add_middleware(MetricsMiddleware)  # outermost: it also counts the 500s of the middleware above

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        parts = []
        for err in exc.errors():
            where = ".".join(str(x) for x in err.get("loc", ()) if x not in ("query", "body"))
            parts.append(f"{where}: {err.get('msg')}" if where else str(err.get("msg")))
        return JSONResponse(status_code=422, content={"detail": "; ".join(parts) or "invalid request"})

    for router in (search.router, videos.router, jobs.router, health.router):
        app.include_router(router)
    app.mount("/static", StaticFiles(directory=STATIC, check_dir=False), name="static")

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    return app
