"""A per-process read-through LRU cache of frame features in front of any ``FeatureStorage``.

Exact re-scoring reads the frame features (fp16 [T, D] and the frame mask) of up to 400 candidate videos per query.
Where they come from over the network (the Milvus ``frames`` collection, a database), a cache in the API process
serves the candidates that recent queries already read. Keyed by (embedding space, video id), and an entry serves
only a ref with the same ``offset``, which the network stores make a tag of each write (``write_tag``): a model
change is a new space; a video written again (re-encoded by any process, or a new video given a deleted one's id,
which SQLite does when the highest id was deleted) carries a new tag, so a stale entry is never served; a deleted
video's entry is only memory until it ages out (search never asks for a video the database no longer has).

What it buys depends on how often candidates repeat: ~12.3 kB per cached video (12 x 512 fp16), so 1 GiB holds
~85k videos; with candidates drawn uniformly from n videos the hit rate is about capacity / n, with popular
queries (the usual case) more. Numbers: BENCHMARKS.md, "Frames read for re-scoring on Milvus".
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterable

import numpy as np
from sqlalchemy.orm import Session

from indexer.storage.catalog import FeatureStorage
from indexer.storage.shards import FeatureRef, FeatureStore

ENTRY_OVERHEAD = 400  # bytes per entry besides the arrays' data (two ndarray headers, key tuple, LRU node), approx.


class CachedFeatures:
    """``FeatureStorage`` that serves repeated reads from memory (at most ``max_bytes``) and the rest from
    ``inner``, in one ``inner.read_many`` call per read (each missing video asked once). Thread-safe; ``inner``'s
    own reads run unlocked."""

    def __init__(self, inner: FeatureStorage, space: str, max_bytes: int) -> None:
        self.inner, self.space, self.max_bytes = inner, space, int(max_bytes)
        self._entries: OrderedDict[tuple[str, int], tuple[int, np.ndarray, np.ndarray]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def nbytes(self) -> int:
        return self._bytes

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._bytes = 0

    def append(self, video_id: int, frames: np.ndarray, mask: np.ndarray, session: Session | None = None) -> FeatureRef:
        ref = self.inner.append(video_id, frames, mask, session=session)
        with self._lock:
            self._drop((self.space, int(video_id)))
        return ref

    def read_many(self, refs: Iterable[FeatureRef]) -> tuple[np.ndarray, np.ndarray]:
        refs = list(refs)
        if not refs:
            return self.inner.read_many([])
        found: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        wanted: dict[object, list[int]] = {}  # key (or position, for a ref without video id) -> positions
        with self._lock:
            for i, ref in enumerate(refs):
                key = (self.space, int(ref.video_id)) if ref.video_id is not None else None
                entry = self._entries.get(key) if key is not None else None
                if entry is None or key is None or entry[0] != ref.offset:
                    wanted.setdefault(key if key is not None else i, []).append(i)
                else:
                    self._entries.move_to_end(key)
                    found[i] = (entry[1], entry[2])
            self.hits += len(found)
            self.misses += len(refs) - len(found)
        if wanted:
            frames, masks = self.inner.read_many([refs[positions[0]] for positions in wanted.values()])
            with self._lock:
                for j, (wanted_key, positions) in enumerate(wanted.items()):
                    f, m = frames[j].copy(), masks[j].copy()  # own memory: never a view of a batch array
                    found.update((i, (f, m)) for i in positions)
                    if isinstance(wanted_key, tuple):
                        self._put(wanted_key, (int(refs[positions[0]].offset), f, m))
        return (np.stack([found[i][0] for i in range(len(refs))]),
                np.stack([found[i][1] for i in range(len(refs))]))

    def _put(self, key: tuple[str, int], entry: tuple[int, np.ndarray, np.ndarray]) -> None:
        self._drop(key)
        size = entry[1].nbytes + entry[2].nbytes + ENTRY_OVERHEAD
        if size > self.max_bytes:
            return
        self._entries[key] = entry
        self._bytes += size
        while self._bytes > self.max_bytes:
            _, (_, f, m) = self._entries.popitem(last=False)
            self._bytes -= f.nbytes + m.nbytes + ENTRY_OVERHEAD

    def _drop(self, key: tuple[str, int]) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            self._bytes -= entry[1].nbytes + entry[2].nbytes + ENTRY_OVERHEAD


def with_cache(store: FeatureStorage, space: str, max_mb: int) -> FeatureStorage:
    """``store`` behind a cache of ``max_mb`` MiB where its reads cross the network (the database table, Milvus);
    memory-mapped shard files (FAISS mode) are read as they are: the page cache already is their cache, and a
    copy per read would only add time. ``max_mb`` 0: no cache."""
    if max_mb <= 0 or isinstance(store, FeatureStore):
        return store
    return CachedFeatures(store, space, max_mb * 1024 * 1024)
