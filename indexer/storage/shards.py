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
import json
import logging
import os
import re
import secrets
import struct
import threading
import zlib
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from indexer.storage.files import fsync_dir, try_lock

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


def _crc(data: np.ndarray) -> int:
    """CRC-32 of an array's bytes, read in place (numpy arrays are buffers; their stubs do not say so)."""
    return zlib.crc32(data)  # type: ignore[arg-type]


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


def checked_features(frames: np.ndarray, mask: np.ndarray, n_frames: int, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """A video's frame features as every store writes them: fp16 [n_frames, dim] (C order) and the mask as given,
    both of the right shape and the features finite in fp16; else ``ValueError``, before anything is written."""
    f, m = np.asarray(frames), np.asarray(mask)
    if f.shape != (n_frames, dim):
        raise ValueError(f"frames must be [{n_frames}, {dim}], got {list(f.shape)}")
    if m.shape != (n_frames,):
        raise ValueError(f"mask must be [{n_frames}], got {list(m.shape)}")
    f16 = np.ascontiguousarray(f, dtype=np.float16)
    if not np.isfinite(f16).all():
        raise ValueError("frames contain NaN/inf (or values beyond fp16 range)")
    return f16, m


def write_tag() -> int:
    """A random tag of one write, so that a cache can tell one write of a video id from the next: the ``offset`` of a
    ref into a frame store addressed by video id alone (the database table, Milvus), kept in ``Video.feature_offset``
    (``indexer.storage.frame_cache``), and ``Video.text_tag`` for its segments and passages
    (``indexer.search.passage_cache``)."""
    return secrets.randbits(62)


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
            fsync_dir(self.root)
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
        fsync_dir(self.root)
        self._active_fd, self._active_name, self._active_size = fd, name, SHARD_HEADER_BYTES
        self._active_seq = seq

    def _encode(self, video_id: int, frames: np.ndarray, mask: np.ndarray) -> bytes:
        video_id = int(video_id)
        if not 0 <= video_id < 2**63:
            raise ValueError(f"video_id must be a non-negative int64, got {video_id}")
        f16, m = checked_features(frames, mask, self.frames, self.dim)
        rec = np.zeros(1, dtype=self.dtype)
        rec["magic"] = RECORD_MAGIC
        rec["video_id"] = video_id
        rec["frames"][0] = f16
        rec["mask"][0] = m != 0
        raw = rec.view(np.uint8)
        rec["crc"] = _crc(raw[_CRC_START:self._crc_end])
        return raw.tobytes()

    def append(self, video_id: int, frames: np.ndarray, mask: np.ndarray, session: Any = None) -> FeatureRef:
        """Write one record durably (write + fsync) and return where it is (``session``: unused, files are outside
        the database's transactions).

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
            if _crc(raw[i, _CRC_START:self._crc_end]) != int(records["crc"][i]):
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
                          and _crc(raw[i, _CRC_START:self._crc_end]) == int(records["crc"][i]))
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


