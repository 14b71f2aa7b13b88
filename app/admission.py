"""Admission control for searches: a bounded number run at once, a bounded queue waits, the rest get a 503.

Why: a search is CPU work (query encoding, exact re-scoring). Run without a bound, 30 concurrent searchers on a
small box share every core with each other and with the ingest workers: everyone's latency grows with the
crowd and ingest stops. With a bound, searches in flight keep their speed, waiting ones queue for at most
``search_queue_timeout_s``, and the cores beyond ``search_concurrency`` stay free for ingest (the CPU-sharing
policy in the README). A client turned away gets ``503`` with ``Retry-After`` instead of a slow answer.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from fastapi import HTTPException

from indexer.settings import Settings


def search_concurrency(settings: Settings) -> int:
    """The configured number of searches at once, else half the cores this process may use (at least one): the
    other half is left to ingest."""
    if settings.search.concurrency > 0:
        return settings.search.concurrency
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // 2)


def limit_api_threads(settings: Settings) -> None:
    """For an API process without an embedded worker (called by its entry point, never by ``create_app``, which
    tests build many times in one process): torch's intra-op threads capped at the search share of the cores,
    so one query encoding cannot take the cores the workers ingest on."""
    import torch

    torch.set_num_threads(min(torch.get_num_threads(), search_concurrency(settings)))


class SearchAdmission:
    """At most ``concurrency`` holders at once; at most ``queue`` waiting, each for at most ``wait_s``."""

    def __init__(self, concurrency: int, queue: int, wait_s: float) -> None:
        self.concurrency, self.queue, self.wait_s = concurrency, queue, wait_s
        self._slots = threading.BoundedSemaphore(concurrency)
        self._lock = threading.Lock()
        self.waiting = 0
        self.rejected = 0

    def _overloaded(self, why: str) -> HTTPException:
        with self._lock:
            self.rejected += 1
        return HTTPException(503, f"the service is busy ({why}); retry shortly",
                             headers={"Retry-After": str(max(1, math.ceil(self.wait_s)))})

    @contextmanager
    def admit(self) -> Iterator[None]:
        if self._slots.acquire(blocking=False):  # the common case: a free slot, no queueing
            try:
                yield
            finally:
                self._slots.release()
            return
        with self._lock:
            full = self.waiting >= self.queue
            if not full:
                self.waiting += 1
        if full:
            raise self._overloaded(f"{self.queue} searches are already waiting")
        try:
            admitted = self._slots.acquire(timeout=self.wait_s)
        finally:
            with self._lock:
                self.waiting -= 1
        if not admitted:
            raise self._overloaded(f"no search slot became free within {self.wait_s:g} s")
        try:
            yield
        finally:
            self._slots.release()
