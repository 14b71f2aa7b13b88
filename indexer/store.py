"""Durable storage for what search needs per video: exact per-frame features and the ANN index of pooled vectors.

- ``FeatureStore``: append-only shard files of fixed-size, checksummed fp16 records, one active shard per
  writer (``owner``), so several worker processes (also on several machines sharing a volume) never write the
  same file and a torn write is detected on read instead of being served as features.
- ``VectorIndex``: FAISS over L2-normalised pooled vectors, keyed by the SQL video id (inner product = cosine).
- ``save_snapshot`` / ``load_snapshot``: atomic, versioned index files plus a ``manifest.json`` naming the
  current one. Readers never lock: a published index file is never modified, only deleted two versions later.

The SQL database is the source of truth; everything here is derived and can be rebuilt (``FeatureStore.scan``
finds every valid record, ``pool_frames`` recomputes the pooled vectors).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import math
import os
import re
import struct
import threading
import time
import zlib
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from .locks import try_lock

log = logging.getLogger(__name__)

# ====================================================================== feature store

FORMAT_VERSION = 1
STORE_META = "store.json"
SHARD_SUFFIX = ".feat"
SHARD_MAGIC = b"SAVEFEAT"
# Shard header: magic, format, frames, dim, record_bytes; zero padded to SHARD_HEADER_BYTES.
_SHARD_HEADER = struct.Struct("<8sIIII")
SHARD_HEADER_BYTES = 64
# Record: magic u32, crc32 u32, video_id i64, frames fp16 [T, D], mask u8 [T], zero padding to 8 bytes.
# The crc covers video_id + frames + mask, so a record with a torn tail or a flipped byte never verifies.
RECORD_MAGIC = 0x52465653  # b"SVFR" little-endian; zero-filled space (a lost write) never looks like a record
_CRC_START = 8
DEFAULT_MAX_SHARD_BYTES = 1 << 30
_OWNER_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_SHARD_RE = re.compile(r"^(?P<owner>[A-Za-z0-9][A-Za-z0-9_.-]*)-(?P<seq>\d{5,})\.feat$")


class FeatureStoreError(Exception):
    """Stored features are missing, torn, corrupted, of another video, or of another shape than expected."""


@dataclass(frozen=True)
class FeatureRef:
    """Where one video's record lives: a shard file name (relative to the store root) and a byte offset.

    ``video_id`` is optional: when set (build it from the DB row), reads check that the record belongs to it.
    """

    shard: str
    offset: int
    video_id: int | None = None


def record_dtype(frames: int, dim: int) -> np.dtype:
    """The on-disk record layout as a numpy structured dtype (also what ``np.memmap`` maps)."""
    fields: list[tuple[Any, ...]] = [("magic", "<u4"), ("crc", "<u4"), ("video_id", "<i8"),
                                     ("frames", "<f2", (frames, dim)), ("mask", "u1", (frames,))]
    body = 16 + 2 * frames * dim + frames
    pad = (-body) % 8
    if pad:
        fields.append(("pad", "u1", (pad,)))
    return np.dtype(fields)


def pool_frames(frames: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """Pooled vectors [N, D] float32 from stored frames [N, T, D] and masks [N, T], as ``masked_mean_pool``.

    Lets the index be rebuilt from the feature store alone (denominator clamped to 1, then L2-normalised).
    """
    f = np.asarray(frames, dtype=np.float32)
    w = (np.asarray(masks) != 0).astype(np.float32)[..., None]
    pooled = (f * w).sum(axis=1) / np.maximum(w.sum(axis=1), 1.0)
    norm = np.linalg.norm(pooled, axis=-1, keepdims=True)
    return (pooled / np.maximum(norm, 1e-12)).astype(np.float32)


def _fsync_dir(path: Path) -> None:
    """Make a created/renamed directory entry durable (best effort: some network filesystems refuse)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _pwrite_all(fd: int, data: bytes | memoryview, offset: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        if written <= 0:
            raise OSError("pwrite wrote nothing")
        view = view[written:]
        offset += written


class FeatureStore:
    """Append-only, checksummed per-video frame features shared by many writer and reader processes.

    Each writer process uses its own ``owner`` (unique among live writers, e.g. ``{hostname}-{worker}``); an
    exclusive ``flock`` on ``.{owner}.lock`` enforces that, so a shard file only ever has one writer. Readers
    can use any owner name: the owner only matters for ``append``. Thread-safe.
    """

    def __init__(self, root: Path, frames: int, dim: int, owner: str, *,
                 max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES, max_open_shards: int = 128) -> None:
        if not _OWNER_RE.match(owner):
            raise ValueError(f"owner {owner!r} must match {_OWNER_RE.pattern} (it becomes part of file names)")
        if frames <= 0 or dim <= 0:
            raise ValueError("frames and dim must be positive")
        self.root = Path(root)
        self.frames = int(frames)
        self.dim = int(dim)
        self.owner = owner
        self.dtype = record_dtype(self.frames, self.dim)
        self.record_bytes = self.dtype.itemsize
        self.max_shard_bytes = max(int(max_shard_bytes), SHARD_HEADER_BYTES + self.record_bytes)
        self._crc_end = 16 + 2 * self.frames * self.dim + self.frames
        self.root.mkdir(parents=True, exist_ok=True)
        self._check_or_create_meta()
        self._write_lock = threading.Lock()
        self._owner_fd: int | None = None
        self._active_fd: int | None = None
        self._active_name = ""
        self._active_size = 0
        self._active_seq = 0
        self._read_lock = threading.Lock()
        # Each map holds a file descriptor (Python's mmap keeps a dup): least recently used ones are dropped.
        self._maps: OrderedDict[str, np.memmap] = OrderedDict()
        self.max_open_shards = max(1, int(max_open_shards))
        self._checked: set[str] = set()  # shards whose header matched (it never changes once written)

    # ------------------------------------------------------------------ metadata
    def _meta(self) -> dict[str, Any]:
        return {"format": FORMAT_VERSION, "frames": self.frames, "dim": self.dim, "dtype": "float16",
                "mask_dtype": "uint8", "record_bytes": self.record_bytes, "shard_header_bytes": SHARD_HEADER_BYTES}

    def _check_or_create_meta(self) -> None:
        """``store.json`` fixes the shape once; opening with another (frames, dim) fails instead of misreading."""
        path = self.root / STORE_META
        if not path.exists():
            tmp = self.root / f".{STORE_META}.{os.getpid()}.{threading.get_ident()}.tmp"
            with open(tmp, "w") as fh:
                json.dump(self._meta(), fh, indent=2)
                fh.flush()
                os.fsync(fh.fileno())
            # link() publishes the complete file atomically and fails if a concurrent creator won the race.
            with contextlib.suppress(FileExistsError):
                os.link(tmp, path)
            tmp.unlink(missing_ok=True)
            _fsync_dir(self.root)
        meta = json.loads(path.read_text())
        if (meta.get("format"), meta.get("frames"), meta.get("dim"), meta.get("dtype")) != (
                FORMAT_VERSION, self.frames, self.dim, "float16"):
            raise FeatureStoreError(
                f"feature store {self.root} holds format={meta.get('format')} frames={meta.get('frames')} "
                f"dim={meta.get('dim')} dtype={meta.get('dtype')}; opened with frames={self.frames} dim={self.dim}")

    def _check_shard_header(self, name: str, header: bytes) -> None:
        if len(header) < SHARD_HEADER_BYTES:
            raise FeatureStoreError(f"shard {name} has no complete header (torn creation)")
        magic, fmt, frames, dim, record_bytes = _SHARD_HEADER.unpack_from(header)
        if magic != SHARD_MAGIC:
            raise FeatureStoreError(f"{name} is not a feature shard (bad magic)")
        if (fmt, frames, dim, record_bytes) != (FORMAT_VERSION, self.frames, self.dim, self.record_bytes):
            raise FeatureStoreError(
                f"shard {name} was written with format={fmt} frames={frames} dim={dim}; "
                f"this store expects format={FORMAT_VERSION} frames={self.frames} dim={self.dim}")

    # ------------------------------------------------------------------ writing
    def _owner_shards(self) -> list[int]:
        seqs = []
        for p in self.root.glob(f"{self.owner}-*{SHARD_SUFFIX}"):
            m = _SHARD_RE.match(p.name)
            if m and m.group("owner") == self.owner:
                seqs.append(int(m.group("seq")))
        return sorted(seqs)

    def _shard_name(self, seq: int) -> str:
        return f"{self.owner}-{seq:05d}{SHARD_SUFFIX}"

    def _acquire_owner(self) -> None:
        if self._owner_fd is not None:
            return
        fd = try_lock(self.root / f".{self.owner}.lock")
        if fd is None:
            raise FeatureStoreError(f"owner {self.owner!r} is already writing to {self.root} in another "
                                    "process; every writer needs its own owner name") from None
        self._owner_fd = fd

    def _close_active(self) -> None:
        if self._active_fd is not None:
            os.close(self._active_fd)
        self._active_fd = None
        self._active_name = ""
        self._active_size = 0

    def _open_active(self) -> None:
        """Continue this owner's last shard if it is clean and has room, else start the next one.

        A shard whose size is not header + k records ends in a torn write from a crash: it is left as is
        (never truncated, so nothing a reader maps can shrink) and writing moves on to a new shard.
        """
        self._acquire_owner()
        seqs = self._owner_shards()
        if seqs:
            name = self._shard_name(seqs[-1])
            fd = os.open(self.root / name, os.O_RDWR)
            size = os.fstat(fd).st_size
            try:
                self._check_shard_header(name, os.pread(fd, SHARD_HEADER_BYTES, 0))
                clean = (size - SHARD_HEADER_BYTES) % self.record_bytes == 0
            except FeatureStoreError:
                clean = False
            if clean and size + self.record_bytes <= self.max_shard_bytes:
                self._active_fd, self._active_name, self._active_size = fd, name, size
                self._active_seq = seqs[-1]
                return
            os.close(fd)
            if not clean:
                log.warning("shard %s is incomplete (torn write); continuing in a new shard", name)
        self._create_shard((seqs[-1] + 1) if seqs else 1)

    def _create_shard(self, seq: int) -> None:
        name = self._shard_name(seq)
        fd = os.open(self.root / name, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            header = _SHARD_HEADER.pack(SHARD_MAGIC, FORMAT_VERSION, self.frames, self.dim, self.record_bytes)
            _pwrite_all(fd, header.ljust(SHARD_HEADER_BYTES, b"\0"), 0)
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            raise
        _fsync_dir(self.root)
        self._active_fd, self._active_name, self._active_size = fd, name, SHARD_HEADER_BYTES
        self._active_seq = seq

    def _encode(self, video_id: int, frames: np.ndarray, mask: np.ndarray) -> bytes:
        video_id = int(video_id)
        if not 0 <= video_id < 2**63:
            raise ValueError(f"video_id must be a non-negative int64, got {video_id}")
        f = np.asarray(frames)
        m = np.asarray(mask)
        if f.shape != (self.frames, self.dim):
            raise ValueError(f"frames must be [{self.frames}, {self.dim}], got {list(f.shape)}")
        if m.shape != (self.frames,):
            raise ValueError(f"mask must be [{self.frames}], got {list(m.shape)}")
        f16 = f.astype(np.float16)
        if not np.isfinite(f16).all():
            raise ValueError("frames contain NaN/inf (or values beyond fp16 range)")
        rec = np.zeros(1, dtype=self.dtype)
        rec["magic"] = RECORD_MAGIC
        rec["video_id"] = video_id
        rec["frames"][0] = f16
        rec["mask"][0] = m != 0
        raw = rec.view(np.uint8)
        rec["crc"] = zlib.crc32(raw[_CRC_START:self._crc_end])
        return raw.tobytes()

    def append(self, video_id: int, frames: np.ndarray, mask: np.ndarray) -> FeatureRef:
        """Write one record durably (write + fsync) and return where it is.

        Commit the DB row that references it only after this returns: a crash in between leaves an
        unreferenced record, which is harmless.
        """
        data = self._encode(video_id, frames, mask)
        with self._write_lock:
            if self._active_fd is None:
                self._open_active()
            elif self._active_size + self.record_bytes > self.max_shard_bytes:
                seq = self._active_seq + 1
                self._close_active()
                self._create_shard(seq)
            assert self._active_fd is not None
            name, offset = self._active_name, self._active_size
            try:
                _pwrite_all(self._active_fd, data, offset)
                os.fsync(self._active_fd)
            except BaseException:
                # A partial record may be on disk. The next append reopens the shard, sees that its size is
                # no longer header + k records, and moves on to a new shard instead of writing after it.
                self._close_active()
                raise
            self._active_size += self.record_bytes
        return FeatureRef(name, offset, int(video_id))

    # ------------------------------------------------------------------ reading
    def _map(self, shard: str, needed: int) -> np.memmap:
        """A memmap of the shard's complete records, remapped when the shard grew past what is cached."""
        if not _SHARD_RE.match(shard):
            raise FeatureStoreError(f"invalid shard name {shard!r}")
        path = self.root / shard
        try:
            if shard not in self._checked:
                with open(path, "rb") as fh:
                    self._check_shard_header(shard, fh.read(SHARD_HEADER_BYTES))
                self._checked.add(shard)
            size = os.stat(path).st_size
        except FileNotFoundError:
            raise FeatureStoreError(f"feature shard {shard} is missing from {self.root}") from None
        count = max(size - SHARD_HEADER_BYTES, 0) // self.record_bytes
        if needed > count:
            raise FeatureStoreError(
                f"record #{needed - 1} of shard {shard} lies past its end ({size} bytes): torn or truncated write")
        with self._read_lock:
            cached = self._maps.get(shard)
            # The stat above also catches a shard that shrank (external damage): remap rather than touch
            # pages past the end of the file, which would kill the process with SIGBUS.
            if cached is not None and needed <= len(cached) <= count:
                self._maps.move_to_end(shard)
                return cached
            mm = np.memmap(path, dtype=self.dtype, mode="r", offset=SHARD_HEADER_BYTES, shape=(count,))
            self._maps[shard] = mm
            self._maps.move_to_end(shard)
            while len(self._maps) > self.max_open_shards:
                self._maps.popitem(last=False)
            return mm

    def _verify(self, shard: str, records: np.ndarray, refs: list[FeatureRef]) -> None:
        raw = records.view(np.uint8).reshape(len(records), self.record_bytes)
        for i, ref in enumerate(refs):
            where = f"record at {shard}:{ref.offset}"
            if records["magic"][i] != RECORD_MAGIC:
                raise FeatureStoreError(f"no {where} (torn write or wrong offset)")
            if zlib.crc32(raw[i, _CRC_START:self._crc_end]) != int(records["crc"][i]):
                raise FeatureStoreError(f"checksum mismatch in {where} (torn or corrupted record)")
            if ref.video_id is not None and int(records["video_id"][i]) != ref.video_id:
                raise FeatureStoreError(
                    f"{where} belongs to video {int(records['video_id'][i])}, expected {ref.video_id}")

    def _index_of(self, ref: FeatureRef) -> int:
        pos, rem = divmod(ref.offset - SHARD_HEADER_BYTES, self.record_bytes)
        if rem or pos < 0:
            raise FeatureStoreError(f"offset {ref.offset} in {ref.shard} is not a record boundary")
        return pos

    def read(self, ref: FeatureRef) -> tuple[np.ndarray, np.ndarray]:
        """One video's (frames fp16 [T, D], mask uint8 [T]), verified (magic, crc32, video id if in ``ref``)."""
        frames, masks = self.read_many([ref])
        return frames[0], masks[0]

    def read_many(self, refs: Iterable[FeatureRef]) -> tuple[np.ndarray, np.ndarray]:
        """(frames fp16 [N, T, D], masks uint8 [N, T]) in the order of ``refs``; one gather per shard."""
        refs = list(refs)
        out_frames = np.empty((len(refs), self.frames, self.dim), dtype=np.float16)
        out_masks = np.empty((len(refs), self.frames), dtype=np.uint8)
        groups: dict[str, list[int]] = {}
        for i, ref in enumerate(refs):
            groups.setdefault(ref.shard, []).append(i)
        for shard, positions in groups.items():
            idx = np.array([self._index_of(refs[p]) for p in positions], dtype=np.int64)
            mm = self._map(shard, int(idx.max()) + 1)
            records = mm[idx]  # fancy indexing copies: no view into the map outlives this call
            self._verify(shard, records, [refs[p] for p in positions])
            out_frames[positions] = records["frames"]
            out_masks[positions] = records["mask"]
        return out_frames, out_masks

    def shards(self) -> list[str]:
        """All shard file names in the store (every owner), sorted."""
        return sorted(p.name for p in self.root.glob(f"*{SHARD_SUFFIX}") if _SHARD_RE.match(p.name))

    def scan(self) -> Iterator[FeatureRef]:
        """Every valid record of every shard (with its video id), for repairs and rebuilds.

        Torn or corrupted records (from crashes before a DB commit) are skipped with a warning. A video
        ingested twice appears twice; the DB row says which record is current.
        """
        for shard in self.shards():
            try:
                count = max(os.stat(self.root / shard).st_size - SHARD_HEADER_BYTES, 0) // self.record_bytes
                mm = self._map(shard, count) if count else None
            except FeatureStoreError as exc:
                log.warning("skipping shard %s: %s", shard, exc)
                continue
            if mm is None:
                continue
            for start in range(0, len(mm), 1024):
                records = np.asarray(mm[start:start + 1024])
                raw = records.view(np.uint8).reshape(len(records), self.record_bytes)
                for i in range(len(records)):
                    offset = SHARD_HEADER_BYTES + (start + i) * self.record_bytes
                    ok = (records["magic"][i] == RECORD_MAGIC
                          and zlib.crc32(raw[i, _CRC_START:self._crc_end]) == int(records["crc"][i]))
                    if ok:
                        yield FeatureRef(shard, offset, int(records["video_id"][i]))
                    else:
                        log.warning("skipping torn or corrupted record at %s:%d", shard, offset)

    def close(self) -> None:
        """Close the active shard, release the owner lock and drop cached maps."""
        with self._write_lock:
            self._close_active()
            if self._owner_fd is not None:
                os.close(self._owner_fd)
                self._owner_fd = None
        with self._read_lock:
            self._maps.clear()
            self._checked.clear()

    def __enter__(self) -> FeatureStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ====================================================================== vector index

INDEX_KINDS = ("flat", "hnsw", "ivfpq")
# Thresholds for kind="auto", from bench/query_bench.py (BENCHMARKS.md, "Design choices from these numbers"):
# 512-d SAVE vectors, 200 candidates re-scored exactly (~3.5 ms of reads + scoring), 2-core CPU.
# - flat below 10k: one query scans n*D floats on one core (1.3 ms at 10k, 17 ms at 100k, 166 ms at 1M).
# - HNSW from 10k to 50k: ~0.4 ms, recall@10 0.999, but ~2.3 KB of RAM per video (fp32 vector + graph), so it only
#   bridges the sizes where IVF-PQ cannot be trained yet (>= 39 vectors per list: ~25k) or barely.
# - IVF-PQ above 50k: 80-100 B per video (goal <= 200 B); recall@10 0.98-0.99 after exact re-scoring.
FLAT_MAX_VECTORS = 10_000
HNSW_MAX_VECTORS = 50_000
HNSW_M = 32
DEFAULT_EF_CONSTRUCTION = 40
DEFAULT_EF_SEARCH = 256  # 128 lost recall at 100k (0.955 vs 0.98); search asks for 200 candidates anyway
DEFAULT_NPROBE = 32
PQ_BITS = 8
MIN_POINTS_PER_CENTROID = 39  # faiss k-means wants at least this many training points per centroid
IVF_TRAIN_POINTS_PER_LIST = 40  # training sample per IVF list: 160k vectors for nlist 4000 at 1M (BENCHMARKS.md)
IVF_RETRAIN_NLIST_FACTOR = 2  # retrain when the size asks for 2x the lists (the collection grew ~4x since training)
GPU_MAX_K = 2048  # faiss GPU search limit for k (and nprobe)
_ALL_IDS = (0, 2**63 - 1)  # SQL ids are >= 0; HNSW tombstones are -1 in the id map


def ivf_nlist(n: int) -> int:
    """Number of IVF lists for n vectors: ~4*sqrt(n)."""
    return max(1, int(round(4 * math.sqrt(max(n, 1)))))


def ivfpq_min_vectors(nlist: int) -> int:
    """Training vectors IVF-PQ needs: 39 per coarse centroid and per PQ centroid (2**PQ_BITS)."""
    return MIN_POINTS_PER_CENTROID * max(nlist, 2**PQ_BITS)


def ivf_training_sample(n: int, nlist: int, seed: int = 0) -> np.ndarray | None:
    """Rows to train IVF-PQ on (sorted), or None for all n: k-means on every vector of a large collection costs
    minutes for the same quality as a sample of ~40 per list. Never fewer than the 256 points per PQ centroid
    that faiss trains the PQ codebooks on anyway (65,536 for 8-bit codes)."""
    size = max(ivfpq_min_vectors(nlist), IVF_TRAIN_POINTS_PER_LIST * nlist, 256 * 2**PQ_BITS)
    if n <= size:
        return None
    return np.sort(np.random.default_rng(seed).choice(n, size, replace=False))


def ivfpq_outgrown(trained_nlist: int, n: int) -> bool:
    """Whether an IVF-PQ index trained with ``trained_nlist`` lists should be retrained for n vectors: its lists
    have grown ~4x longer than the size's own, which costs recall and latency (BENCHMARKS.md: trained at 50k and
    grown to 1M, recall@10 0.973 and 7 ms vs 0.982 and 4.5 ms for a fresh build)."""
    return ivf_nlist(n) >= IVF_RETRAIN_NLIST_FACTOR * trained_nlist


def pq_subquantizers(dim: int) -> int:
    """PQ sub-quantizer count: the largest divisor of dim with >= 8 dims each (512 -> 64, i.e. 64 bytes/vector)."""
    return max(m for m in range(1, max(1, dim // 8) + 1) if dim % m == 0)


def choose_index_type(n: int, requested: str = "auto") -> str:
    """The index kind for n vectors: ``requested`` if explicit, else by size; IVF-PQ falls back to flat when
    there are too few vectors to train it."""
    requested = requested.lower()
    if requested not in ("auto", *INDEX_KINDS):
        raise ValueError(f"unknown index type {requested!r}; expected auto, {', '.join(INDEX_KINDS)}")
    if requested == "auto":
        kind = "flat" if n < FLAT_MAX_VECTORS else "hnsw" if n <= HNSW_MAX_VECTORS else "ivfpq"
    else:
        kind = requested
    if kind == "ivfpq" and n < ivfpq_min_vectors(ivf_nlist(n)):
        return "flat"
    return kind


def _as_batch(dim: int, vectors: Any, ids: Any) -> tuple[np.ndarray, np.ndarray]:
    """float32 [N, D] L2-normalised copy and int64 [N] ids, validated."""
    x = np.array(vectors, dtype=np.float32, copy=True, order="C")
    if x.ndim != 2 or x.shape[1] != dim:
        raise ValueError(f"vectors must be [N, {dim}], got {list(x.shape)}")
    if not np.isfinite(x).all():
        raise ValueError("vectors contain NaN/inf")
    if ids is None:
        raise ValueError("ids are required with vectors (they are the SQL video ids)")
    xids = np.ascontiguousarray(np.asarray(ids).reshape(-1), dtype=np.int64)
    if len(xids) != len(x):
        raise ValueError(f"{len(xids)} ids for {len(x)} vectors")
    if len(xids) and xids.min() < 0:
        raise ValueError("ids must be non-negative")
    if len(np.unique(xids)) != len(xids):
        raise ValueError("duplicate ids in one batch")
    faiss.normalize_L2(x)
    return x, xids


class VectorIndex:
    """Pooled video vectors in FAISS, keyed by SQL video id; inner product on L2-normalised vectors (cosine).

    - flat: ``IndexIDMap2(IndexFlatIP)``, exact; ``remove`` really deletes.
    - hnsw: ``IndexIDMap2(IndexHNSWFlat, inner product)``. HNSW cannot delete, so ``remove`` sets the id-map
      entry to -1 (a tombstone saved with the index) and searches skip it with an ``IDSelector``; call
      ``compact()`` (a rebuild from the exact stored vectors) when ``tombstones`` grows large (e.g. > 20 %).
    - ivfpq: a bare ``IndexIVFPQ`` with its native ids. Not wrapped in ``IndexIDMap2`` on purpose: IDMap's
      ``remove_ids`` renumbers its id map while IVF keeps the old internal numbers, so ids come back wrong
      after a removal (checked with faiss 1.15). IVF stores the ids itself, and removes correctly.

    Concurrent ``search`` calls are safe; ``add``/``remove``/``compact`` need a single writer and no searches
    at the same time (API processes load immutable snapshots; the indexer mutates its own copy).
    """

    def __init__(self, index: faiss.Index, kind: str | None = None, *, use_gpu: bool | None = None) -> None:
        self._index = index
        self.kind = kind or self._infer_kind(index)
        if self.kind not in INDEX_KINDS:
            raise ValueError(f"unknown index kind {self.kind!r}")
        self.dim = int(index.d)
        self._use_gpu = use_gpu
        self._gpu: faiss.Index | None = None
        self._gpu_failed = False
        self._gpu_lock = threading.Lock()
        self._dead = 0
        if self.kind == "hnsw":
            self._dead = int((faiss.vector_to_array(index.id_map) < 0).sum())

    # ------------------------------------------------------------------ construction
    @staticmethod
    def _infer_kind(index: faiss.Index) -> str:
        if isinstance(index, faiss.IndexIVFPQ):
            return "ivfpq"
        if isinstance(index, faiss.IndexIDMap2):
            inner = faiss.downcast_index(index.index)
            if isinstance(inner, faiss.IndexHNSWFlat):
                return "hnsw"
            if isinstance(inner, faiss.IndexFlat):
                return "flat"
        raise ValueError(f"unsupported FAISS index {type(index).__name__}")

    @classmethod
    def create(cls, dim: int, kind: str = "auto", vectors: np.ndarray | None = None,
               ids: np.ndarray | None = None, *, ef_search: int = DEFAULT_EF_SEARCH,
               ef_construction: int = DEFAULT_EF_CONSTRUCTION, nprobe: int = DEFAULT_NPROBE,
               nlist: int | None = None, pq_m: int | None = None, use_gpu: bool | None = None) -> VectorIndex:
        """A new index, filled with ``vectors``/``ids`` if given (IVF-PQ is trained on them).

        ``kind`` "auto" picks by count (``choose_index_type``); "ivfpq" with fewer than
        ``ivfpq_min_vectors(nlist)`` vectors falls back to flat with a warning.
        """
        if vectors is not None:
            x, xids = _as_batch(dim, vectors, ids)
        else:
            x, xids = np.zeros((0, dim), np.float32), np.zeros(0, np.int64)
        n = len(x)
        resolved = "ivfpq" if kind.lower() == "ivfpq" else choose_index_type(n, kind)
        if resolved == "ivfpq":
            nlist = nlist or ivf_nlist(n)
            if n < ivfpq_min_vectors(nlist):
                log.warning("ivfpq with nlist=%d needs >= %d training vectors, got %d: using a flat index",
                            nlist, ivfpq_min_vectors(nlist), n)
                resolved = "flat"
        metric = faiss.METRIC_INNER_PRODUCT
        if resolved == "flat":
            index = faiss.index_factory(dim, "IDMap2,Flat", metric)
        elif resolved == "hnsw":
            index = faiss.index_factory(dim, f"IDMap2,HNSW{HNSW_M}", metric)
            hnsw = faiss.downcast_index(index.index).hnsw
            hnsw.efConstruction = ef_construction
            hnsw.efSearch = ef_search
        else:
            m = pq_m or pq_subquantizers(dim)
            if dim % m:
                raise ValueError(f"pq_m={m} must divide dim={dim}")
            index = faiss.index_factory(dim, f"IVF{nlist},PQ{m}x{PQ_BITS}", metric)
            # Polysemous training only helps Hamming-filtered search, which we do not use, and costs minutes.
            index.do_polysemous_training = False
            index.nprobe = nprobe
            sample = ivf_training_sample(n, nlist)
            index.train(x if sample is None else x[sample])
        out = cls(index, resolved, use_gpu=use_gpu)
        if n:
            out.add(xids, x)
        return out

    # ------------------------------------------------------------------ mutation
    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Add vectors (normalised here); an id already present is replaced, never duplicated."""
        x, xids = _as_batch(self.dim, vectors, ids)
        if not len(x):
            return
        present = xids[np.isin(xids, self.ids())]
        if len(present):
            self.remove(present)
        self._index.add_with_ids(x, xids)
        self._gpu = None

    def remove(self, ids: Iterable[int] | np.ndarray) -> int:
        """Remove these ids (unknown ids are ignored); returns how many entries went."""
        xids = np.unique(np.asarray(list(ids) if not isinstance(ids, np.ndarray) else ids, dtype=np.int64))
        if not len(xids):
            return 0
        self._gpu = None
        if self.kind != "hnsw":
            return int(self._index.remove_ids(xids))
        id_map = faiss.vector_to_array(self._index.id_map)
        hit = np.isin(id_map, xids) & (id_map >= 0)
        count = int(hit.sum())
        if count:
            id_map[hit] = -1
            faiss.copy_array_to_vector(id_map, self._index.id_map)
            self._index.construct_rev_map()
            self._dead += count
        return count

    @property
    def tombstones(self) -> int:
        """Removed HNSW entries still in the graph (always 0 for flat and ivfpq)."""
        return self._dead

    def compact(self) -> None:
        """Rebuild an HNSW index without its tombstones (from its exact stored vectors); no-op otherwise."""
        if self.kind != "hnsw" or not self._dead:
            return
        inner = faiss.downcast_index(self._index.index)
        id_map = faiss.vector_to_array(self._index.id_map)
        live = id_map >= 0
        vectors = inner.reconstruct_n(0, inner.ntotal)[live]
        index = faiss.index_factory(self.dim, f"IDMap2,HNSW{inner.hnsw.nb_neighbors(1)}", inner.metric_type)
        hnsw = faiss.downcast_index(index.index).hnsw
        hnsw.efConstruction = inner.hnsw.efConstruction
        hnsw.efSearch = inner.hnsw.efSearch
        if live.any():
            index.add_with_ids(np.ascontiguousarray(vectors), np.ascontiguousarray(id_map[live]))
        self._index = index
        self._dead = 0
        self._gpu = None

    # ------------------------------------------------------------------ queries
    def ids(self) -> np.ndarray:
        """All live ids (int64), in storage order."""
        if self.kind == "ivfpq":
            invlists = self._index.invlists
            parts = [np.zeros(0, np.int64)]
            for list_no in range(self._index.nlist):
                size = invlists.list_size(list_no)
                if size:
                    ptr = invlists.get_ids(list_no)
                    parts.append(faiss.rev_swig_ptr(ptr, size).copy())
                    invlists.release_ids(list_no, ptr)
            return np.concatenate(parts)
        id_map = faiss.vector_to_array(self._index.id_map)
        return id_map[id_map >= 0]

    def __len__(self) -> int:
        return int(self._index.ntotal) - self._dead

    def params(self) -> dict[str, Any]:
        """Build/search parameters, recorded in snapshot manifests."""
        if self.kind == "hnsw":
            hnsw = faiss.downcast_index(self._index.index).hnsw
            return {"M": hnsw.nb_neighbors(1), "ef_construction": hnsw.efConstruction, "ef_search": hnsw.efSearch,
                    "tombstones": self._dead}
        if self.kind == "ivfpq":
            return {"nlist": self._index.nlist, "nprobe": self._index.nprobe, "pq_m": self._index.pq.M,
                    "pq_bits": self._index.pq.nbits}
        return {}

    @property
    def faiss_index(self) -> faiss.Index:
        """The CPU FAISS index (what snapshots write)."""
        return self._index

    def _gpu_index(self) -> faiss.Index | None:
        """A GPU copy for flat/ivfpq when faiss sees GPUs (made lazily, dropped on mutation); else None."""
        if self.kind == "hnsw" or self._use_gpu is False or self._gpu_failed:
            return None
        gpu = self._gpu
        if gpu is not None:
            return gpu
        with self._gpu_lock:
            if self._gpu is None and not self._gpu_failed:
                get_num_gpus = getattr(faiss, "get_num_gpus", None)
                if get_num_gpus is None or get_num_gpus() <= 0:
                    self._gpu_failed = True
                    return None
                try:
                    options = faiss.GpuMultipleClonerOptions()
                    # fp16 IVF-PQ lookup tables: needed for 64 sub-quantizers (shared memory); flat stays fp32.
                    options.useFloat16 = self.kind == "ivfpq"
                    self._gpu = faiss.index_cpu_to_all_gpus(self._index, co=options)
                except Exception as exc:  # unsupported shape/parameters on this GPU build: search on CPU
                    log.warning("cannot copy the %s index to GPU (%s); searching on CPU", self.kind, exc)
                    self._gpu_failed = True
            return self._gpu

    def search(self, queries: np.ndarray, k: int, *, ef_search: int | None = None,
               nprobe: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (scores float32 [Q, k], ids int64 [Q, k]) by cosine; missing slots are id -1, score -inf."""
        q = np.array(queries, dtype=np.float32, copy=True, order="C")
        if q.ndim == 1:
            q = q[None]
        if q.ndim != 2 or q.shape[1] != self.dim:
            raise ValueError(f"queries must be [Q, {self.dim}], got {list(q.shape)}")
        if k <= 0:
            raise ValueError("k must be positive")
        if not len(q) or not len(self):
            return np.full((len(q), k), -np.inf, dtype=np.float32), np.full((len(q), k), -1, dtype=np.int64)
        faiss.normalize_L2(q)
        result = None
        gpu = self._gpu_index() if k <= GPU_MAX_K else None
        if gpu is not None:
            try:
                params = faiss.SearchParametersIVF(nprobe=nprobe) if self.kind == "ivfpq" and nprobe else None
                result = gpu.search(q, k, params=params) if params is not None else gpu.search(q, k)
            except RuntimeError as exc:
                log.warning("GPU search failed (%s); searching on CPU from now on", exc)
                self._gpu_failed = True
        if result is None:
            result = self._cpu_search(q, k, ef_search, nprobe)
        d, i = result
        found = i >= 0
        return np.where(found, d, -np.inf).astype(np.float32), np.where(found, i, -1).astype(np.int64)

    def _cpu_search(self, q: np.ndarray, k: int, ef_search: int | None,
                    nprobe: int | None) -> tuple[np.ndarray, np.ndarray]:
        if self.kind == "hnsw":
            kwargs: dict[str, Any] = {"efSearch": ef_search or faiss.downcast_index(self._index.index).hnsw.efSearch}
            selector = faiss.IDSelectorRange(*_ALL_IDS) if self._dead else None
            if selector is not None:
                # IDMap translates internal -> stored id before asking the selector: tombstones (-1) are skipped.
                kwargs["sel"] = selector
            return self._index.search(q, k, params=faiss.SearchParametersHNSW(**kwargs))
        if self.kind == "ivfpq" and nprobe:
            return self._index.search(q, k, params=faiss.SearchParametersIVF(nprobe=nprobe))
        return self._index.search(q, k)


# ====================================================================== snapshots

MANIFEST = "manifest.json"
LOCK_FILE = ".lock"
_SNAPSHOT_RE = re.compile(r"^index-(\d+)\.faiss$")


class SnapshotError(Exception):
    """A snapshot folder is inconsistent (unreadable manifest, missing or mismatched index file)."""


@contextlib.contextmanager
def _folder_lock(folder: Path) -> Iterator[None]:
    """Exclusive ``flock`` on ``folder/.lock``: serialises writers (threads and processes alike)."""
    fd = os.open(folder / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _read_manifest(folder: Path) -> dict[str, Any] | None:
    try:
        text = (Path(folder) / MANIFEST).read_text()
    except FileNotFoundError:
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise SnapshotError(f"unreadable {MANIFEST} in {folder}: {exc}") from exc


def _temp_path(final: Path) -> Path:
    return final.with_name(f".{final.name}.{os.getpid()}.{threading.get_ident()}.tmp")


def _publish(tmp: Path, final: Path) -> None:
    """fsync the finished temp file, rename it over ``final`` atomically, and make the rename durable."""
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, final)
    _fsync_dir(final.parent)


def _write_index_file(index: VectorIndex, path: Path) -> None:
    tmp = _temp_path(path)
    try:
        faiss.write_index(index.faiss_index, str(tmp))
        _publish(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _write_manifest(folder: Path, manifest: dict[str, Any]) -> None:
    path = folder / MANIFEST
    tmp = _temp_path(path)
    try:
        tmp.write_text(json.dumps(manifest, indent=2))
        _publish(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _snapshot_versions(folder: Path) -> dict[int, Path]:
    out = {}
    for p in folder.iterdir():
        m = _SNAPSHOT_RE.match(p.name)
        if m:
            out[int(m.group(1))] = p
    return out


def save_snapshot(index: VectorIndex, folder: Path, model_version: str, extra: dict | None = None) -> int:
    """Publish ``index`` as the next snapshot version in ``folder``; returns the version.

    Order: index file (temp + fsync + rename), then the manifest (same), then cleanup. A crash at any point
    leaves the previous manifest naming a complete previous file. The previous snapshot's file is kept, so
    a reader that has just read the old manifest can still open it. Writers serialise on ``folder/.lock``;
    readers never need it.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with _folder_lock(folder):
        previous = _read_manifest(folder)
        # Never reuse a number, also not one of a file orphaned by a crash between file and manifest.
        known = [int(previous["version"])] if previous else []
        version = max([0, *known, *_snapshot_versions(folder)]) + 1
        name = f"index-{version}.faiss"
        _write_index_file(index, folder / name)
        now = time.time()
        manifest = {
            "format": 1,
            "version": version,
            "file": name,
            "model_version": model_version,
            "count": len(index),
            "kind": index.kind,
            "dim": index.dim,
            "params": index.params(),
            "bytes": (folder / name).stat().st_size,
            "created": datetime.fromtimestamp(now, UTC).isoformat(),
            "created_unix": now,
            "previous": previous["file"] if previous else None,
            "extra": dict(extra or {}),
        }
        _write_manifest(folder, manifest)
        keep = {name, manifest["previous"]}
        for p in folder.iterdir():
            stale_snapshot = _SNAPSHOT_RE.match(p.name) and p.name not in keep
            stale_temp = p.name.startswith((".index-", f".{MANIFEST}")) and p.name.endswith(".tmp")  # crashed saves
            if stale_snapshot or stale_temp:
                p.unlink(missing_ok=True)
    return version


def current_version(folder: Path) -> int | None:
    """The published snapshot version (one small file read), for readers polling for a new snapshot."""
    manifest = _read_manifest(Path(folder))
    return int(manifest["version"]) if manifest else None


def load_snapshot(folder: Path, *, use_gpu: bool | None = None) -> tuple[VectorIndex, dict[str, Any]] | None:
    """The current snapshot (index, manifest), or None when nothing was published yet. No lock needed.

    If the named file vanished (two newer snapshots were published while we read), re-read the manifest.
    Check ``manifest["model_version"]`` against the model that encodes queries before using the index.
    """
    folder = Path(folder)
    for _attempt in range(5):
        manifest = _read_manifest(folder)
        if manifest is None:
            return None
        path = folder / manifest["file"]
        if not path.exists():
            continue
        try:
            raw = faiss.read_index(str(path))
        except RuntimeError as exc:
            if not path.exists():
                continue
            raise SnapshotError(f"cannot read {path}: {exc}") from exc
        index = VectorIndex(raw, use_gpu=use_gpu)
        if index.kind != manifest["kind"]:
            raise SnapshotError(f"{path} holds a {index.kind} index; the manifest says {manifest['kind']}")
        if len(index) != manifest["count"] or index.dim != manifest["dim"]:
            raise SnapshotError(f"{path} holds {len(index)} vectors of dim {index.dim}; the manifest says "
                                f"{manifest['count']} of dim {manifest['dim']}")
        return index, manifest
    raise SnapshotError(f"the snapshot named by {folder / MANIFEST} keeps disappearing")
