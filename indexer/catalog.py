"""The search indexes, kept in agreement with the database (the source of truth), behind one interface.

What search needs besides the database: the pooled SAVE video vectors (ids = video ids), the sentence embeddings
of transcript passages (ids = passage ids, see ``indexer.passages``) and each video's per-frame features for the
exact re-scoring. ``VectorCatalog`` is that interface: candidate generation (``search_videos``,
``search_passages``), the frame features (``open_features``), writes after a commit or a delete
(``index_videos``, ``remove_videos``) and repair (``sync``: adds what the database has and the index lacks,
removes what the database no longer has, so crash repair and normal updates are the same operation).
Scoring, fusion and moments (``indexer.search``) are shared by every backend.

Two backends (``make_catalog`` picks by ``Settings.vector_store``):
- ``FaissCatalog`` (default, one host or a shared volume): FAISS indexes published as atomic snapshot files
  (readers reload when the published version changes), frame features in ``indexer.store.FeatureStore`` shards.
- ``indexer.milvus_store.MilvusCatalog``: everything in Milvus collections, written right after each commit;
  no host needs another host's disk.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
from sqlalchemy import func, select
from sqlalchemy.orm import sessionmaker

from .db import Passage, Video
from .store import (
    FeatureRef,
    FeatureStore,
    VectorIndex,
    choose_index_type,
    current_version,
    ivfpq_outgrown,
    load_snapshot,
    save_snapshot,
)

if TYPE_CHECKING:
    from .settings import Settings

log = logging.getLogger(__name__)


def to_blob(vector: np.ndarray) -> bytes:
    return np.asarray(vector, dtype=np.float16).tobytes()


def from_blob(blob: bytes) -> np.ndarray:
    return np.frombuffer(blob, dtype=np.float16).astype(np.float32)


@dataclass
class SyncReport:
    added: int = 0
    removed: int = 0
    count: int = 0  # entries in the index after the sync (= rows of the database that belong in it)
    missing: int = 0  # entries the database cannot rebuild (frame features: `save-search reindex` re-encodes)


class FeatureStorage(Protocol):
    """Where each video's per-frame features (fp16 [T, D]) and frame mask live: what exact re-scoring reads.
    ``append`` runs before the database commit that stores the returned reference (an unreferenced record is
    harmless); ``read_many`` raises ``indexer.store.FeatureStoreError`` for a record it cannot serve."""

    def append(self, video_id: int, frames: np.ndarray, mask: np.ndarray) -> FeatureRef: ...

    def read_many(self, refs: Iterable[FeatureRef]) -> tuple[np.ndarray, np.ndarray]: ...


class VectorCatalog(ABC):
    """The video and passage indexes of one collection plus the frame features, for one embedding space each
    (``model_version`` for videos, ``passage_space`` for passages). Thread-safe for concurrent searches; callers
    hold ``Services.index_lock`` around ``repair``, ``index_videos`` and ``remove_videos``."""

    model_version: str | None
    sessions: sessionmaker
    # The indexes live in this process's memory, where an embedded worker changes them: searches hold
    # ``Services.index_lock`` (a remote store serves concurrent searches without it).
    in_process: bool = True

    @abstractmethod
    def load(self) -> None:
        """Open (or create) the indexes."""

    @abstractmethod
    def reload_if_changed(self) -> bool:
        """For readers: pick up what other processes wrote, if this backend caches anything."""

    @abstractmethod
    def sizes(self) -> dict[str, tuple[str | None, int]]:
        """Index name -> (embedding space, entries), for metrics and ``reindex``."""

    @abstractmethod
    def search_videos(self, query: np.ndarray, k: int) -> list[int]:
        """Up to k video ids by cosine of the pooled vectors (the visual candidates), best first."""

    @abstractmethod
    def search_passages(self, query: np.ndarray, k: int) -> dict[int, float]:
        """Up to k passage ids -> cosine with the query's sentence embedding."""

    @abstractmethod
    def open_features(self, frames: int, dim: int, owner: str) -> FeatureStorage:
        """The frame features; ``owner`` names the writing process (unique among live writers)."""

    @abstractmethod
    def repair(self) -> dict[str, SyncReport]:
        """Reconcile every index with the database, both ways, and make the result visible to every process: the
        start-up repair and ``save-search reindex --verify``."""

    def prepare(self) -> bool:
        """Build slow replacements (k-means) before ``repair`` takes the lock searches wait for; True if it did."""
        return False

    @abstractmethod
    def index_videos(self, video_ids: Iterable[int]) -> None:
        """Make committed videos (and their passages) searchable: called right after the database commit."""

    @abstractmethod
    def remove_videos(self, video_ids: Iterable[int]) -> None:
        """Drop deleted videos (and their passages): called right after the delete's commit."""

    @abstractmethod
    def rebuild(self) -> dict[str, int]:
        """Drop the index entries (never the frame features) and rebuild them from the database."""

    def _sources(self) -> list[tuple[str, Any, Any, Any]]:
        """(index name, id column, vector column, which rows belong in it) of each index, from the database."""
        sources: list[tuple[str, Any, Any, Any]] = []
        if self.model_version is not None:
            sources.append(("videos", Video.id, Video.pooled,
                            (Video.model_version == self.model_version) & Video.pooled.is_not(None)))
        sources.append(("passages", Passage.id, Passage.embedding, Passage.embedding.is_not(None)))
        return sources


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
                reports[name] = managed.sync(
                    db_ids, lambda ids, c=id_col, v=vector_col, b=belongs: fetch_vectors(s, c, v, b, ids))
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
                prepared |= self._managed(name).prepare(
                    count, lambda c=id_col, v=vector_col, b=belongs: fetch_vectors(s, c, v, b, None))
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


def make_catalog(settings: Settings, sessions: sessionmaker, model_version: str | None, video_dim: int | None,
                 passage_space: str, passage_dim: int) -> VectorCatalog:
    """The catalog ``settings.vector_store`` names: ``faiss`` (files under the home folder) or ``milvus``."""
    if settings.vector_store == "milvus":
        from .milvus_store import MilvusCatalog

        return MilvusCatalog.from_settings(settings, sessions, model_version, video_dim, passage_space, passage_dim)
    return FaissCatalog(settings.index_dir, sessions, model_version, video_dim, passage_space, passage_dim,
                        settings.index_type, settings.features_dir)


def fetch_vectors(s, id_col, blob_col, condition, ids: set[int] | None,
                  chunk: int = 5000) -> list[tuple[int, np.ndarray]]:
    """(id, vector) rows, in chunks so a large id set never makes one giant IN clause."""
    if ids is None:
        return [(i, from_blob(b)) for i, b in s.execute(select(id_col, blob_col).where(condition)).all()]
    wanted = sorted(ids)
    rows: list[tuple[int, np.ndarray]] = []
    for start in range(0, len(wanted), chunk):
        part = wanted[start:start + chunk]
        rows += [(i, from_blob(b)) for i, b in s.execute(select(id_col, blob_col).where(id_col.in_(part))).all()]
    return rows
