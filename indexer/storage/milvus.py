"""The Milvus backend of ``indexer.storage.catalog.VectorCatalog``: no process needs another host's disk to search.

Three collections per embedding space (names: ``{prefix}_{kind}_{digest of the space}``, so a model change
never mixes spaces and several deployments can share one Milvus through their prefix):
- ``videos``: id = video id, the pooled SAVE vector (cosine: inner product of L2-normalised vectors);
- ``passages``: id = passage id, its video id, the sentence embedding; every row of the passages table is
  indexed, whatever produced it (speech or other sources);
- ``frames`` (only with ``SAVE_SEARCH_FRAME_STORE=milvus``): id = video id, the fp16 per-frame features (one
  FLOAT16_VECTOR of frames x dim), the frame mask and when it was written. By default the frame features that the
  exact SAVE re-scoring reads live in the database instead (``indexer.storage.sql_frames``: 4-5x faster to read,
  written in the video's transaction); ``save-search reindex --rebuild-only`` moves an older deployment's
  ``frames`` collection there and drops it.

Writes follow the database: frame features in the database's table in the video's own commit (in the ``frames``
collection: before the commit that references them, as shard files are: an unreferenced row is harmless and
removed after a grace period), the video and passage vectors right after it (``index_videos``), deletes right
after the delete's commit (``remove_videos``). ``sync`` compares the database with each collection (ids per
embedding space) and repairs both ways: the start-up repair and ``save-search reindex --verify``, e.g. after a
worker died between its commit and its Milvus write.
Every operation uses Strong consistency, so a write is visible to all API processes once it returns.
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

import grpc
import numpy as np
from pymilvus import DataType, MilvusClient
from pymilvus.exceptions import MilvusException
from sqlalchemy import func, select
from sqlalchemy.orm import sessionmaker

from indexer.enums import FrameStore
from indexer.storage.catalog import SyncReport, VectorCatalog, from_blob
from indexer.storage.db import Passage, Video, VideoFrames
from indexer.storage.files import ORPHAN_GRACE_S
from indexer.storage.shards import FeatureRef, FeatureStoreError, checked_features, write_tag
from indexer.storage.sql_frames import DB_SHARD, SqlFrames

if TYPE_CHECKING:
    from indexer.settings import Settings

log = logging.getLogger(__name__)

# Video.feature_shard of a video whose frame features were written to Milvus (informational: Milvus finds them by
# video id in the model version's collection, so features copied from shard files are found as well)
MILVUS_SHARD = "milvus"
CONSISTENCY = "Strong"  # a committed video is searchable from every API process as soon as its write returns
WRITE_BATCH = 1000  # rows per insert/upsert/delete request (gRPC messages stay well below their size limit)
MAX_LIMIT = 16384  # Milvus's top-k and query limit
# Frame records per query in ``MilvusFrames.read_many``. Milvus Lite 2.5 builds a query's result by appending each
# fp16 vector to one growing buffer (a copy per row), so its cost grows with the square of the rows per request:
# 400 candidates in one query took 1.8-2.2 s at 100k videos, in batches of 50 139-181 ms (25 or 100: no better;
# BENCHMARKS.md, "Frames read for re-scoring on Milvus"). On a server a few more requests cost little.
READ_BATCH = 50
FLOAT16_MAX_DIM = 32768  # Milvus's largest vector dimension: frames x dim must fit
_PREFIX_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,150}$")


def collection_name(prefix: str, kind: str, space: str, dim: int) -> str:
    """A valid Milvus collection name for one index kind and embedding space (the space itself goes into the
    collection's description)."""
    if not _PREFIX_RE.match(prefix):
        raise ValueError(f"Milvus collection prefix {prefix!r} must match {_PREFIX_RE.pattern}")
    return f"{prefix}_{kind}_{hashlib.sha1(f'{space}/{dim}'.encode()).hexdigest()[:12]}"


def normalized(vectors: np.ndarray) -> np.ndarray:
    """float32 rows scaled to unit length, as FAISS's ``normalize_L2`` (inner product = cosine)."""
    x = np.asarray(vectors, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def is_milvus_lite(client: MilvusClient) -> bool:
    """Whether the server is Milvus Lite: the one Milvus that does not implement GetVersion (2.5.1)."""
    quiet = logging.getLogger("pymilvus.decorators")  # it logs every failed call as an error
    level = quiet.level
    quiet.setLevel(logging.CRITICAL)
    try:
        client.get_server_version()
    except grpc.RpcError as exc:
        return exc.code() == grpc.StatusCode.UNIMPLEMENTED
    except MilvusException:
        return False
    finally:
        quiet.setLevel(level)
    return False


def _chunks(values: list, size: int = WRITE_BATCH) -> Iterator[list]:
    for start in range(0, len(values), size):
        yield values[start:start + size]


class MilvusFrames:
    """Per-frame features in a Milvus collection (``FeatureStorage``): any process with the URI reads them."""

    shard = MILVUS_SHARD

    def __init__(self, client: MilvusClient, name: str, frames: int, dim: int) -> None:
        if frames * dim > FLOAT16_MAX_DIM:
            raise ValueError(f"{frames} frames x {dim} dims exceed Milvus's largest vector ({FLOAT16_MAX_DIM})")
        self.client, self.name, self.frames, self.dim = client, name, frames, dim

    def append(self, video_id: int, frames: np.ndarray, mask: np.ndarray, session: Any = None) -> FeatureRef:
        """Upsert a video's features (``session``: unused, Milvus is outside the database's transactions)."""
        f, m = checked_features(frames, mask, self.frames, self.dim)
        mask_text = "".join("1" if x else "0" for x in m.tolist())
        self.client.upsert(self.name, [{"id": int(video_id), "frames": f.reshape(-1), "mask": mask_text,
                                        "written": int(time.time())}])
        return FeatureRef(MILVUS_SHARD, write_tag(), int(video_id))

    def read_many(self, refs: Iterable[FeatureRef]) -> tuple[np.ndarray, np.ndarray]:
        refs = list(refs)
        out_frames = np.empty((len(refs), self.frames, self.dim), dtype=np.float16)
        out_masks = np.empty((len(refs), self.frames), dtype=np.uint8)
        if not refs:
            return out_frames, out_masks
        if any(r.video_id is None for r in refs):
            raise FeatureStoreError("Milvus finds frame features by video id: build each FeatureRef with one")
        rows = {}
        for part in _chunks(sorted({int(r.video_id) for r in refs if r.video_id is not None}), READ_BATCH):
            for row in self.client.query(self.name, ids=part, output_fields=["frames", "mask"],
                                         consistency_level=CONSISTENCY):
                rows[int(row["id"])] = row
        for i, ref in enumerate(refs):
            row = rows.get(int(ref.video_id or 0))
            if row is None:
                raise FeatureStoreError(f"no frame features of video {ref.video_id} in {self.name}")
            raw = row["frames"][0] if isinstance(row["frames"], list) else row["frames"]
            out_frames[i] = np.frombuffer(raw, dtype=np.float16).reshape(self.frames, self.dim)
            out_masks[i] = [c == "1" for c in row["mask"]]
        return out_frames, out_masks


class MilvusCatalog(VectorCatalog):
    """Video vectors, passage vectors and frame features in Milvus; the database says what belongs there.

    On Milvus Lite the vector collections are always FLAT (exact): Lite 2.5 keeps a collection in one growing
    segment and builds none of the ANN indexes it accepts. Up to 100,000 rows it scans them all; from 100,000
    rows on (10 % of its 1M-row segment limit) it searches an interim IVF index of its own (100 lists, 4 of them
    probed) whatever the index type, ``nlist`` or ``nprobe`` asked for: recall@10 0.92 at 300k and 0.69 at 1M
    vectors (BENCHMARKS.md, "Milvus Lite recall"). Only FLAT is exempt. ``exact_on_lite=False`` keeps the
    configured type there (for the benchmark that shows it)."""

    in_process = False

    def __init__(self, client: MilvusClient, sessions: sessionmaker, model_version: str | None,
                 video_dim: int | None, passage_space: str, passage_dim: int, *, prefix: str = "save_search",
                 index_type: str = "AUTOINDEX", nprobe: int = 32, exact_on_lite: bool = True,
                 frame_store: str = FrameStore.DATABASE) -> None:
        self.client = client
        self.sessions = sessions
        self.model_version = model_version if model_version and video_dim else None
        self.video_dim = video_dim
        self.passage_space, self.passage_dim = passage_space, passage_dim
        self.index_type = index_type.upper()
        # Lite: FLAT, and an existing collection with another index gets FLAT when opened (a reload, seconds)
        self.lite_flat = exact_on_lite and is_milvus_lite(client)
        if self.lite_flat and self.index_type != "FLAT":
            log.warning("Milvus Lite does not build %s (from 100k vectors on it searches an IVF of its own, 4 of "
                        "100 lists probed): using FLAT (exact) instead", self.index_type)
            self.index_type = "FLAT"
        self.nprobe = nprobe
        self.names: dict[str, str] = {"passages": collection_name(prefix, "passages", passage_space, passage_dim)}
        self.spaces: dict[str, str] = {"passages": passage_space}
        if self.model_version is not None and video_dim:
            self.names["videos"] = collection_name(prefix, "videos", self.model_version, video_dim)
            self.spaces["videos"] = self.model_version
        self.prefix = prefix
        self.frame_store = FrameStore(frame_store)
        self._frames: MilvusFrames | SqlFrames | None = None

    @classmethod
    def from_settings(cls, settings: Settings, sessions: sessionmaker, model_version: str | None,
                      video_dim: int | None, passage_space: str, passage_dim: int) -> MilvusCatalog:
        kwargs: dict[str, Any] = {"uri": settings.milvus.uri}
        if settings.milvus.token:
            kwargs["token"] = settings.milvus.token
        if settings.milvus.db:
            kwargs["db_name"] = settings.milvus.db
        return cls(MilvusClient(**kwargs), sessions, model_version, video_dim, passage_space, passage_dim,
                   prefix=settings.milvus.collection_prefix, index_type=settings.milvus.index,
                   nprobe=settings.milvus.nprobe, frame_store=settings.milvus.frame_store)

    # ------------------------------------------------------------------ collections
    def _index_params(self, field: str, index_type: str | None = None) -> Any:
        params = self.client.prepare_index_params()
        kind = index_type or self.index_type
        extra = {"nlist": 1024} if kind.startswith("IVF") else {}
        params.add_index(field_name=field, index_type=kind, metric_type="IP", params=extra)
        return params

    def _create(self, name: str, description: str, fields: list[tuple[str, DataType, dict]], vector_field: str,
                index_type: str | None = None) -> None:
        """Create (idempotent: Milvus accepts the same definition twice, so concurrent starters agree) and load."""
        schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False, description=description)
        for field_name, dtype, options in fields:
            schema.add_field(field_name, dtype, **options)
        try:
            self.client.create_collection(name, schema=schema,
                                          index_params=self._index_params(vector_field, index_type),
                                          consistency_level=CONSISTENCY)
        except MilvusException:
            if not self.client.has_collection(name):  # else another process created it at the same moment
                raise
        if self.lite_flat:
            self._make_flat(name, vector_field)
        self.client.load_collection(name)

    def _make_flat(self, name: str, field: str) -> None:
        """Replace a Lite collection's vector index by FLAT (created before Lite was known to need it)."""
        have = self.client.describe_index(name, field) if field in self.client.list_indexes(name) else {}
        if have.get("index_type", "FLAT") != "FLAT":
            log.warning("%s: replacing its %s index by FLAT (Milvus Lite)", name, have["index_type"])
            self.client.drop_index(name, field)
            self.client.create_index(name, self._index_params(field, "FLAT"))

    def _create_videos(self) -> None:
        self._create(self.names["videos"], f"save-search videos: {self.spaces['videos']}",
                     [("id", DataType.INT64, {"is_primary": True}),
                      ("vector", DataType.FLOAT_VECTOR, {"dim": self.video_dim})], "vector")

    def _create_passages(self) -> None:
        self._create(self.names["passages"], f"save-search passages: {self.passage_space}",
                     [("id", DataType.INT64, {"is_primary": True}), ("video_id", DataType.INT64, {}),
                      ("vector", DataType.FLOAT_VECTOR, {"dim": self.passage_dim})], "vector")

    def load(self) -> None:
        if "videos" in self.names:
            self._create_videos()
        self._create_passages()

    def reload_if_changed(self) -> bool:
        return False  # nothing is cached here: every search asks Milvus

    def open_features(self, frames: int, dim: int, owner: str) -> MilvusFrames | SqlFrames:
        """The frame features (``SAVE_SEARCH_FRAME_STORE``): the database's ``video_frames`` table, or the
        ``frames`` collection of this model version and shape. ``owner`` does not matter: writes are upserts."""
        if self._frames is None or (self._frames.frames, self._frames.dim) != (frames, dim):
            if self.frame_store == FrameStore.DATABASE:
                self._frames = SqlFrames(self.sessions, frames, dim)
            else:
                collection = self._frames_collection(frames, dim, create=True)
                assert collection is not None
                self._frames = collection
        return self._frames

    def _frames_name(self, frames: int, dim: int) -> str:
        return collection_name(self.prefix, "frames", f"{self.model_version or 'none'}/{frames}", dim)

    def _frames_collection(self, frames: int, dim: int, create: bool) -> MilvusFrames | None:
        """The ``frames`` collection of this model version and shape (None: it does not exist, ``create`` off)."""
        name = self._frames_name(frames, dim)
        if create:
            space = self.model_version or "none"
            # FLAT: the vector field is only stored and fetched by id, never searched; an index is what Milvus
            # needs to load a collection.
            self._create(name, f"save-search frame features: {space}, {frames} x {dim}",
                         [("id", DataType.INT64, {"is_primary": True}),
                          ("frames", DataType.FLOAT16_VECTOR, {"dim": frames * dim}),
                          ("mask", DataType.VARCHAR, {"max_length": frames}),
                          ("written", DataType.INT64, {})], "frames", index_type="FLAT")
        elif self.client.has_collection(name):
            self.client.load_collection(name)
        else:
            return None
        return MilvusFrames(self.client, name, frames, dim)

    def milvus_frames(self, frames: int, dim: int) -> MilvusFrames | None:
        """The ``frames`` collection when it exists, whatever the frame store: what moving to the database reads."""
        return self._frames_collection(frames, dim, create=False)

    def drop_milvus_frames(self, frames: int, dim: int) -> None:
        """Drop the ``frames`` collection once its features are in the database."""
        name = self._frames_name(frames, dim)
        if self.client.has_collection(name):
            self.client.drop_collection(name)

    def count(self, name: str) -> int:
        rows = self.client.query(self.names[name], filter="", output_fields=["count(*)"],
                                 consistency_level=CONSISTENCY)
        return int(rows[0]["count(*)"]) if rows else 0

    def sizes(self) -> dict[str, tuple[str | None, int]]:
        return {name: (self.spaces[name], self.count(name)) for name in self.names}

    def _ids(self, name: str) -> set[int]:
        """Every id in a collection (an iterator: no query limit)."""
        iterator = self.client.query_iterator(name, batch_size=MAX_LIMIT, filter="id >= 0", output_fields=["id"],
                                              consistency_level=CONSISTENCY)
        ids: set[int] = set()
        try:
            while batch := iterator.next():
                ids.update(int(row["id"]) for row in batch)
        finally:
            iterator.close()
        return ids

    # ------------------------------------------------------------------ search
    def _search(self, name: str, query: np.ndarray, k: int) -> list[tuple[int, float]]:
        params: dict[str, Any] = {"nprobe": self.nprobe} if self.index_type.startswith("IVF") else {}
        hits = self.client.search(name, data=[normalized(query).reshape(-1).tolist()], limit=min(k, MAX_LIMIT),
                                  anns_field="vector", search_params={"metric_type": "IP", "params": params},
                                  consistency_level=CONSISTENCY)
        return [(int(h["id"]), float(h["distance"])) for h in hits[0]] if hits else []

    def search_videos(self, query: np.ndarray, k: int) -> list[int]:
        if "videos" not in self.names:
            return []
        return [i for i, _ in self._search(self.names["videos"], query, k)]

    def search_passages(self, query: np.ndarray, k: int) -> dict[int, float]:
        return dict(self._search(self.names["passages"], query, k))

    # ------------------------------------------------------------------ writes
    def _upsert(self, name: str, rows: list[dict]) -> None:
        for part in _chunks(rows):
            self.client.upsert(name, part)

    def _delete_ids(self, name: str, ids: Iterable[int]) -> None:
        for part in _chunks(sorted(ids)):
            self.client.delete(name, ids=part)

    def _video_rows(self, s, ids: list[int]) -> list[dict]:
        belongs = next(b for name, _, _, b in self._sources() if name == "videos")
        rows = s.execute(select(Video.id, Video.pooled).where(Video.id.in_(ids), belongs)).all()
        if not rows:
            return []
        vectors = normalized(np.stack([from_blob(b) for _, b in rows]))
        return [{"id": int(i), "vector": v} for (i, _), v in zip(rows, vectors, strict=True)]

    def _passage_rows(self, s, condition) -> list[dict]:
        rows = s.execute(select(Passage.id, Passage.video_id, Passage.embedding)
                         .where(condition, Passage.embedding.is_not(None))).all()
        if not rows:
            return []
        vectors = normalized(np.stack([from_blob(b) for _, _, b in rows]))
        return [{"id": int(i), "video_id": int(v), "vector": x} for (i, v, _), x in zip(rows, vectors, strict=True)]

    def index_videos(self, video_ids: Iterable[int]) -> None:
        """Write the committed videos' vectors and passages, and drop what they no longer have (a re-indexed video
        gets new passage ids; one encoded with another model leaves this space)."""
        ids = sorted({int(i) for i in video_ids})
        if not ids:
            return
        with self.sessions() as s:
            for part in _chunks(ids):
                if "videos" in self.names:
                    rows = self._video_rows(s, part)
                    self._upsert(self.names["videos"], rows)
                    gone = set(part) - {r["id"] for r in rows}
                    if gone:
                        self._delete_ids(self.names["videos"], gone)
                rows = self._passage_rows(s, Passage.video_id.in_(part))
                self._upsert(self.names["passages"], rows)
                keep = sorted(r["id"] for r in rows)
                stale = f"video_id in {part}" + (f" and id not in {keep}" if keep else "")
                self.client.delete(self.names["passages"], filter=stale)

    def remove_videos(self, video_ids: Iterable[int]) -> None:
        ids = sorted({int(i) for i in video_ids})
        for part in _chunks(ids):
            if "videos" in self.names:
                self._delete_ids(self.names["videos"], part)
            self.client.delete(self.names["passages"], filter=f"video_id in {part}")
            if isinstance(self._frames, MilvusFrames):  # the table's rows went with the videos (ON DELETE CASCADE)
                self._delete_ids(self._frames.name, part)

    # ------------------------------------------------------------------ repair
    def sync(self) -> dict[str, SyncReport]:
        """Compare each collection's ids with the database's (per embedding space) and repair both ways. Frame
        features cannot be rebuilt from the database: a committed video without them is counted as ``missing``
        (``save-search reindex`` re-encodes it); frames of no committed video go after ``ORPHAN_GRACE_S`` (a
        worker may be between its Milvus write and its commit)."""
        reports: dict[str, SyncReport] = {}
        with self.sessions() as s:
            for name, id_col, _, belongs in self._sources():
                collection = self.names[name]
                db_ids = set(s.scalars(select(id_col).where(belongs)))
                have = self._ids(collection)
                report = SyncReport(count=len(db_ids))
                extra = have - db_ids
                if extra:
                    self._delete_ids(collection, extra)
                    report.removed = len(extra)
                missing = sorted(db_ids - have)
                for part in _chunks(missing):
                    if name == "videos":
                        rows = self._video_rows(s, part)
                    else:
                        rows = self._passage_rows(s, Passage.id.in_(part))
                    self._upsert(collection, rows)
                    report.added += len(rows)
                reports[name] = report
            if isinstance(self._frames, MilvusFrames):
                reports["frames"] = self._sync_frames(s)
            elif self._frames is not None:
                reports["frames"] = self._sync_db_frames(s)
        return reports

    def _sync_db_frames(self, s) -> SyncReport:
        """The table cannot hold orphans (the foreign key) or lose a row its video's commit wrote: a video of this
        model without a row was written elsewhere (shard files, the ``frames`` collection: ``reindex
        --rebuild-only`` copies them) or lost its features (``reindex`` re-encodes it)."""
        referenced = (Video.model_version == self.model_version) & Video.feature_shard.is_not(None)
        total = s.scalar(select(func.count()).select_from(Video).where(referenced)) or 0
        missing: dict[str | None, int] = {shard: int(n) for shard, n in s.execute(
            select(Video.feature_shard, func.count()).select_from(Video)
            .outerjoin(VideoFrames, VideoFrames.video_id == Video.id)
            .where(referenced, VideoFrames.video_id.is_(None)).group_by(Video.feature_shard))}
        report = SyncReport(count=int(total) - sum(missing.values()), missing=sum(missing.values()))
        if missing.get(DB_SHARD):
            log.warning("%d video(s) have no row in video_frames: run `save-search reindex` to re-encode them",
                        missing[DB_SHARD])
        if report.missing - missing.get(DB_SHARD, 0):
            log.warning("%d video(s) have frame features outside the database (the Milvus frames collection or "
                        "shard files): run `save-search reindex --rebuild-only` to copy them in",
                        report.missing - missing.get(DB_SHARD, 0))
        return report

    def _sync_frames(self, s) -> SyncReport:
        assert isinstance(self._frames, MilvusFrames)
        db_ids = set(s.scalars(select(Video.id).where(Video.model_version == self.model_version,
                                                        Video.feature_shard.is_not(None))))
        have = self._ids(self._frames.name)
        report = SyncReport(count=len(db_ids & have), missing=len(db_ids - have))
        if report.missing:
            log.warning("%d video(s) have no frame features in %s: run `save-search reindex` to re-encode them",
                        report.missing, self._frames.name)
        unreferenced = have - set(s.scalars(select(Video.id)))
        if unreferenced:
            cutoff = int(time.time() - ORPHAN_GRACE_S)
            old = [int(r["id"]) for part in _chunks(sorted(unreferenced), MAX_LIMIT)
                   for r in self.client.query(self._frames.name, ids=part, output_fields=["written"],
                                              consistency_level=CONSISTENCY) if r["written"] < cutoff]
            self._delete_ids(self._frames.name, old)
            report.removed = len(old)
        return report

    def repair(self) -> dict[str, SyncReport]:
        return self.sync()

    def rebuild(self) -> dict[str, int]:
        for name in self.names.values():
            try:
                self.client.drop_collection(name)
            except MilvusException as exc:
                log.warning("could not drop %s: %s", name, exc)
        self.load()
        return {name: report.count for name, report in self.sync().items() if name in self.names}

