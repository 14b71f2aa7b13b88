"""Frame features in the database (``video_frames``): the Milvus backend's ``FeatureStorage`` by default.

Exact re-scoring reads the frames of up to 400 candidates per query. From a table that is one indexed query:
22-36 ms p50 at 100k videos through psycopg's binary protocol, against 139-181 ms from the Milvus ``frames``
collection and 56-109 ms through SQLAlchemy's default text protocol, where bytea arrives as hex twice its size
(BENCHMARKS.md, "Frames read for re-scoring on Milvus"). Writes are upserts in the video's own transaction
(``append(..., session=s)``), so a row exists exactly when its video does: no orphans, no grace period, and a
re-encode replaces the features in the transaction that changes ``Video.model_version``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
from sqlalchemy import select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from indexer.storage.db import VideoFrames
from indexer.storage.shards import FeatureRef, FeatureStoreError, checked_features, write_tag

DB_SHARD = "db"  # Video.feature_shard of a video whose frame features are in ``video_frames``
READ_CHUNK = 1000  # ids per SQLite ``IN (...)`` (its bound-parameter limit is 32766; search asks <= 400)
_PG_READ = "SELECT video_id, frames, mask FROM video_frames WHERE video_id = ANY(%s)"


def _chunks(values: list[int], size: int = READ_CHUNK) -> Iterator[list[int]]:
    for start in range(0, len(values), size):
        yield values[start:start + size]


def upsert_statement(dialect: str, row: dict[str, Any]) -> Any:
    """``INSERT ... ON CONFLICT (video_id) DO UPDATE`` of one ``video_frames`` row (PostgreSQL and SQLite)."""
    if dialect == "postgresql":
        from sqlalchemy.dialects import postgresql as dialect_module
    elif dialect == "sqlite":
        from sqlalchemy.dialects import sqlite as dialect_module  # type: ignore[no-redef]
    else:
        raise NotImplementedError(f"frame features in a {dialect} database")
    stmt = dialect_module.insert(VideoFrames).values(**row)
    return stmt.on_conflict_do_update(index_elements=["video_id"],
                                      set_={"frames": stmt.excluded.frames, "mask": stmt.excluded.mask})


class SqlFrames:
    """``FeatureStorage`` on the ``video_frames`` table of the service's database."""

    shard = DB_SHARD

    def __init__(self, sessions: sessionmaker, frames: int, dim: int) -> None:
        self.sessions, self.frames, self.dim = sessions, frames, dim
        self.engine: Engine = sessions.kw["bind"]
        # psycopg 3 reads bytea as bytes with a binary cursor; any other driver goes through SQLAlchemy
        self.binary = self.engine.dialect.name == "postgresql" and self.engine.dialect.driver == "psycopg"

    def append(self, video_id: int, frames: np.ndarray, mask: np.ndarray,
               session: Session | None = None) -> FeatureRef:
        """Write (or replace) a video's features; in ``session``'s transaction when given (the caller commits),
        else in a transaction of its own."""
        f, given_mask = checked_features(frames, mask, self.frames, self.dim)
        m = given_mask.astype(np.uint8)
        stmt = upsert_statement(self.engine.dialect.name,
                                {"video_id": int(video_id), "frames": f.tobytes(), "mask": m.tobytes()})
        if session is not None:
            session.execute(stmt)
        else:
            with self.sessions.begin() as s:
                s.execute(stmt)
        return FeatureRef(DB_SHARD, write_tag(), int(video_id))

    def _rows(self, ids: list[int]) -> dict[int, tuple[bytes, bytes]]:
        if self.binary:
            conn = self.engine.raw_connection()  # a pooled connection: the same search_path and options
            try:
                with conn.driver_connection.cursor(binary=True) as cur:  # type: ignore[union-attr]
                    cur.execute(_PG_READ, (ids,))
                    rows = {int(v): (bytes(f), bytes(m)) for v, f, m in cur.fetchall()}
                conn.rollback()  # end the read's transaction before the connection goes back to the pool
                return rows
            finally:
                conn.close()
        out: dict[int, tuple[bytes, bytes]] = {}
        with self.sessions() as s:
            for part in _chunks(ids):
                out.update((int(v), (f, m)) for v, f, m in s.execute(
                    select(VideoFrames.video_id, VideoFrames.frames, VideoFrames.mask)
                    .where(VideoFrames.video_id.in_(part))))
        return out

    def read_many(self, refs: Iterable[FeatureRef]) -> tuple[np.ndarray, np.ndarray]:
        """fp16 [N, T, D] and uint8 [N, T] in the order of ``refs`` (found by video id), from one query;
        ``FeatureStoreError`` when a video has no row (or one of another shape)."""
        refs = list(refs)
        out_frames = np.empty((len(refs), self.frames, self.dim), dtype=np.float16)
        out_masks = np.empty((len(refs), self.frames), dtype=np.uint8)
        if not refs:
            return out_frames, out_masks
        if any(r.video_id is None for r in refs):
            raise FeatureStoreError("the database finds frame features by video id: build each FeatureRef with one")
        rows = self._rows(sorted({int(r.video_id) for r in refs if r.video_id is not None}))
        size = self.frames * self.dim * 2
        for i, ref in enumerate(refs):
            row = rows.get(int(ref.video_id or 0))
            if row is None:
                raise FeatureStoreError(f"no frame features of video {ref.video_id} in video_frames")
            f, m = row
            if len(f) != size or len(m) != self.frames:
                raise FeatureStoreError(f"the frame features of video {ref.video_id} are not [{self.frames}, "
                                        f"{self.dim}] ({len(f)} bytes)")
            out_frames[i] = np.frombuffer(f, dtype=np.float16).reshape(self.frames, self.dim)
            out_masks[i] = np.frombuffer(m, dtype=np.uint8)
        return out_frames, out_masks
