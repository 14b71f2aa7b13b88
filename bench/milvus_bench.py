"""Milvus backend: why Milvus Lite's recall stopped at 0.69, and where the frames for re-scoring should come from.

    .venv/bin/python -m bench.milvus_bench recall --sizes 100000,1000000     # part 1, appends to BENCHMARKS.md
    .venv/bin/python -m bench.milvus_bench frames --videos 100000           # part 2
    .venv/bin/python -m bench.milvus_bench frames --videos 5000 --queries 20 --no-append   # a smoke run

``recall``: one synthetic collection per size (``bench.synthetic.generate``: 12 x 512 fp16 frames per video in
feature shards, pooled vectors, and the exact SAVE top 10 of every query over all videos). Candidate generation on
each backend as the service runs it, then what the service does with the candidates: ``max(200, 4k)`` of them,
their frames read, exact SAVE re-scoring, top 10. Reported: raw ANN recall@10 (against the cosine order of the
pooled vectors, the ANN's own job), the share of the cosine top 10 among the candidates, and recall@10 after
re-scoring against the exact SAVE top 10 (what users get). Milvus Lite runs through ``MilvusCatalog`` itself:
with the index types the service could be configured with before this branch (``exact_on_lite=False``), and as
this branch opens it (FLAT on Lite). The index types share one collection: the index is replaced in between.

``frames``: n videos' frame features written to every store, then the same random candidate id lists (400 per
query by default) read from each, one store after the other per query (interleaved, so load from other jobs hits
them alike): the Milvus ``frames`` collection through ``MilvusFrames.read_many`` (in one query as before, and in
batches as now), a Lite collection created with ``mmap.enabled``, a ``video_frames`` table in PostgreSQL and in
SQLite (``bytea``/BLOB, one ``WHERE video_id IN (...)``), the FAISS-mode feature shards, and the read-through
LRU cache (``indexer.storage.frame_cache.CachedFeatures``) in front of PostgreSQL and of Milvus: cold, warm, and
with a capacity of a share of the collection under uniformly random candidates.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import os
import secrets
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np

from bench.harness import (
    DIM,
    FRAMES,
    WORK,
    command_line,
    entry,
    load1,
    md_table,
    percentile,
    publish,
    require_disk,
    set_omp_wait_policy,
    wait_for_quiet,
)

TOP_K = 10
# BENCHMARKS.md topics (stable titles: a rerun replaces its section)
RECALL_TITLE = "Milvus Lite recall: the interim index, and recall after re-scoring"
FRAMES_TITLE = "Frames read for re-scoring on Milvus"
FRAMES_DB_TITLE = "Frames read for re-scoring: the database stores alone"


def size_label(n: int) -> str:
    return f"{n // 1_000_000}M" if n % 1_000_000 == 0 else f"{n // 1000}k" if n % 1000 == 0 else str(n)


def dir_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


@contextlib.contextmanager
def lite(folder: Path) -> Iterator[tuple[object, int]]:
    """(MilvusClient, server pid) of a fresh Milvus Lite gRPC server in ``folder`` (removed afterwards)."""
    from bench.harness import connect_milvus, free_port, milvus_lite_server

    shutil.rmtree(folder, ignore_errors=True)
    port = free_port()
    try:
        with milvus_lite_server(folder, port) as pid:
            client = connect_milvus(f"http://127.0.0.1:{port}")
            try:
                yield client, pid
            finally:
                client.close()
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def unit_rows(x: np.ndarray) -> np.ndarray:
    """float32 copy with L2-normalised rows (what the indexes hold: inner product = cosine)."""
    out = x.astype(np.float32)
    out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
    return out


def cosine_top(pooled16: np.ndarray, queries: np.ndarray, k: int, chunk: int = 100_000) -> np.ndarray:
    """Exact top k video ids (row i = id i + 1) of each query by cosine of the pooled vectors."""
    top_s = np.full((len(queries), k), -np.inf, np.float32)
    top_i = np.zeros((len(queries), k), np.int64)
    for lo in range(0, len(pooled16), chunk):
        x = unit_rows(pooled16[lo:lo + chunk])
        both_s = np.concatenate([top_s, queries @ x.T], axis=1)
        both_i = np.concatenate([top_i, np.broadcast_to(np.arange(lo + 1, lo + len(x) + 1), (len(queries), len(x)))],
                                axis=1)
        best = np.argsort(-both_s, axis=1, kind="stable")[:, :k]
        top_s, top_i = np.take_along_axis(both_s, best, 1), np.take_along_axis(both_i, best, 1)
    return top_i


# ----------------------------------------------------------------------------------------------- part 1: recall
def rescored_top(col, store, q: np.ndarray, found: np.ndarray) -> np.ndarray:
    """What search does with ANN candidates: read their frames, exact SAVE scores, top 10 (ties by id)."""
    import torch

    from bench.synthetic import LOGIT_SCALE
    from models.similarity import save_similarity

    frames, masks = store.read_many(col.refs(found))
    pooled = col.pooled16[found - 1].astype(np.float32)
    scores = save_similarity(torch.from_numpy(q[None]), torch.from_numpy(frames.astype(np.float32)),
                             torch.from_numpy(masks.astype(np.int64)), torch.from_numpy(pooled),
                             LOGIT_SCALE).numpy()[0]
    return found[np.lexsort((found, -scores))[:TOP_K]]


def measure_ann(label: str, search: Callable[[np.ndarray, int], list[int]], col, store, cos_truth: np.ndarray,
                candidates: int, note: str = "") -> list[object]:
    """One table row: raw recall@10 vs the cosine order, cosine top 10 among the candidates, recall@10 after
    SAVE re-scoring vs the exact SAVE top 10, and the latency of the candidate search."""
    raw = cand = rescored = 0
    ms = []
    for qi, q in enumerate(col.queries):
        top10 = search(q, TOP_K)
        t0 = time.perf_counter()
        found = np.asarray(search(q, candidates), dtype=np.int64)
        ms.append(1000 * (time.perf_counter() - t0))
        truth = set(cos_truth[qi].tolist())
        raw += len(truth & set(top10))
        cand += len(truth & set(found.tolist()))
        rescored += len(set(col.exact_top[qi].tolist()) & set(rescored_top(col, store, q, found).tolist()))
    denom = TOP_K * len(col.queries)
    row = [size_label(col.n), label, f"{raw / denom:.3f}", f"{cand / denom:.3f}", f"{rescored / denom:.3f}",
           percentile(ms, 50), percentile(ms, 99), note]
    print(f"  load {load1():.2f}: " + " | ".join(str(x) for x in row), flush=True)
    return row


def faiss_searcher(index) -> Callable[[np.ndarray, int], list[int]]:
    def search(q: np.ndarray, k: int) -> list[int]:
        _, ids = index.search(q[None], k)
        return [int(i) for i in ids[0] if i >= 0]
    return search


def recall_rows(n: int, args: argparse.Namespace, work: Path) -> list[list[object]]:
    from bench.synthetic import Synth, build_index, generate, search_defaults
    from indexer.storage.faiss_index import DEFAULT_NPROBE, choose_index_type, ivf_nlist
    from indexer.storage.milvus import MilvusCatalog
    from indexer.storage.shards import FeatureStore

    print(f"== {size_label(n)} videos, load {load1():.2f}", flush=True)
    col = generate(n, work / f"recall-{n}" / "home", Synth(), args.queries, args.seed + n)
    print(f"  generated in {col.gen_seconds:.0f} s", flush=True)
    cos_truth = cosine_top(col.pooled16, col.queries, TOP_K)
    store = FeatureStore(col.features_dir, FRAMES, DIM, owner="reader")
    candidates = max(search_defaults()[1], 4 * TOP_K)
    rows: list[list[object]] = []

    kind = choose_index_type(n)
    for label, built in ((f"FAISS {kind} (the service's `auto` at this size)", lambda: build_index(
            col, kind, train_max=40 * ivf_nlist(n))), ("FAISS flat (exact candidates: the ceiling)",
                                                        lambda: build_index(col, "flat", 0))):
        index = built()
        note = f"{index.note}; nprobe {DEFAULT_NPROBE}" if index.kind == "ivfpq" else index.note or "exact scan"
        rows.append(measure_ann(label, faiss_searcher(index.index), col, store, cos_truth, candidates, note))
        index = None
        gc.collect()

    with lite(work / f"lite-{n}") as (client, _pid):
        prefix = f"recall{n}"
        before = MilvusCatalog(client, None, "bench", DIM, "bench", 384, prefix=prefix, index_type="AUTOINDEX",
                               exact_on_lite=False)  # type: ignore[arg-type]
        before.load()
        name = before.names["videos"]
        t0 = time.perf_counter()
        for lo in range(0, n, 1000):
            part = unit_rows(col.pooled16[lo:lo + 1000])
            client.insert(name, [{"id": lo + i + 1, "vector": v} for i, v in enumerate(part)])
        print(f"  milvus lite: inserted in {time.perf_counter() - t0:.0f} s", flush=True)
        rows.append(measure_ann("Milvus Lite AUTOINDEX (before: the default `SAVE_SEARCH_MILVUS_INDEX`)",
                                before.search_videos, col, store, cos_truth, candidates,
                                "as created before this branch; no search params"))
        client.drop_index(name, "vector")
        ivf = MilvusCatalog(client, None, "bench", DIM, "bench", 384, prefix=prefix, index_type="IVF_FLAT",
                            nprobe=32, exact_on_lite=False)  # type: ignore[arg-type]
        client.create_index(name, ivf._index_params("vector"))  # noqa: SLF001 - the catalog's own IVF parameters
        client.load_collection(name)
        rows.append(measure_ann("Milvus Lite IVF_FLAT nprobe 32 (before: `SAVE_SEARCH_MILVUS_INDEX=IVF_FLAT`)",
                                ivf.search_videos, col, store, cos_truth, candidates,
                                "nlist 1024; search params {nprobe: 32} sent"))
        t0 = time.perf_counter()
        after = MilvusCatalog(client, None, "bench", DIM, "bench", 384, prefix=prefix,
                              index_type="AUTOINDEX")  # type: ignore[arg-type]
        after.load()  # this branch: sees Lite, replaces the index by FLAT
        swap_s = time.perf_counter() - t0
        rows.append(measure_ann("Milvus Lite, this branch (FLAT on Lite)", after.search_videos, col, store,
                                cos_truth, candidates, f"index {client.describe_index(name, 'vector')['index_type']}"
                                f", replaced in {swap_s:.0f} s"))
    store.close()
    shutil.rmtree(work / f"recall-{n}", ignore_errors=True)
    return rows


def recall_main(args: argparse.Namespace, command: str) -> str:
    import milvus_lite
    import pymilvus

    sizes = [int(x) for x in args.sizes.split(",") if x.strip()]
    work = WORK / "milvus-recall"
    require_disk(WORK, max(sizes) * 12_400 / 1024**3 + 2)
    load = wait_for_quiet(max_wait_s=args.quiet_wait_s)
    started = time.monotonic()
    rows: list[list[object]] = []
    try:
        for n in sizes:
            rows += recall_rows(n, args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    table = md_table(["videos", "candidate generation", "raw recall@10 (vs cosine)", "cosine top 10 in the 200 "
                      "candidates", "recall@10 after SAVE re-scoring (what users get)", "p50 ms (200 candidates)",
                      "p99 ms", "note"], rows)
    body = (f"Synthetic collection of `bench.synthetic` ({args.queries} queries, 12 x 512 fp16 frames per video); "
            f"Milvus Lite {milvus_lite.__version__} as a gRPC server process (pymilvus {pymilvus.__version__}), "
            f"searched through `MilvusCatalog.search_videos`. Raw recall@10: the ANN's own top 10 against the exact "
            f"cosine top 10 of the pooled vectors. Candidates: the service's `max(200, 4k)` = 200 for k = 10; after "
            f"re-scoring: their frames read from the feature shards, exact SAVE score (logit scale 100), top 10, "
            f"against the exact SAVE top 10 over all videos. Run time {time.monotonic() - started:.0f} s.\n\n{table}")
    return entry(RECALL_TITLE, command, load, body)


# ----------------------------------------------------------------------------------------------- part 2: frames
class SqlFrames:
    """Prototype ``FeatureStorage`` on a database table ``video_frames(video_id PK, frames, mask)``: the frames as
    fp16 bytes (12 x 512 x 2 = 12,288 B), the mask as one byte per frame; read with one ``WHERE video_id IN``."""

    def __init__(self, url: str, frames: int = FRAMES, dim: int = DIM) -> None:
        from sqlalchemy import BigInteger, Column, LargeBinary, MetaData, Table, create_engine

        self.frames, self.dim = frames, dim
        self.engine = create_engine(url)
        self.meta = MetaData()
        self.table = Table("video_frames", self.meta, Column("video_id", BigInteger, primary_key=True,
                                                               autoincrement=False),
                           Column("frames", LargeBinary, nullable=False), Column("mask", LargeBinary, nullable=False))
        self.meta.create_all(self.engine)

    def append_many(self, ids: Sequence[int], frames: np.ndarray, masks: np.ndarray) -> None:
        rows = [{"video_id": int(v), "frames": frames[i].astype(np.float16).tobytes(),
                 "mask": masks[i].astype(np.uint8).tobytes()} for i, v in enumerate(ids)]
        with self.engine.begin() as conn:
            conn.execute(self.table.insert(), rows)

    def read_many(self, refs, binary: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """``binary`` (PostgreSQL): psycopg's binary protocol and ``= ANY(%s)`` on the raw connection: bytea comes
        as bytes, not as hex text twice the size (SQLAlchemy's default path)."""
        from sqlalchemy import select

        from indexer.storage.shards import FeatureStoreError

        refs = list(refs)
        wanted = sorted({int(r.video_id) for r in refs})
        t = self.table
        if binary:
            conn = self.engine.raw_connection()
            try:
                with conn.driver_connection.cursor(binary=True) as cur:
                    cur.execute("SELECT video_id, frames, mask FROM video_frames WHERE video_id = ANY(%s)", (wanted,))
                    rows = {int(v): (f, m) for v, f, m in cur.fetchall()}
            finally:
                conn.close()
        else:
            with self.engine.connect() as conn:
                rows = {int(v): (f, m) for v, f, m in conn.execute(
                    select(t.c.video_id, t.c.frames, t.c.mask).where(t.c.video_id.in_(wanted)))}
        out_f = np.empty((len(refs), self.frames, self.dim), np.float16)
        out_m = np.empty((len(refs), self.frames), np.uint8)
        for i, ref in enumerate(refs):
            if ref.video_id not in rows:
                raise FeatureStoreError(f"no frame features of video {ref.video_id}")
            f, m = rows[ref.video_id]
            out_f[i] = np.frombuffer(f, np.float16).reshape(self.frames, self.dim)
            out_m[i] = np.frombuffer(m, np.uint8)
        return out_f, out_m

    def read_many_binary(self, refs) -> tuple[np.ndarray, np.ndarray]:
        return self.read_many(refs, binary=True)

    def size_bytes(self) -> int:
        from sqlalchemy import text

        if self.engine.dialect.name == "postgresql":
            with self.engine.connect() as conn:
                return int(conn.execute(text("SELECT pg_total_relation_size('video_frames')")).scalar_one())
        return Path(self.engine.url.database).stat().st_size

    def close(self) -> None:
        self.engine.dispose()


class PgBinary:
    """``SqlFrames`` read through psycopg's binary protocol, as a ``FeatureStorage`` (for the cache)."""

    def __init__(self, inner: SqlFrames) -> None:
        self.inner = inner

    def append(self, video_id: int, frames: np.ndarray, mask: np.ndarray):
        self.inner.append_many([video_id], frames[None], mask[None])

    def read_many(self, refs) -> tuple[np.ndarray, np.ndarray]:
        return self.inner.read_many(refs, binary=True)


def milvus_frame_rows(ids: np.ndarray, frames: np.ndarray, masks: np.ndarray) -> list[dict]:
    """Rows as ``MilvusFrames.append`` writes them (one upsert per video there; inserted in batches here)."""
    now = int(time.time())
    return [{"id": int(v), "frames": frames[i].astype(np.float16).reshape(-1),
             "mask": "".join("1" if x else "0" for x in masks[i].tolist()), "written": now}
            for i, v in enumerate(ids)]


def frames_main(args: argparse.Namespace, command: str) -> str:
    import milvus_lite
    import pymilvus
    from pymilvus import DataType, MilvusClient

    from bench.harness import proc_rss, scratch_database
    from bench.synthetic import Synth, generate
    from indexer.storage import milvus
    from indexer.storage.frame_cache import CachedFeatures
    from indexer.storage.milvus import MILVUS_SHARD, MilvusCatalog, collection_name
    from indexer.storage.shards import FeatureRef, FeatureStore

    n, k = args.videos, args.candidates
    work = WORK / "milvus-frames"
    require_disk(WORK, n * 12_400 * 6 / 1024**3)
    shutil.rmtree(work, ignore_errors=True)
    load = wait_for_quiet(max_wait_s=args.quiet_wait_s)
    started = time.monotonic()
    sizes: list[list[object]] = []
    try:
        col = generate(n, work / "home", Synth(), 1, args.seed)
        shards = FeatureStore(col.features_dir, FRAMES, DIM, owner="reader")
        sizes.append(["FAISS-mode feature shards (memory-mapped files)", col.record_bytes, "page cache", ""])
        print(f"  generated {n} videos in {col.gen_seconds:.0f} s", flush=True)

        def source(lo: int, hi: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
            ids = np.arange(lo + 1, hi + 1)
            f, m = shards.read_many(col.refs(ids))
            return ids, f, m

        with contextlib.ExitStack() as stack:
            client, pid = stack.enter_context(lite(work / "lite"))
            catalog = MilvusCatalog(client, None, "bench", DIM, "bench", 384, prefix="framesbench")  # type: ignore[arg-type]
            frames_store = catalog.open_features(FRAMES, DIM, "bench")
            # (b) the same collection created with mmap.enabled (Lite has no AlterCollection: set at creation)
            mmap_name = collection_name("framesbench", "framesmmap", "bench", DIM)
            schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
            schema.add_field("id", DataType.INT64, is_primary=True)
            schema.add_field("frames", DataType.FLOAT16_VECTOR, dim=FRAMES * DIM)
            schema.add_field("mask", DataType.VARCHAR, max_length=FRAMES)
            schema.add_field("written", DataType.INT64)
            params = client.prepare_index_params()
            params.add_index(field_name="frames", index_type="FLAT", metric_type="IP")
            mmap_note = ""
            try:
                client.create_collection(mmap_name, schema=schema, index_params=params, consistency_level="Strong",
                                         properties={"mmap.enabled": "true"})
                props = client.describe_collection(mmap_name).get("properties", {})
                mmap_note = f"created with mmap.enabled; describe_collection properties: {props}"
            except Exception as exc:  # noqa: BLE001 - what Lite answers is the finding
                mmap_note = f"create with mmap.enabled refused: {type(exc).__name__}: {str(exc)[:120]}"
                mmap_name = ""
            try:
                client.alter_collection_properties(frames_store.name, properties={"mmap.enabled": True})
                mmap_note += "; alter_collection_properties accepted"
            except Exception as exc:  # noqa: BLE001
                mmap_note += f"; alter_collection_properties: {type(exc).__name__} {getattr(exc, 'code', lambda: '')()}"
            print(f"  mmap: {mmap_note}", flush=True)
            mmap_store = milvus.MilvusFrames(client, mmap_name, FRAMES, DIM) if mmap_name else None
            if mmap_store is not None:
                client.load_collection(mmap_name)

            pg_url = stack.enter_context(scratch_database(f"milvus_bench_{os.getpid()}_{secrets.token_hex(3)}"))
            pg = SqlFrames(pg_url)
            stack.callback(pg.close)
            sqlite = SqlFrames(f"sqlite:///{work / 'frames.sqlite'}")
            stack.callback(sqlite.close)

            write_s: dict[str, float] = {}
            rss: dict[str, int] = {}
            disk: dict[str, int] = {}
            lite_db = work / "lite"
            for label, write in (
                    ("milvus", lambda ids, f, m: client.insert(frames_store.name, milvus_frame_rows(ids, f, m))),
                    ("milvus mmap", (lambda ids, f, m: client.insert(mmap_name, milvus_frame_rows(ids, f, m)))
                     if mmap_store else None),
                    ("postgresql", pg.append_many), ("sqlite", sqlite.append_many)):
                if write is None or (args.without_milvus and label.startswith("milvus")):
                    continue
                rss0, disk0 = proc_rss(pid), dir_bytes(lite_db)
                t0 = time.perf_counter()
                batch = 200 if label.startswith("milvus") else 1000
                for lo in range(0, n, batch):
                    write(*source(lo, min(n, lo + batch)))
                write_s[label] = time.perf_counter() - t0
                rss[label], disk[label] = proc_rss(pid) - rss0, dir_bytes(lite_db) - disk0
                print(f"  wrote {label} in {write_s[label]:.0f} s", flush=True)
            if "milvus" in write_s:
                sizes.append(["Milvus Lite `frames` collection", disk["milvus"] / n,
                              f"{rss['milvus'] / n:,.0f} (server)",
                              f"{n / write_s['milvus']:.0f} videos/s (batches of 200)"])
            sizes += [["PostgreSQL `video_frames` (bytea)", pg.size_bytes() / n, "shared buffers / page cache",
                       f"{n / write_s['postgresql']:.0f} videos/s (batches of 1000)"],
                      ["SQLite `video_frames` (BLOB)", sqlite.size_bytes() / n, "page cache",
                       f"{n / write_s['sqlite']:.0f} videos/s (batches of 1000)"]]
            if "milvus mmap" in write_s:
                sizes.append(["Milvus Lite collection created with `mmap.enabled`", disk["milvus mmap"] / n,
                              f"{rss['milvus mmap'] / n:,.0f} (server)",
                              f"{n / write_s['milvus mmap']:.0f} videos/s"])

            cap_share = args.cache_share
            per_entry = FRAMES * DIM * 2 + FRAMES + 400
            pg_binary = PgBinary(pg)
            cache_pg_cold = CachedFeatures(pg_binary, "bench", 10 * n * per_entry)
            cache_pg_warm = CachedFeatures(pg_binary, "bench", 10 * n * per_entry)
            cache_pg_share = CachedFeatures(pg_binary, "bench", int(cap_share * n) * per_entry)
            cache_mv_share = CachedFeatures(frames_store, "bench", int(cap_share * n) * per_entry)

            def milvus_one_query(refs):
                old, milvus.READ_BATCH = milvus.READ_BATCH, milvus.MAX_LIMIT
                try:
                    return frames_store.read_many(refs)
                finally:
                    milvus.READ_BATCH = old

            def batched(size: int):
                def read(refs):
                    old, milvus.READ_BATCH = milvus.READ_BATCH, size
                    try:
                        return frames_store.read_many(refs)
                    finally:
                        milvus.READ_BATCH = old
                return read

            def cold(refs):
                cache_pg_cold.clear()
                return cache_pg_cold.read_many(refs)

            options: list[tuple[str, Callable, int]] = [  # (label, read, queries it runs: the slow one runs fewer)
                ("(a) Milvus `frames`, one query of all ids (before)", milvus_one_query, args.slow_queries),
                (f"(a) Milvus `frames`, batches of {milvus.READ_BATCH} ids (this branch)", frames_store.read_many,
                 args.queries),
                ("(a) Milvus `frames`, batches of 25 ids", batched(25), args.slow_queries),
                ("(a) Milvus `frames`, batches of 100 ids", batched(100), args.slow_queries),
            ]
            if mmap_store is not None:
                options.append(("(b) Milvus, collection created with mmap.enabled, batches of "
                                f"{milvus.READ_BATCH}", mmap_store.read_many, args.queries))
            options += [
                ("(c) PostgreSQL `video_frames`, one `IN (...)` (SQLAlchemy, text protocol)", pg.read_many,
                 args.queries),
                ("(c) PostgreSQL `video_frames`, one `= ANY(%s)` (psycopg, binary protocol)", pg.read_many_binary,
                 args.queries),
                ("(c) SQLite `video_frames`, one `IN (...)`", sqlite.read_many, args.queries),
                ("FAISS mode: feature shards (reference)", lambda refs: shards.read_many(col.refs(
                    np.array([r.video_id for r in refs]))), args.queries),
                ("(d) LRU cache over PostgreSQL (binary), cold (every id a miss)", cold, args.queries),
                ("(d) LRU cache over PostgreSQL (binary), warm (every id a hit)", cache_pg_warm.read_many,
                 args.queries),
                (f"(d) LRU cache over PostgreSQL (binary), {cap_share:.0%} of the videos fit, uniform ids",
                 cache_pg_share.read_many, args.queries),
                (f"(d) LRU cache over Milvus (batches), {cap_share:.0%} of the videos fit, uniform ids",
                 cache_mv_share.read_many, args.queries),
            ]
            caches = {options[-3][0]: cache_pg_warm, options[-2][0]: cache_pg_share, options[-1][0]: cache_mv_share}
            if args.without_milvus:
                options = [o for o in options if "Milvus" not in o[0]]
                caches = {label: cache for label, cache in caches.items() if "Milvus" not in label}
            rng = np.random.default_rng(args.seed)
            id_lists = [rng.choice(np.arange(1, n + 1), min(k, n), replace=False) for _ in range(args.queries)]
            # warm-up: the shared-capacity caches start full (a long-running API process), the warm one holds
            # each query's ids; every store reads a few lists first (connections, page cache of the index)
            for cache in [c for c in caches.values() if c is not cache_pg_warm]:
                for _ in range(10 * n // max(k, 1)):  # until full (entries stop growing)
                    before = len(cache)
                    cache.read_many([FeatureRef(MILVUS_SHARD, 0, int(v)) for v in rng.choice(np.arange(1, n + 1), k)])
                    if len(cache) == before:
                        break
            for ids in id_lists:
                cache_pg_warm.read_many([FeatureRef(MILVUS_SHARD, 0, int(v)) for v in ids])
            for cache in caches.values():
                cache.hits = cache.misses = 0
            for _, read, _ in options:
                read([FeatureRef(MILVUS_SHARD, 0, int(v)) for v in id_lists[0][:50]])
            cache_pg_warm.hits = cache_pg_warm.misses = 0
            times: dict[str, list[float]] = {label: [] for label, _, _ in options}
            checks = {}
            loads = [load1()]
            for qi, ids in enumerate(id_lists):
                refs = [FeatureRef(MILVUS_SHARD, 0, int(v)) for v in ids]
                expect = None
                for label, read, count in options:
                    if qi >= count:
                        continue
                    t0 = time.perf_counter()
                    f, m = read(refs)
                    times[label].append(1000 * (time.perf_counter() - t0))
                    if expect is None:
                        expect = (f, m)
                    elif qi < 3:  # every store returns the same records
                        checks[label] = bool(np.array_equal(f, expect[0]) and np.array_equal(m, expect[1]))
                if qi % 20 == 19:
                    loads.append(load1())
                    print(f"  {qi + 1} queries, load {loads[-1]:.2f}", flush=True)
            hit_rates = {label: c.hits / max(1, c.hits + c.misses) for label, c in caches.items()}
            rows = [[label, len(times[label]), percentile(times[label], 50), percentile(times[label], 99),
                     f"{hit_rates[label]:.0%}" if label in hit_rates else ("0%" if "cold" in label else "-"),
                     "" if checks.get(label, True) else "DIFFERENT RECORDS"] for label, _, _ in options]
            cache_note = (f"cache entry {per_entry:,} B ({FRAMES} x {DIM} fp16 + mask + ~400 B of Python objects); "
                          f"{cap_share:.0%} of {n:,} videos = {cap_share * n * per_entry / 2**20:,.0f} MiB")
            shards.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    body = (f"{n:,} videos of the synthetic collection (`bench.synthetic.generate`: 12 x 512 fp16 frames per "
            f"video, 20 % with fewer than 12 valid frames), the same frames in every store. Each query reads the "
            f"frames and masks of {k} random candidate ids (distinct, uniform over the collection) as one "
            f"`read_many` and gets fp16 [{k}, 12, 512] and the masks back, the stores one after the other per query "
            f"(interleaved); {args.queries} queries (the slow variants: the first {args.slow_queries}). Milvus Lite "
            f"{milvus_lite.__version__} as a gRPC server process on this machine (pymilvus {pymilvus.__version__}); "
            f"PostgreSQL 15 on this machine over TCP (SQLAlchemy + psycopg 3, a pooled connection); SQLite file on "
            f"local disk. All data in the page cache (warm). 1-min load average during the reads (every 20 queries): "
            f"{min(loads):.2f} to {max(loads):.2f}. {mmap_note}. {cache_note}. Run time "
            f"{time.monotonic() - started:.0f} s.\n\n"
            + md_table(["frames read (400 candidates)", "queries", "p50 ms", "p99 ms", "cache hits", "check"], rows)
            + "\n\nStorage per video:\n\n"
            + md_table(["store", "disk bytes per video", "RAM bytes per video", "bulk write"], sizes))
    return entry(FRAMES_DB_TITLE if args.without_milvus else FRAMES_TITLE, command, load, body)


# ----------------------------------------------------------------------------------------------- main
def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="part", required=True)
    r = sub.add_parser("recall", help="part 1: recall of candidate generation, raw and after re-scoring")
    r.add_argument("--sizes", default="100000,1000000")
    r.add_argument("--queries", type=int, default=100)
    f = sub.add_parser("frames", help="part 2: reading the frames of the re-scoring candidates")
    f.add_argument("--videos", type=int, default=100_000)
    f.add_argument("--candidates", type=int, default=400)
    f.add_argument("--queries", type=int, default=200)
    f.add_argument("--slow-queries", type=int, default=50, help="queries for the slow Milvus variants")
    f.add_argument("--without-milvus", action="store_true",
                   help="skip writing and reading Milvus (its minutes of inserts): the database stores, shards, caches")
    f.add_argument("--cache-share", type=float, default=0.2, help="share of the videos the shared-capacity caches hold")
    for s in (r, f):
        s.add_argument("--seed", type=int, default=0)
        s.add_argument("--quiet-wait-s", type=float, default=600)
        s.add_argument("--no-append", action="store_true", help="print the section, do not append to BENCHMARKS.md")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    set_omp_wait_policy("passive")
    args = parser().parse_args(argv)
    command = command_line("bench.milvus_bench", argv)
    text = recall_main(args, command) if args.part == "recall" else frames_main(args, command)
    publish(text, not args.no_append)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
