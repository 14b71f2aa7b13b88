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
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Match

from indexer.db import JobItem, Video


class IngestCollector:
    def __init__(self, sessions) -> None:
        self.sessions = sessions

    def collect(self) -> Iterator:
        with self.sessions() as s:
            items = dict(s.execute(select(JobItem.status, func.count()).group_by(JobItem.status)).all())
            failures = s.execute(select(JobItem.error_kind, func.count()).where(JobItem.status == "failed")
                                 .group_by(JobItem.error_kind)).all()
            videos = dict(s.execute(select(Video.status, func.count()).group_by(Video.status)).all())
        done = CounterMetricFamily("save_ingest_items_done", "Job items indexed (including known duplicates)")
        done.add_metric([], items.get("done", 0))
        yield done
        failed = CounterMetricFamily("save_ingest_items_failed", "Job items that failed, by error kind",
                                     labels=["kind"])
        for kind, count in failures:
            failed.add_metric([kind or "unknown"], count)
        yield failed
        depth = GaugeMetricFamily("save_ingest_queue_depth", "Job items queued or running")
        depth.add_metric([], items.get("queued", 0) + items.get("running", 0))
        yield depth
        vids = GaugeMetricFamily("save_videos", "Videos by status", labels=["status"])
        for st, count in videos.items():
            vids.add_metric([st], count)
        yield vids


class Metrics:
    def __init__(self, sessions) -> None:
        self.registry = CollectorRegistry()
        self.latency = Histogram("save_http_request_duration_seconds", "HTTP request latency",
                                 ["method", "route", "status"], registry=self.registry,
                                 buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
        self.registry.register(IngestCollector(sessions))


def _route_template(request: Request) -> str:
    for route in request.app.router.routes:
        match, _ = route.matches(request.scope)
        if match == Match.FULL:
            return getattr(route, "path", request.url.path)
    return "unmatched"


class MetricsMiddleware(BaseHTTPMiddleware):
    async def dispatch(self, request: Request, call_next) -> Response:
        start = time.perf_counter()
        status = 500
        try:
            response = await call_next(request)
            status = response.status_code
            return response
        finally:
            metrics: Metrics | None = getattr(request.app.state, "metrics", None)
            if metrics is not None:
                metrics.latency.labels(request.method, _route_template(request), str(status)).observe(
                    time.perf_counter() - start)
