"""Query embeddings: a cache of recent ones, and a batcher so concurrent queries share one encoder pass.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future


class QueryCache:
    """Recent query embeddings: repeated and paged queries skip the text encoder."""

    def __init__(self, size: int = 1024) -> None:
        self.size = size
        self._data: dict[str, object] = {}
        self._lock = threading.Lock()

    def get(self, key: str):
        with self._lock:
            return self._data.get(key)

    def put(self, key: str, value) -> None:
        with self._lock:
            if len(self._data) >= self.size:
                self._data.pop(next(iter(self._data)))
            self._data[key] = value


class QueryBatcher:
    """Concurrent queries share one encoder pass: the first waiting request encodes everything that queued
    up behind it (up to ``max_batch``), so requests never serialise one by one on the model."""

    def __init__(self, encode: Callable[[list[str]], list], lock: threading.Lock, max_batch: int = 32) -> None:
        self._encode = encode
        self._lock = lock
        self._max_batch = max_batch
        self._pending: list[tuple[str, Future]] = []
        self._pending_lock = threading.Lock()

    def encode(self, query: str):
        future: Future = Future()
        with self._pending_lock:
            self._pending.append((query, future))
        while not future.done():
            if self._lock.acquire(timeout=0.05):
                try:
                    with self._pending_lock:
                        batch, self._pending = self._pending[:self._max_batch], self._pending[self._max_batch:]
                    if batch:
                        try:
                            results = self._encode([q for q, _ in batch])
                            for (_, f), r in zip(batch, results, strict=True):
                                f.set_result(r)
                        except Exception as exc:  # noqa: BLE001 - every waiter gets the error
                            for _, f in batch:
                                f.set_exception(exc)
                finally:
                    self._lock.release()
        return future.result()
