"""Prometheus metrics: request latency histograms (by route template), ingest counters and queue depth.

Ingest outcomes and queue depth are read from the database at scrape time, so they are right whichever
process (embedded or separate worker) did the work.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from sqlalchemy import func, select
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from indexer.enums import JobStatus
from indexer.storage.catalog import VectorCatalog
from indexer.storage.db import JobItem, Video

from .admission import SearchAdmission


class IngestCollector:
    def __init__(self, sessions) -> None:
        self.sessions = sessions

    def collect(self) -> Iterator:
        with self.sessions() as s:
            items = dict(s.execute(select(JobItem.status, func.count()).group_by(JobItem.status)).all())
            failures = s.execute(select(JobItem.error_kind, func.count()).where(JobItem.status == JobStatus.FAILED)
                                 .group_by(JobItem.error_kind)).all()
            videos = dict(s.execute(select(Video.status, func.count()).group_by(Video.status)).all())
        done = CounterMetricFamily("save_ingest_items_done", "Job items indexed (including known duplicates)")
        done.add_metric([], items.get(JobStatus.DONE, 0))
        yield done
        failed = CounterMetricFamily("save_ingest_items_failed", "Job items that failed, by error kind",
                                     labels=["kind"])
        for kind, count in failures:
            failed.add_metric([kind or "unknown"], count)
        yield failed
        depth = GaugeMetricFamily("save_ingest_queue_depth", "Job items queued or running")
        depth.add_metric([], items.get(JobStatus.QUEUED, 0) + items.get(JobStatus.RUNNING, 0))
        yield depth
        vids = GaugeMetricFamily("save_videos", "Videos by status", labels=["status"])
        for st, count in videos.items():
            vids.add_metric([st], count)
        yield vids


class IndexCollector:
    """Vectors in each search index this process serves, labelled by the embedding space (model version) they
    were made with: next to ``save_videos`` it shows whether the index has caught up with the database."""

    def __init__(self, catalog: VectorCatalog) -> None:
        self.catalog = catalog

    def collect(self) -> Iterator:
        vectors = GaugeMetricFamily("save_index_vectors", "Vectors in each search index, by model version",
                                    labels=["index", "model_version"])
        for name, (space, count) in self.catalog.sizes().items():
            vectors.add_metric([name, space or "none"], count)
        yield vectors


class AdmissionCollector:
    """Searches waiting for a slot and searches turned away (503): the signs that the API is saturated."""

    def __init__(self, admission: SearchAdmission) -> None:
        self.admission = admission

    def collect(self) -> Iterator:
        waiting = GaugeMetricFamily("save_search_waiting", "Searches waiting for a slot")
        waiting.add_metric([], self.admission.waiting)
        yield waiting
        rejected = CounterMetricFamily("save_search_rejected", "Searches answered 503 (queue full or wait too long)")
        rejected.add_metric([], self.admission.rejected)
        yield rejected


class Metrics:
    def __init__(self, sessions, catalog: VectorCatalog, admission: SearchAdmission) -> None:
        self.registry = CollectorRegistry()
        self.latency = Histogram("save_http_request_duration_seconds", "HTTP request latency",
                                 ["method", "route", "status"], registry=self.registry,
                                 buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
        self.registry.register(IngestCollector(sessions))
        self.registry.register(IndexCollector(catalog))
        self.registry.register(AdmissionCollector(admission))


KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def route_label(scope: Scope) -> str:
    """The template of the route that served the request (``/v1/videos/{video_id}``), never the raw URL: a label
    per URL would make one series per id a client invents. The router records the matched route in the scope."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else "unmatched"


class MetricsMiddleware:
    """Latency by method, route template and status; a bounded set of series whatever clients send."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            metrics: Metrics | None = getattr(scope["app"].state, "metrics", None)
            if metrics is not None:
                method = scope["method"] if scope["method"] in KNOWN_METHODS else "other"
                metrics.latency.labels(method, route_label(scope), str(status)).observe(time.perf_counter() - start)
