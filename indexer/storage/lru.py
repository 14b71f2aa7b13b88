"""A thread-safe LRU map bounded by the bytes of its values: what the per-process caches of the search path share
(frame features, ``indexer.storage.frame_cache``; passages and words, ``indexer.search.passage_cache``)."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class SizedLRU(Generic[K, V]):
    """At most ``max_bytes`` of values, ``size(value)`` bytes each (fixed while the value is stored); the least
    recently used go first, and a value larger than the whole budget is never stored. ``hits`` and ``misses`` count
    what ``get_many`` found and did not."""

    def __init__(self, max_bytes: int, size: Callable[[V], int]) -> None:
        self.max_bytes = int(max_bytes)
        self._size = size
        self._entries: OrderedDict[K, tuple[int, V]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def nbytes(self) -> int:
        return self._bytes

    def get_many(self, keys: Iterable[K], valid: Callable[[K, V], bool]) -> dict[K, V]:
        """The stored values of ``keys`` for which ``valid(key, value)`` holds (each becomes the most recent)."""
        found: dict[K, V] = {}
        asked = 0
        with self._lock:
            for key in keys:
                asked += 1
                entry = self._entries.get(key)
                if entry is not None and valid(key, entry[1]):
                    self._entries.move_to_end(key)
                    found[key] = entry[1]
            self.hits += len(found)
            self.misses += asked - len(found)
        return found

    def put_many(self, items: Iterable[tuple[K, V]]) -> None:
        with self._lock:
            for key, value in items:
                self._drop(key)
                size = self._size(value)
                if size > self.max_bytes:
                    continue
                self._entries[key] = (size, value)
                self._bytes += size
                while self._bytes > self.max_bytes:
                    _, (dropped, _) = self._entries.popitem(last=False)
                    self._bytes -= dropped

    def drop(self, key: K) -> None:
        with self._lock:
            self._drop(key)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._bytes = 0

    def _drop(self, key: K) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            self._bytes -= entry[0]
