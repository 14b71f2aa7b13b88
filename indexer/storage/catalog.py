"""The search indexes, kept in agreement with the database (the source of truth), behind one interface.

What search needs besides the database: the pooled SAVE video vectors (ids = video ids), the sentence embeddings
of transcript passages (ids = passage ids, see ``indexer.passages``) and each video's per-frame features for the
exact re-scoring. ``VectorCatalog`` is that interface: candidate generation (``search_videos``,
``search_passages``), the frame features (``open_features``), writes after a commit or a delete
(``index_videos``, ``remove_videos``) and repair (``sync``: adds what the database has and the index lacks,
removes what the database no longer has, so crash repair and normal updates are the same operation).
Scoring, fusion and moments (``indexer.search.service``) are shared by every backend.

Two backends (``make_catalog`` picks by ``Settings.vector_store``):
- ``FaissCatalog`` (default, one host or a shared volume): FAISS indexes published as atomic snapshot files
  (readers reload when the published version changes), frame features in ``indexer.storage.shards.FeatureStore`` shards.
- ``indexer.storage.milvus.MilvusCatalog``: everything in Milvus collections, written right after each commit;
  no host needs another host's disk.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session, object_session, sessionmaker

from indexer.storage.db import Passage, Video
from indexer.storage.shards import FeatureRef

if TYPE_CHECKING:
    pass

log = logging.getLogger(__name__)


def to_blob(vector: np.ndarray) -> bytes:
    """A vector as the database stores it (``Video.pooled``, ``Passage.embedding``): fp16 bytes."""
    return np.asarray(vector, dtype=np.float16).tobytes()


def from_blob(blob: bytes) -> np.ndarray:
    """One stored vector as float32."""
    return np.frombuffer(blob, dtype=np.float16).astype(np.float32)


def stack_blobs(blobs: Sequence[bytes], dim: int) -> np.ndarray:
    """Many stored vectors as one fp16 [N, dim] matrix; a blob of another width (a vector of another encoder,
    until re-indexed) is a zero row, so it scores 0 instead of failing the query."""
    width = 2 * dim
    if not all(len(b) == width for b in blobs):
        blobs = [b if len(b) == width else bytes(width) for b in blobs]
    return np.frombuffer(b"".join(blobs), dtype=np.float16).reshape(len(blobs), dim).copy()


@dataclass
class SyncReport:
    added: int = 0
    removed: int = 0
    count: int = 0  # entries in the index after the sync (= rows of the database that belong in it)
    missing: int = 0  # entries the database cannot rebuild (frame features: `save-search reindex` re-encodes)


class FeatureStorage(Protocol):
    """Where each video's per-frame features (fp16 [T, D]) and frame mask live: what exact re-scoring reads.
    ``append`` runs before the database commit that stores the returned reference (an unreferenced record is
    harmless); a store inside the database (``indexer.storage.sql_frames``) writes in ``session``'s transaction,
    the others ignore it. ``read_many`` raises ``indexer.storage.shards.FeatureStoreError`` for a record it
    cannot serve."""

    def append(self, video_id: int, frames: np.ndarray, mask: np.ndarray,
               session: Session | None = None) -> FeatureRef: ...

    def read_many(self, refs: Iterable[FeatureRef]) -> tuple[np.ndarray, np.ndarray]: ...


def store_embedding(video: Video, features: FeatureStorage, frames: np.ndarray, mask: np.ndarray,
                    pooled: np.ndarray, model_version: str, model_mode: str | None = None) -> None:
    """Write a video's SAVE embedding where search reads it: the per-frame features (fp16) and mask to the feature
    storage (before the commit that references them; the database's table in the video's own transaction, so the
    video must be flushed), the pooled vector and model version onto the row. The one embedding write of ingest and
    re-encoding; the caller commits."""
    ref = features.append(video.id, np.asarray(frames).astype(np.float16), np.asarray(mask).astype(np.uint8),
                          session=object_session(video))
    video.feature_shard, video.feature_offset = ref.shard, ref.offset
    video.pooled = to_blob(pooled)
    video.model_version = model_version
    if model_mode is not None:
        video.model_mode = model_mode


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
