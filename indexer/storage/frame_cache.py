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

from collections.abc import Iterable

import numpy as np
from sqlalchemy.orm import Session

from indexer.storage.catalog import FeatureStorage
from indexer.storage.lru import SizedLRU
from indexer.storage.shards import FeatureRef, FeatureStore

ENTRY_OVERHEAD = 400  # bytes per entry besides the arrays' data (two ndarray headers, key tuple, LRU node), approx.


class CachedFeatures(SizedLRU[tuple[str, int], tuple[int, np.ndarray, np.ndarray]]):
    """``FeatureStorage`` that serves repeated reads from memory (at most ``max_bytes``) and the rest from
    ``inner``, in one ``inner.read_many`` call per read (each missing video asked once). Entries: (space, video id)
    -> (the ref's offset, the write's tag; frames; mask). Thread-safe; ``inner``'s own reads run unlocked."""

    def __init__(self, inner: FeatureStorage, space: str, max_bytes: int) -> None:
        super().__init__(max_bytes, lambda e: e[1].nbytes + e[2].nbytes + ENTRY_OVERHEAD)
        self.inner, self.space = inner, space

    def append(self, video_id: int, frames: np.ndarray, mask: np.ndarray, session: Session | None = None) -> FeatureRef:
        ref = self.inner.append(video_id, frames, mask, session=session)
        self.drop((self.space, int(video_id)))
        return ref

    def read_many(self, refs: Iterable[FeatureRef]) -> tuple[np.ndarray, np.ndarray]:
        refs = list(refs)
        if not refs:
            return self.inner.read_many([])
        keys = [(self.space, int(r.video_id)) for r in refs if r.video_id is not None]  # one per ref: hits count refs
        offsets = {(self.space, int(r.video_id)): r.offset for r in refs if r.video_id is not None}
        cached = self.get_many(keys, lambda key, entry: entry[0] == offsets[key])
        found: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        wanted: dict[object, list[int]] = {}  # key (or position, for a ref without video id) -> positions
        for i, ref in enumerate(refs):
            key = (self.space, int(ref.video_id)) if ref.video_id is not None else None
            entry = cached.get(key) if key is not None else None
            if entry is None:
                wanted.setdefault(key if key is not None else i, []).append(i)
            else:
                found[i] = (entry[1], entry[2])
        if wanted:
            frames, masks = self.inner.read_many([refs[positions[0]] for positions in wanted.values()])
            fresh = []
            for j, (wanted_key, positions) in enumerate(wanted.items()):
                f, m = frames[j].copy(), masks[j].copy()  # own memory: never a view of a batch array
                found.update((i, (f, m)) for i in positions)
                if isinstance(wanted_key, tuple):
                    fresh.append((wanted_key, (int(refs[positions[0]].offset), f, m)))
            self.put_many(fresh)
        return (np.stack([found[i][0] for i in range(len(refs))]),
                np.stack([found[i][1] for i in range(len(refs))]))


def with_cache(store: FeatureStorage, space: str, max_mb: int) -> FeatureStorage:
    """``store`` behind a cache of ``max_mb`` MiB where its reads cross the network (the database table, Milvus);
    memory-mapped shard files (FAISS mode) are read as they are: the page cache already is their cache, and a
    copy per read would only add time. ``max_mb`` 0: no cache."""
    if max_mb <= 0 or isinstance(store, FeatureStore):
        return store
    return CachedFeatures(store, space, max_mb * 1024 * 1024)
