"""FAISS over L2-normalised vectors, keyed by SQL ids (inner product = cosine), and the policy that picks the index
type from the collection size (``choose_index_type``; thresholds measured in BENCHMARKS.md).
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Iterable
from typing import Any

import faiss
import numpy as np

log = logging.getLogger(__name__)


INDEX_KINDS = ("flat", "hnsw", "ivfpq")
# Thresholds for kind="auto", from bench/index_bench.py (BENCHMARKS.md, "Design choices from these numbers"):
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
            assert nlist is not None  # set with the ivfpq choice above
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
