"""The FAISS backend of ``VectorCatalog``: indexes published as snapshot files that readers reload when the
published version changes, frame features in ``indexer.storage.shards.FeatureStore`` files. One host, or a
shared volume.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from sqlalchemy import func, select
from sqlalchemy.orm import sessionmaker

from indexer.storage.faiss_index import VectorIndex, choose_index_type, ivfpq_outgrown
from indexer.storage.shards import FeatureStore
from indexer.storage.snapshots import current_version, load_snapshot, save_snapshot

if TYPE_CHECKING:
    pass
from indexer.storage.catalog import SyncReport, VectorCatalog, fetch_vectors

log = logging.getLogger(__name__)


class ManagedIndex:
    """One FAISS index plus where it is published and which embedding space it holds."""

    def __init__(self, folder: Path, dim: int, space: str, requested_type: str = "auto") -> None:
        self.folder = folder
        self.dim = dim
        self.space = space  # e.g. the SAVE model version, or the sentence encoder's name
        self.requested_type = requested_type
        self.index: VectorIndex | None = None
        self.version: int | None = None
        self._pending: VectorIndex | None = None  # built by prepare(), swapped in by sync()

    def load(self) -> None:
        """Load the published snapshot if it holds our embedding space, else start empty."""
        self.folder.mkdir(parents=True, exist_ok=True)
        loaded = load_snapshot(self.folder)
        if loaded is not None:
            index, manifest = loaded
            if manifest.get("model_version") == self.space and index.dim == self.dim:
                self.index, self.version = index, manifest.get("version")
                return
            log.warning("index at %s holds %r, not %r: it will be rebuilt", self.folder,
                        manifest.get("model_version"), self.space)
        self.index = VectorIndex.create(self.dim, "flat")
        self.version = None

    def reload_if_changed(self) -> bool:
        """For readers: pick up a snapshot another process published."""
        published = current_version(self.folder)
        if published is not None and published != self.version:
            self.load()
            return True
        return False

    def _needs_rebuild(self, index: VectorIndex, n: int) -> bool:
        """The collection outgrew the index type, or an IVF-PQ index its trained lists (``ivfpq_outgrown``)."""
        wanted = choose_index_type(n, self.requested_type)
        return wanted != index.kind or (wanted == "ivfpq" and ivfpq_outgrown(index.params()["nlist"], n))

    def _build(self, rows: list[tuple[int, np.ndarray]], n: int) -> VectorIndex:
        ids = np.array([i for i, _ in rows], dtype=np.int64)
        vecs = np.stack([v for _, v in rows]).astype(np.float32) if rows else np.zeros((0, self.dim), np.float32)
        return VectorIndex.create(self.dim, choose_index_type(n, self.requested_type), vectors=vecs, ids=ids)

    def prepare(self, count: int, fetch_all: Callable[[], list[tuple[int, np.ndarray]]]) -> bool:
        """Build a replacement index now if ``sync`` would have to rebuild (minutes of k-means at scale), so that
        the caller can do it without holding the lock searches wait for; ``sync`` swaps it in."""
        index = self.index
        if index is None or not self._needs_rebuild(index, count):
            return False
        rows = fetch_all()
        self._pending = self._build(rows, len(rows))
        log.info("prepared a %s index for %s over %d vectors", self._pending.kind, self.folder.name, len(rows))
        return True

    def sync(self, db_ids: set[int], fetch: Callable[[set[int] | None], list[tuple[int, np.ndarray]]]) -> SyncReport:
        """Make the index hold exactly ``db_ids``. ``fetch(ids)`` returns (id, vector) rows for those ids
        (``None``: all of them). When the collection outgrows the index type, or an IVF-PQ index its trained
        lists (``ivfpq_outgrown``), the index is rebuilt (and retrained) from all vectors, unless ``prepare``
        built the replacement already (then only the changes since are applied to it)."""
        assert self.index is not None
        pending, self._pending = self._pending, None
        if pending is not None and not self._needs_rebuild(pending, len(db_ids)):
            self.index = pending
        if self._needs_rebuild(self.index, len(db_ids)):
            outgrown = self.index.kind == "ivfpq" == choose_index_type(len(db_ids), self.requested_type)
            rows = fetch(None)
            self.index = self._build(rows, len(db_ids))
            log.info("rebuilt %s as a %s index over %d vectors%s", self.folder.name, self.index.kind, len(rows),
                     " (retrained: the collection outgrew its IVF lists)" if outgrown else "")
            return SyncReport(added=len(rows))
        have = set(self.index.ids().tolist())
        report = SyncReport()
        extra = have - db_ids
        if extra:
            self.index.remove(np.fromiter(extra, dtype=np.int64))
            report.removed = len(extra)
        missing = db_ids - have
        if missing:
            rows = fetch(missing)
            self.index.add(np.array([i for i, _ in rows], dtype=np.int64),
                           np.stack([v for _, v in rows]).astype(np.float32))
            report.added = len(rows)
        if self.index.tombstones > 0.2 * max(1, len(self.index)):  # HNSW cannot delete: rebuild now and then
            self.index.compact()
        return report

    def publish(self) -> int:
        assert self.index is not None
        self.version = save_snapshot(self.index, self.folder, self.space)
        return self.version


class FaissCatalog(VectorCatalog):
    """FAISS indexes published as snapshot files under ``index_dir``, frame features in shard files under
    ``features_dir``: every process that searches needs both folders (one host, or a shared volume)."""

    def __init__(self, index_dir: Path, sessions: sessionmaker, model_version: str | None, video_dim: int | None,
                 passage_space: str, passage_dim: int, index_type: str = "auto",
                 features_dir: Path | None = None) -> None:
        self.sessions = sessions
        self.index_dir = index_dir
        self.features_dir = features_dir or index_dir.parent / "features"
        self.model_version = model_version if model_version and video_dim else None
        self.videos = (ManagedIndex(index_dir / "videos", video_dim, model_version, index_type)
                       if model_version and video_dim else None)
        self.passages = ManagedIndex(index_dir / "passages", passage_dim, passage_space, index_type)

    def indexes(self) -> list[ManagedIndex]:
        """The indexes this catalog keeps (no video index in speech mode)."""
        return [m for m in (self.videos, self.passages) if m is not None]

    def _managed(self, name: str) -> ManagedIndex:
        return self.videos if name == "videos" and self.videos is not None else self.passages

    def load(self) -> None:
        for managed in self.indexes():
            managed.load()

    def reload_if_changed(self) -> bool:
        changed = self.passages.reload_if_changed()
        if self.videos is not None:
            changed = self.videos.reload_if_changed() or changed
        return changed

    def sizes(self) -> dict[str, tuple[str | None, int]]:
        return {m.folder.name: (m.space, len(m.index) if m.index is not None else 0) for m in self.indexes()}

    def search_videos(self, query: np.ndarray, k: int) -> list[int]:
        index = self.videos.index if self.videos is not None else None
        if index is None or not len(index):
            return []
        _, ids = index.search(np.asarray(query, dtype=np.float32).reshape(1, -1), min(k, len(index)))
        return [int(i) for i in ids[0] if i >= 0]

    def search_passages(self, query: np.ndarray, k: int) -> dict[int, float]:
        index = self.passages.index
        if index is None or not len(index):
            return {}
        scores, ids = index.search(np.asarray(query, dtype=np.float32).reshape(1, -1), min(k, len(index)))
        return {int(i): float(sc) for sc, i in zip(scores[0], ids[0], strict=True) if i >= 0}

    def open_features(self, frames: int, dim: int, owner: str) -> FeatureStore:
        return FeatureStore(self.features_dir, frames, dim, owner=owner)

    def sync(self) -> dict[str, SyncReport]:
        """Reconcile both in-memory indexes with the database; ``sync_and_publish`` also publishes them."""
        reports: dict[str, SyncReport] = {}
        with self.sessions() as s:
            for name, id_col, vector_col, belongs in self._sources():
                db_ids = set(s.scalars(select(id_col).where(belongs)))
                managed = self._managed(name)
                def fetch(ids: set[int] | None, c: Any = id_col, v: Any = vector_col,
                          b: Any = belongs) -> list[tuple[int, np.ndarray]]:
                    return fetch_vectors(s, c, v, b, ids)

                reports[name] = managed.sync(db_ids, fetch)
                reports[name].count = len(managed.index) if managed.index is not None else 0
        return reports

    def prepare(self) -> bool:
        """Build, without any lock, the indexes the next ``sync`` would have to rebuild (see
        ``ManagedIndex.prepare``); the worker calls it before taking the index lock. Costs one count per index
        (a scan, like sync's id scan: see docs/scale-out.md)."""
        prepared = False
        with self.sessions() as s:
            for name, id_col, vector_col, belongs in self._sources():
                count = s.scalar(select(func.count()).select_from(id_col.table).where(belongs)) or 0
                def fetch_all(c: Any = id_col, v: Any = vector_col, b: Any = belongs) -> list[tuple[int, np.ndarray]]:
                    return fetch_vectors(s, c, v, b, None)

                prepared |= self._managed(name).prepare(count, fetch_all)
        return prepared

    def publish(self) -> None:
        if self.videos is not None:
            self.videos.publish()
        self.passages.publish()

    def sync_and_publish(self) -> dict[str, SyncReport]:
        """Sync from the database and publish, as one step across processes: whoever publishes last also
        synced last, so a snapshot never drops a video another worker committed in between."""
        self.index_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.index_dir / ".sync.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            self.reload_if_changed()  # start from what others published (cheap when nothing changed)
            reports = self.sync()
            self.publish()
            return reports
        finally:
            os.close(fd)

    def repair(self) -> dict[str, SyncReport]:
        return self.sync_and_publish()

    def index_videos(self, video_ids: Iterable[int]) -> None:
        """A snapshot holds everything: the whole reconciliation is published (one lock for all workers)."""
        self.sync_and_publish()

    def remove_videos(self, video_ids: Iterable[int]) -> None:
        self.sync_and_publish()

    def rebuild(self) -> dict[str, int]:
        for managed in self.indexes():
            shutil.rmtree(managed.folder, ignore_errors=True)
            managed.load()
        return {name: report.count for name, report in self.sync_and_publish().items()}
