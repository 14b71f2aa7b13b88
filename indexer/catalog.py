"""Keeps the FAISS indexes in agreement with the database, which is the source of truth.

Two indexes: pooled SAVE video vectors (ids = video ids) and the sentence embeddings of transcript passages
(ids = passage ids, see ``indexer.passages``). Both are derived: ``sync`` adds what the database has and the
index lacks and removes what the database no longer has, so crash repair and normal updates are the same
operation. Writers publish atomic snapshots; readers reload when the published version changes.
"""

from __future__ import annotations

import fcntl
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import func, select
from sqlalchemy.orm import sessionmaker

from .db import Passage, Video
from .store import VectorIndex, choose_index_type, current_version, ivfpq_outgrown, load_snapshot, save_snapshot

log = logging.getLogger(__name__)


def to_blob(vector: np.ndarray) -> bytes:
    return np.asarray(vector, dtype=np.float16).tobytes()


def from_blob(blob: bytes) -> np.ndarray:
    return np.frombuffer(blob, dtype=np.float16).astype(np.float32)


@dataclass
class SyncReport:
    added: int = 0
    removed: int = 0


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


class Catalog:
    """The video and passage indexes of one collection, synced from the database."""

    def __init__(self, index_dir: Path, sessions: sessionmaker, model_version: str | None, video_dim: int | None,
                 passage_space: str, passage_dim: int, index_type: str = "auto") -> None:
        self.sessions = sessions
        self.index_dir = index_dir
        self.model_version = model_version
        self.videos = (ManagedIndex(index_dir / "videos", video_dim, model_version, index_type)
                       if model_version and video_dim else None)
        self.passages = ManagedIndex(index_dir / "passages", passage_dim, passage_space, index_type)

    def indexes(self) -> list[ManagedIndex]:
        """The indexes this catalog keeps (no video index in speech mode)."""
        return [m for m in (self.videos, self.passages) if m is not None]

    def load(self) -> None:
        for managed in self.indexes():
            managed.load()

    def reload_if_changed(self) -> bool:
        changed = self.passages.reload_if_changed()
        if self.videos is not None:
            changed = self.videos.reload_if_changed() or changed
        return changed

    def _sources(self) -> list[tuple[ManagedIndex, Any, Any, Any]]:
        """(index, id column, vector column, which rows belong in it) for each index: what sync and prepare read."""
        sources: list[tuple[ManagedIndex, Any, Any, Any]] = []
        if self.videos is not None:
            sources.append((self.videos, Video.id, Video.pooled,
                            (Video.model_version == self.model_version) & Video.pooled.is_not(None)))
        sources.append((self.passages, Passage.id, Passage.embedding, Passage.embedding.is_not(None)))
        return sources

    def sync(self) -> dict[str, SyncReport]:
        """Reconcile both indexes with the database (start-up repair, and after every committed batch)."""
        reports: dict[str, SyncReport] = {}
        with self.sessions() as s:
            for managed, id_col, vector_col, belongs in self._sources():
                db_ids = set(s.scalars(select(id_col).where(belongs)))
                reports[managed.folder.name] = managed.sync(
                    db_ids, lambda ids, c=id_col, v=vector_col, b=belongs: _fetch(s, c, v, b, ids))
        return reports

    def prepare(self) -> bool:
        """Build, without any lock, the indexes the next ``sync`` would have to rebuild (see
        ``ManagedIndex.prepare``); the worker calls it before taking the index lock. Costs one count per index
        (a scan, like sync's id scan: see docs/scale-out.md)."""
        prepared = False
        with self.sessions() as s:
            for managed, id_col, vector_col, belongs in self._sources():
                count = s.scalar(select(func.count()).select_from(id_col.table).where(belongs)) or 0
                prepared |= managed.prepare(count, lambda c=id_col, v=vector_col, b=belongs: _fetch(s, c, v, b, None))
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


def _fetch(s, id_col, blob_col, condition, ids: set[int] | None, chunk: int = 5000) -> list[tuple[int, np.ndarray]]:
    """(id, vector) rows, in chunks so a large id set never makes one giant IN clause."""
    if ids is None:
        return [(i, from_blob(b)) for i, b in s.execute(select(id_col, blob_col).where(condition)).all()]
    wanted = sorted(ids)
    rows: list[tuple[int, np.ndarray]] = []
    for start in range(0, len(wanted), chunk):
        part = wanted[start:start + chunk]
        rows += [(i, from_blob(b)) for i, b in s.execute(select(id_col, blob_col).where(id_col.in_(part))).all()]
    return rows
