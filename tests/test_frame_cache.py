"""The read-through frame cache (``indexer.storage.frame_cache.CachedFeatures``) returns exactly what the store it
fronts would, asks that store only for what it does not hold, and stays within its byte budget."""

from __future__ import annotations

import numpy as np
import pytest

from indexer.storage.frame_cache import ENTRY_OVERHEAD, CachedFeatures
from indexer.storage.shards import FeatureRef, FeatureStoreError

T, D = 12, 8
ENTRY = T * D * 2 + T + ENTRY_OVERHEAD


class Store:
    """A FeatureStorage in memory that records what it was asked."""

    def __init__(self) -> None:
        self.records: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self.asked: list[list[int]] = []

    def append(self, video_id: int, frames: np.ndarray, mask: np.ndarray, session=None) -> FeatureRef:
        self.records[video_id] = (frames.astype(np.float16), mask.astype(np.uint8))
        return FeatureRef("mem", 0, video_id)

    def read_many(self, refs):
        refs = list(refs)
        self.asked.append([r.video_id for r in refs])
        if any(r.video_id not in self.records for r in refs):
            raise FeatureStoreError("missing")
        frames = np.stack([self.records[r.video_id][0] for r in refs]) if refs else np.empty((0, T, D), np.float16)
        masks = np.stack([self.records[r.video_id][1] for r in refs]) if refs else np.empty((0, T), np.uint8)
        return frames, masks


def _store(n: int = 10) -> Store:
    store = Store()
    rng = np.random.default_rng(0)
    for v in range(1, n + 1):
        store.append(v, rng.standard_normal((T, D)), rng.random(T) < 0.8)
    return store


def refs(*ids: int) -> list[FeatureRef]:
    return [FeatureRef("mem", 0, v) for v in ids]


def test_reads_are_exact_in_order_and_only_misses_reach_the_store() -> None:
    store = _store()
    cache = CachedFeatures(store, "v1", 100 * ENTRY)
    first = cache.read_many(refs(3, 1, 3))
    second = cache.read_many(refs(1, 7, 3))
    for got, ids in ((first, (3, 1, 3)), (second, (1, 7, 3))):
        want = store.read_many(refs(*ids))
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_array_equal(got[1], want[1])
    assert store.asked[:2] == [[3, 1], [7]]  # each missing video asked once
    assert (cache.hits, cache.misses) == (2, 4)


def test_the_byte_budget_evicts_the_least_recently_used() -> None:
    store = _store()
    cache = CachedFeatures(store, "v1", 3 * ENTRY)
    cache.read_many(refs(1, 2, 3))
    cache.read_many(refs(1))  # 1 is now the most recent
    cache.read_many(refs(4))  # evicts 2
    assert len(cache) == 3 and cache.nbytes == 3 * ENTRY
    store.asked.clear()
    cache.read_many(refs(1, 3, 4, 2))
    assert store.asked == [[2]]


def test_append_replaces_the_entry_and_spaces_are_apart() -> None:
    store = _store()
    cache = CachedFeatures(store, "v1", 100 * ENTRY)
    cache.read_many(refs(5))
    new = np.ones((T, D), np.float16)
    cache.append(5, new, np.ones(T, np.uint8))
    np.testing.assert_array_equal(cache.read_many(refs(5))[0][0], new)
    other = CachedFeatures(store, "v2", 100 * ENTRY)
    store.asked.clear()
    other.read_many(refs(5))
    assert store.asked == [[5]]  # another embedding space: its own entries


def test_a_missing_record_is_still_an_error_and_nothing_is_cached_for_it() -> None:
    cache = CachedFeatures(_store(), "v1", 100 * ENTRY)
    with pytest.raises(FeatureStoreError):
        cache.read_many(refs(1, 99))
    assert len(cache) == 0
    assert cache.read_many([])[0].shape[0] == 0


def test_an_entry_serves_only_the_write_it_was_read_from() -> None:
    """A video written again under the same id (re-encoded by another process, or a new video given a deleted one's
    id) has a new write tag in its ref (``FeatureRef.offset``): the cache reads it from the store, never the old."""
    store = _store()
    cache = CachedFeatures(store, "v1", 100 * ENTRY)
    old = cache.read_many([FeatureRef("db", 11, 3)])
    store.append(3, np.ones((T, D)), np.ones(T, bool))  # written again elsewhere: the cache was not told
    np.testing.assert_array_equal(cache.read_many([FeatureRef("db", 11, 3)])[0], old[0])  # same tag: the entry
    new = cache.read_many([FeatureRef("db", 12, 3)])
    np.testing.assert_array_equal(new[0][0], np.ones((T, D), np.float16))
    assert store.asked == [[3], [3]] and (cache.hits, cache.misses) == (1, 2)
    np.testing.assert_array_equal(cache.read_many([FeatureRef("db", 12, 3)])[0], new[0])  # the new one is cached
