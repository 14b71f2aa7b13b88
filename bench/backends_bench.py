"""ANN side by side, FAISS vs Milvus Lite: raw candidate generation (IVF_FLAT with the same nlist on both, nprobe
swept, compared at equal recall@10) on the pooled vectors of the synthetic collection, build costs, RAM and disk
per video, one-video inserts; optionally ``/search`` end to end on each backend and the Milvus frame collection.

    .venv/bin/python -m bench.backends_bench --sizes 100000 --e2e '' --queries 100         # writes BENCHMARKS.md
    .venv/bin/python -m bench.backends_bench --sizes 10000 --e2e 10000 --e2e-queries 50    # + /search on each
    .venv/bin/python -m bench.backends_bench --backend milvus --sizes 2000 --e2e '' --frames-videos 2000
    .venv/bin/python -m bench.backends_bench --sizes 2000 --e2e '' --queries 20 --no-append   # a smoke run

Until 2026-12 this was ``bench/query_bench.py --backend faiss,milvus`` (the options are the same; ``--backend``
defaults to both). The synthetic collection is bench/synthetic.py's; the FAISS index types with exact
re-scoring are bench/index_bench.py.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import gc
import logging
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bench.harness import (
    DIM,
    FRAMES,
    WORK,
    build_model,
    command_line,
    connect_milvus,
    entry,
    free_port,
    load1,
    md_table,
    milvus_lite_server,
    percentile,
    proc_cpu_s,
    proc_rss,
    publish,
    require_disk,
    rss_bytes,
    set_omp_wait_policy,
    wait_for_quiet,
)
from bench.synthetic import TOP_K, Synth, end_to_end, generate, search_defaults, size_label

BACKENDS = ("faiss", "milvus")
ANN_NPROBE = (4, 8, 16, 32, 64, 128)
ANN_RECALL_TARGETS = (0.90, 0.95, 0.99)
MILVUS_INSERT_BATCH = 1_000  # rows per insert call: larger messages were slower per row on milvus-lite 2.5.1
SINGLE_INSERTS = 200  # one-video inserts into the indexed collection, as a worker writes after its commit


def generate_pooled(n: int, synth: Synth, n_queries: int, seed: int,
                    chunk: int = 20_000) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Only what an ANN index holds: (pooled fp16 [n, D], row i is video id i + 1; queries [Q, D]; exact top 10 of
    each query by cosine over all pooled vectors, as video ids; seconds). Same generator as ``generate``, without
    the feature shards: the ANN comparison ranks pooled vectors only, and its exact answer is the cosine order."""
    import torch

    start = time.perf_counter()
    g = torch.Generator().manual_seed(seed)
    centroids, queries = synth.topics(g, n, n_queries)
    q = queries.numpy()
    pooled16 = np.empty((n, DIM), np.float16)
    top_s = np.full((n_queries, TOP_K), -np.inf, np.float32)
    top_i = np.zeros((n_queries, TOP_K), np.int64)
    for lo in range(0, n, chunk):
        c = min(chunk, n - lo)
        pooled16[lo:lo + c] = synth.videos(g, centroids, c)[2].numpy()
        x = unit_rows(pooled16[lo:lo + c])
        both_s = np.concatenate([top_s, q @ x.T], axis=1)
        both_i = np.concatenate([top_i, np.broadcast_to(np.arange(lo + 1, lo + c + 1), (n_queries, c))], axis=1)
        best = np.argsort(-both_s, axis=1, kind="stable")[:, :TOP_K]
        top_s, top_i = np.take_along_axis(both_s, best, 1), np.take_along_axis(both_i, best, 1)
    return pooled16, q, top_i, time.perf_counter() - start


def cached_pooled(n: int, synth: Synth, n_queries: int, seed: int,
                  cache: Path | None) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """``generate_pooled``, kept in ``cache`` (an .npz, 1 GB at 1M videos) when given: a rerun (e.g. of one backend
    after the other failed) reuses the same vectors and exact answers instead of generating them again. The key
    (n, queries, seed) is checked; a cache of another collection is an error, never silently reused."""
    key = np.array([n, n_queries, seed], np.int64)
    if cache is not None and cache.exists():
        with np.load(cache) as f:
            if not np.array_equal(f["key"], key):
                raise SystemExit(f"{cache}: cached for (n, queries, seed) {f['key'].tolist()}, not {key.tolist()}")
            return f["pooled16"], f["queries"], f["truth"], 0.0
    pooled16, queries, truth, gen_s = generate_pooled(n, synth, n_queries, seed)
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.savez(cache, key=key, pooled16=pooled16, queries=queries, truth=truth)
    return pooled16, queries, truth, gen_s


def unit_rows(x: np.ndarray) -> np.ndarray:
    """float32 copy with L2-normalised rows: what both indexes hold (inner product = cosine, as VectorIndex)."""
    out = x.astype(np.float32)
    out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
    return out


@dataclass
class AnnRun:
    """One (backend, nprobe) sweep: per-query wall ms, CPU ms per query (all processes doing the work), recall@10."""

    backend: str
    nprobe: int
    ms: list[float]
    cpu_ms: float
    recall: float


@dataclass
class AnnBuild:
    backend: str
    nlist: int
    load_s: float  # inserting (milvus) / adding (faiss) the vectors
    index_s: float  # training + building the IVF index (and loading it, milvus)
    ram_bytes: int  # what holding the loaded index costs in RAM (see ann_side_by_side)
    disk_bytes: int
    note: str = ""
    single_insert_ms: list[float] | None = None


def recall_at_10(found: list[np.ndarray], truth: np.ndarray) -> float:
    return sum(len(set(f.tolist()) & set(t.tolist())) for f, t in zip(found, truth, strict=True)) / truth.size


def add_unit_rows(index, pooled16: np.ndarray, chunk: int = 200_000) -> None:
    """Add fp16 rows, L2-normalised, with ids 1..n, in chunks (a float32 copy of 1M rows at once is 2 GB)."""
    for lo in range(0, len(pooled16), chunk):
        part = pooled16[lo:lo + chunk]
        index.add_with_ids(unit_rows(part), np.arange(lo + 1, lo + len(part) + 1, dtype=np.int64))


def timed_searches(index, queries: np.ndarray) -> tuple[list[float], list[np.ndarray], float]:
    """One query at a time, as /search asks: wall ms per query, the top-k ids of each, CPU ms per query."""
    ms, found = [], []
    cpu = time.process_time()
    for q in queries:
        t0 = time.perf_counter()
        _, ids = index.search(q[None], TOP_K)
        ms.append(1000 * (time.perf_counter() - t0))
        found.append(ids[0])
    return ms, found, 1000 * (time.process_time() - cpu) / len(queries)


def faiss_ivf_flat(pooled16: np.ndarray, queries: np.ndarray, truth: np.ndarray, nlist: int,
                   stop_at_recall: float = 0.0) -> tuple[AnnBuild, list[AnnRun]]:
    """FAISS IndexIVFFlat (inner product) with the IVF_FLAT parameters Milvus gets: the same algorithm and lists,
    trained on the service's sample size (``ivf_training_sample``), one query at a time. ``stop_at_recall``: stop
    the nprobe sweep at the first setting reaching it (larger nprobe only costs more; 0: sweep all)."""
    import faiss

    from indexer.storage.faiss_index import ivf_training_sample

    gc.collect()
    before = rss_bytes()
    n = len(pooled16)
    start, cpu0 = time.perf_counter(), time.process_time()
    index = faiss.IndexIVFFlat(faiss.IndexFlatIP(DIM), DIM, nlist, faiss.METRIC_INNER_PRODUCT)
    sample = ivf_training_sample(n, nlist)
    index.train(unit_rows(pooled16 if sample is None else pooled16[sample]))
    index_s, train_cpu = time.perf_counter() - start, time.process_time() - cpu0
    print(f"  faiss  trained nlist {nlist} in {index_s:.0f} s ({train_cpu:.0f} CPU s)", flush=True)
    start, cpu0 = time.perf_counter(), time.process_time()
    add_unit_rows(index, pooled16)
    add_s, add_cpu = time.perf_counter() - start, time.process_time() - cpu0
    gc.collect()
    note = (f"RSS growth {(rss_bytes() - before) / n:.0f} B/video; CPU s: add {add_cpu:.0f}, train {train_cpu:.0f} "
            f"(on {n if sample is None else len(sample)} vectors)")
    size = int(faiss.serialize_index(index).nbytes)
    runs = []
    for nprobe in ANN_NPROBE:
        index.nprobe = nprobe
        ms, found, cpu_ms = timed_searches(index, queries)
        runs.append(AnnRun("faiss", nprobe, ms, cpu_ms, recall_at_10(found, truth)))
        print(f"  faiss  IVF_FLAT nprobe {nprobe:3d}: p50 {percentile(ms, 50):6.2f} ms, recall@10 "
              f"{runs[-1].recall:.3f}", flush=True)
        if stop_at_recall and runs[-1].recall >= stop_at_recall:
            break
    del index
    gc.collect()
    return AnnBuild("faiss", nlist, add_s, index_s, size, size, note), runs


def faiss_flat(pooled16: np.ndarray, queries: np.ndarray, truth: np.ndarray) -> tuple[AnnBuild, list[AnnRun]]:
    """FAISS exact scan (IndexFlatIP): the baseline for a backend whose IVF_FLAT turns out to scan everything.
    Its recall is 1 by construction, so ``queries`` may be a subset (the scan costs ~n per query)."""
    import faiss

    start = time.perf_counter()
    index = faiss.IndexIDMap2(faiss.IndexFlatIP(DIM))
    add_unit_rows(index, pooled16)
    add_s = time.perf_counter() - start
    ms, found, cpu_ms = timed_searches(index, queries)
    run_ = AnnRun("faiss-flat", 0, ms, cpu_ms, recall_at_10(found, truth[:len(queries)]))
    print(f"  faiss  flat (exact): p50 {percentile(ms, 50):6.2f} ms, recall@10 {run_.recall:.3f}", flush=True)
    size = int(faiss.serialize_index(index).nbytes)
    del index
    gc.collect()
    return AnnBuild("faiss-flat", 0, add_s, 0.0, size, size, "exact scan, IndexIDMap2(IndexFlatIP)"), [run_]


def milvus_ivf_flat(pooled16: np.ndarray, queries: np.ndarray, truth: np.ndarray, nlist: int,
                    folder: Path, stop_at_recall: float = 0.0) -> tuple[AnnBuild, list[AnnRun]]:
    """Milvus Lite 2.5 (gRPC server) IVF_FLAT: insert in batches, flush, build the index, load, then one query at a
    time through ``MilvusClient.search``; then one-video inserts into the indexed, loaded collection (the worker's
    write after its commit). RAM = the server's RSS growth from an empty collection to the loaded index.
    ``stop_at_recall`` as in ``faiss_ivf_flat``."""
    from pymilvus import DataType, MilvusClient

    n = len(pooled16)
    port = free_port()
    with milvus_lite_server(folder, port) as pid:
        client = connect_milvus(f"http://127.0.0.1:{port}")
        schema = MilvusClient.create_schema(auto_id=False)
        schema.add_field("id", DataType.INT64, is_primary=True)
        schema.add_field("vec", DataType.FLOAT_VECTOR, dim=DIM)
        client.create_collection("videos", schema=schema)
        base_rss = proc_rss(pid)
        start, cpu0 = time.perf_counter(), time.process_time() + proc_cpu_s(pid)
        for lo in range(0, n, MILVUS_INSERT_BATCH):
            part = unit_rows(pooled16[lo:lo + MILVUS_INSERT_BATCH])
            client.insert("videos", [{"id": lo + i + 1, "vec": v} for i, v in enumerate(part)])
        client.flush("videos")
        load_s, load_cpu = time.perf_counter() - start, time.process_time() + proc_cpu_s(pid) - cpu0
        print(f"  milvus inserted {n} in {load_s:.0f} s ({load_cpu:.0f} CPU s)", flush=True)
        start, cpu0 = time.perf_counter(), time.process_time() + proc_cpu_s(pid)
        params = client.prepare_index_params()
        params.add_index("vec", index_type="IVF_FLAT", metric_type="IP", params={"nlist": nlist})
        client.create_index("videos", params)
        client.load_collection("videos")
        client.search("videos", [queries[0].tolist()], limit=TOP_K)  # first search: whatever loads lazily
        index_s, index_cpu = time.perf_counter() - start, time.process_time() + proc_cpu_s(pid) - cpu0
        ram = proc_rss(pid) - base_rss
        print(f"  milvus indexed + loaded in {index_s:.0f} s ({index_cpu:.0f} CPU s), server RSS growth "
              f"{ram / n:.0f} B/video", flush=True)
        runs = []
        for nprobe in ANN_NPROBE:
            ms, found = [], []
            cpu, server_cpu = time.process_time(), proc_cpu_s(pid)
            for q in queries:
                t0 = time.perf_counter()
                hits = client.search("videos", [q.tolist()], limit=TOP_K,
                                     search_params={"metric_type": "IP", "params": {"nprobe": nprobe}})
                ms.append(1000 * (time.perf_counter() - t0))
                found.append(np.array([h["id"] for h in hits[0]], np.int64))
            cpu_s = time.process_time() - cpu + proc_cpu_s(pid) - server_cpu
            runs.append(AnnRun("milvus", nprobe, ms, 1000 * cpu_s / len(queries), recall_at_10(found, truth)))
            print(f"  milvus IVF_FLAT nprobe {nprobe:3d}: p50 {percentile(ms, 50):6.2f} ms, recall@10 "
                  f"{runs[-1].recall:.3f}", flush=True)
            if stop_at_recall and runs[-1].recall >= stop_at_recall:
                break
        single = []
        extra = unit_rows(pooled16[:SINGLE_INSERTS])
        for i, v in enumerate(extra):
            t0 = time.perf_counter()
            client.insert("videos", [{"id": n + i + 1, "vec": v}])
            single.append(1000 * (time.perf_counter() - t0))
        client.close()
    disk = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
    shutil.rmtree(folder, ignore_errors=True)
    note = (f"server RSS {base_rss / 2**20:.0f} MiB empty; CPU s (client + server): insert {load_cpu:.0f}, "
            f"index + load {index_cpu:.0f}")
    return AnnBuild("milvus", nlist, load_s, index_s, ram, disk, note, single), runs


def end_to_end_side_by_side(n: int, backends: list[str], args: argparse.Namespace, work: Path) -> list[list[object]]:
    """/search end to end on each backend over one collection of n videos (FAISS first: the Milvus run moves the
    frame features into Milvus); table rows."""

    col = generate(n, work / f"e2e-{n}" / "home", Synth(), args.queries, args.seed + n)
    model = build_model(args.device)
    rows: list[list[object]] = []
    for i, backend in enumerate(backends):
        with contextlib.ExitStack() as stack:
            if backend == "milvus":
                port = free_port()
                pid = stack.enter_context(milvus_lite_server(work / f"e2e-milvus-{n}", port))
                uri = f"http://127.0.0.1:{port}"
                connect_milvus(uri).close()
                e2e = end_to_end(col, model, args.e2e_queries, args.device, insert=i == 0, milvus_uri=uri,
                                 server_cpu_s=functools.partial(proc_cpu_s, pid))
            else:
                e2e = end_to_end(col, model, args.e2e_queries, args.device, insert=i == 0)
        rows.append([size_label(n), backend, e2e["kind"], percentile(e2e["ms"], 50), percentile(e2e["ms"], 99),
                     percentile(e2e["direct_ms"], 50), e2e["cpu_ms"], e2e["sync_s"]])
        print(f"  {backend}: /search p50 {percentile(e2e['ms'], 50):.1f} ms", flush=True)
    return rows


def milvus_frames_footprint(n: int, candidates: int, work: Path) -> list[object]:
    """The frame-feature collection of the Milvus backend (``MilvusCatalog.open_features``, the code search and the
    worker use): n videos written one upsert each, as a worker does; the server's RSS growth and disk per video;
    and reading ``candidates`` random videos' frames at once, as exact re-scoring does per query (20 reads)."""
    import torch

    from indexer.storage.milvus import MILVUS_SHARD, MilvusCatalog
    from indexer.storage.shards import FeatureRef

    port = free_port()
    folder = work / "frames"
    with milvus_lite_server(folder, port) as pid:
        client = connect_milvus(f"http://127.0.0.1:{port}")
        catalog = MilvusCatalog(client, None, "bench", DIM, "bench", 384, prefix="bench_frames")  # type: ignore[arg-type]
        frames_store = catalog.open_features(FRAMES, DIM, "bench")
        base_rss = proc_rss(pid)
        g = torch.Generator().manual_seed(n)
        centroids, _ = Synth().topics(g, n, 1)
        write_ms = []
        for lo in range(0, n, 1000):
            frames16, mask, _ = Synth().videos(g, centroids, min(1000, n - lo))
            for i in range(len(frames16)):
                t0 = time.perf_counter()
                frames_store.append(lo + i + 1, frames16[i].numpy(), mask[i].numpy())
                write_ms.append(1000 * (time.perf_counter() - t0))
        rng = np.random.default_rng(0)
        read_ms = []
        for _ in range(20):
            ids = rng.choice(np.arange(1, n + 1), min(candidates, n), replace=False)
            t0 = time.perf_counter()
            frames_store.read_many([FeatureRef(MILVUS_SHARD, 0, int(v)) for v in ids])
            read_ms.append(1000 * (time.perf_counter() - t0))
        ram = proc_rss(pid) - base_rss
        client.close()
    disk = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
    shutil.rmtree(folder, ignore_errors=True)
    return [size_label(n), percentile(write_ms, 50), percentile(write_ms, 99), ram / n, disk / n, candidates,
            percentile(read_ms, 50), percentile(read_ms, 99)]


def fastest_at(runs: list[AnnRun], target: float) -> AnnRun | None:
    """The smallest nprobe whose recall@10 reaches ``target`` (nprobe sweeps are monotone in cost)."""
    ok = [r for r in runs if r.recall >= target]
    return min(ok, key=lambda r: r.nprobe) if ok else None


def ann_side_by_side(args: argparse.Namespace, command: str, machine_extra: str) -> str:
    """Raw ANN on each backend in ``args.backend`` over the same pooled vectors, per size: IVF_FLAT with the
    same nlist on both, nprobe swept, compared at equal recall@10; build costs, RAM and disk per video."""
    import milvus_lite
    import pymilvus

    from indexer.storage.faiss_index import ivf_nlist

    backends = [b for b in BACKENDS if b in args.backend.split(",")]
    sizes = [int(x) for x in args.sizes.split(",") if x.strip()]
    work = WORK / "ann"
    require_disk(WORK, max(sizes) * 4 * DIM * 3 / 1024**3)
    load = wait_for_quiet(max_wait_s=args.quiet_wait_s)
    started = time.monotonic()
    rows, equal_rows, size_rows, insert_rows, loads = [], [], [], [], {}
    try:
        for n in sizes:
            print(f"== {n} videos", flush=True)
            cache = Path(args.pooled_cache.format(n=n)) if args.pooled_cache else None
            pooled16, queries, truth, gen_s = cached_pooled(n, Synth(), args.queries, args.seed + n, cache)
            print(f"  generated in {gen_s:.0f} s", flush=True)
            nlist = ivf_nlist(n)
            loads[n] = load1()
            per_backend: dict[str, list[AnnRun]] = {}
            for backend in backends:
                if backend == "faiss":
                    flat_q = args.flat_queries or len(queries)
                    measured = [faiss_ivf_flat(pooled16, queries, truth, nlist, args.stop_at_recall),
                                faiss_flat(pooled16, queries[:flat_q], truth)]
                else:
                    measured = [milvus_ivf_flat(pooled16, queries, truth, nlist, work / f"milvus-{n}",
                                                args.stop_at_recall)]
                for built, runs in measured:
                    per_backend[built.backend] = runs
                    size_rows.append([size_label(n), built.backend, built.nlist or "-", built.load_s, built.index_s,
                                      built.ram_bytes / n, built.disk_bytes / n, built.note])
                    if built.single_insert_ms:
                        ms = built.single_insert_ms
                        insert_rows.append([size_label(n), built.backend, len(ms), percentile(ms, 50),
                                            percentile(ms, 99), n / built.load_s])
                    rows += [[size_label(n), r.backend, r.nprobe or "exact", f"{r.recall:.3f}", percentile(r.ms, 50),
                              percentile(r.ms, 99), r.cpu_ms] for r in runs]
            for target in ANN_RECALL_TARGETS:
                row: list[object] = [size_label(n), f">= {target:.2f}"]
                for backend in per_backend:
                    best = fastest_at(per_backend[backend], target)
                    row += (["not reached", "", "", ""] if best is None else
                            [best.nprobe or "exact", f"{best.recall:.3f}", percentile(best.ms, 50),
                             f"{percentile(best.ms, 99):.3g} / {best.cpu_ms:.3g}"])
                equal_rows.append(row)
            del pooled16
            gc.collect()
        e2e_rows = [row for n in sorted({int(x) for x in args.e2e.split(",") if x.strip()})
                    for row in end_to_end_side_by_side(n, backends, args, work)]
        frames_rows = ([milvus_frames_footprint(args.frames_videos, search_defaults()[1], work)]
                       if args.frames_videos and "milvus" in backends else [])
    finally:
        shutil.rmtree(work, ignore_errors=True)
    header = ["videos", "recall@10 target"]
    for backend in [*(["faiss", "faiss-flat"] if "faiss" in backends else []), *(["milvus"] if "milvus" in backends
                                                                                 else [])]:
        header += [f"{backend} nprobe", f"{backend} recall@10", f"{backend} p50 ms", f"{backend} p99 ms / CPU ms"]
    body = [
        f"Raw ANN, one query at a time, top {TOP_K}, on the pooled vectors of the synthetic collection "
        f"({Synth().describe()}); exact answer = cosine order over all videos (no SAVE re-scoring here: this is "
        f"the candidate generation the two backends replace each other in). Both sides: IVF_FLAT, inner product on "
        f"L2-normalised vectors, nlist = `ivf_nlist(n)` (4 sqrt(n)). FAISS `IndexIVFFlat` in this process, trained "
        f"on `ivf_training_sample`; Milvus Lite {milvus_lite.__version__} as a gRPC server process on 127.0.0.1 "
        f"(pymilvus {pymilvus.__version__} `MilvusClient`), vectors inserted in batches of {MILVUS_INSERT_BATCH} "
        f"before the index is built. {args.queries} queries per setting. CPU ms = CPU time per query of every "
        f"process doing the work (milvus: client + server), steadier than wall time on this shared machine. "
        + (f"nprobe sweeps stop at the first setting with recall@10 >= {args.stop_at_recall:g}. "
           if args.stop_at_recall else "")
        + (f"The FAISS exact scan (recall 1 by construction) runs the first {args.flat_queries} queries only. "
           if args.flat_queries else "")
        + f"Run time {time.monotonic() - started:.0f} s; 1-min load average when each size started: "
        + ", ".join(f"{size_label(n)}: {v:.2f}" for n, v in loads.items()) + ".",
        "",
        "At equal recall@10 (the smallest nprobe that reaches the target on each backend):",
        "",
        md_table(header, equal_rows),
        "",
        md_table(["videos", "backend", "nlist", "insert/add s", "train + index (+ load) s", "RAM bytes/video",
                  "disk bytes/video", "note"], size_rows),
        "",
        "RAM: FAISS = the serialized index (vectors + ids + centroids, what the process holds); Milvus = the "
        "server process's RSS growth from an empty collection to the loaded, indexed collection. Disk: FAISS = the "
        "index file it would save; Milvus = everything in the milvus-lite data folder.",
        "",
    ]
    if insert_rows:
        body += [f"Writes into the indexed, loaded collection, one video per insert call ({SINGLE_INSERTS} calls, "
                 "as a worker writes right after its database commit), and the bulk insert rate before indexing:",
                 "", md_table(["videos", "backend", "single inserts", "p50 ms", "p99 ms", "bulk insert videos/s"],
                              insert_rows), ""]
    if e2e_rows:
        body += ["`GET /v1/search?k=10` end to end on each backend (real app through TestClient, default settings, a "
                 "new query each time; the same synthetic collection and database rows, no transcripts; "
                 "SearchService.search is the same call without HTTP; CPU ms = this process's CPU time per request, "
                 "plus the milvus-lite server's):", "",
                 md_table(["videos", "backend", "index", "/search p50 ms", "p99 ms", "SearchService.search p50 ms",
                           "CPU ms per call (HTTP and direct averaged)", "features into the backend + repair s"],
                          e2e_rows),
                 ""]
    if frames_rows:
        body += ["Frame features in Milvus (the backend's `frames` collection: fp16 12 x 512 per video as one "
                 "FLOAT16_VECTOR, FLAT, loaded), written one video per upsert as a worker does, then read for a "
                 "query's re-scoring candidates at once (`MilvusFrames.read_many`, 20 reads of random ids):", "",
                 md_table(["videos", "write p50 ms", "write p99 ms", "server RSS growth bytes/video",
                           "disk bytes/video", "candidates read", "read p50 ms", "read p99 ms"], frames_rows), ""]
    body += ["Every setting:", "", md_table(["videos", "backend", "nprobe", "recall@10", "p50 ms", "p99 ms",
                                             "CPU ms/query"], rows)]
    return entry("ANN side by side: FAISS vs Milvus Lite, IVF_FLAT at equal recall@10", command, load,
                 "\n".join(body), machine_extra)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backend", default=",".join(BACKENDS),
                   help="backends side by side, IVF_FLAT on each at equal recall@10 (milvus needs milvus-lite); "
                        "faiss also runs its exact scan as the baseline")
    p.add_argument("--sizes", default="1000000,100000,10000", help="collection sizes (videos), in this order")
    p.add_argument("--queries", type=int, default=200, help="queries per setting")
    p.add_argument("--e2e", default="10000,100000",
                   help="sizes that also get /search end to end on each backend ('' to skip)")
    p.add_argument("--e2e-queries", type=int, default=100)
    p.add_argument("--device", default="cpu", help="where the text encoder of /search end to end runs")
    p.add_argument("--omp-wait-policy", choices=("default", "passive", "active"), default="passive",
                   help="OMP_WAIT_POLICY for this process (default: passive, see bench/omp_check.py for why)")
    p.add_argument("--pooled-cache", default="",
                   help="keep the generated pooled vectors and exact answers in this .npz ({n} = size) and reuse "
                        "them if it exists (a rerun skips generating); deleted by nobody but you")
    p.add_argument("--stop-at-recall", type=float, default=0.0,
                   help="stop each backend's nprobe sweep at the first recall@10 >= this (0: sweep all)")
    p.add_argument("--flat-queries", type=int, default=0,
                   help="the FAISS exact-scan baseline runs only the first N queries (0: all)")
    p.add_argument("--frames-videos", type=int, default=0,
                   help="with milvus: also write this many videos' frame features into the Milvus backend's frame "
                        "collection and measure RAM/disk per video and the re-scoring read")
    p.add_argument("--quiet-wait-s", type=float, default=600.0,
                   help="wait at most this long for a 1-min load average below 1.5 before measuring")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-append", action="store_true", help="print only; do not write BENCHMARKS.md")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    policy = set_omp_wait_policy(args.omp_wait_policy)
    logging.basicConfig(level=logging.WARNING)
    unknown = set(args.backend.split(",")) - set(BACKENDS)
    if unknown:
        raise SystemExit(f"--backend: unknown {', '.join(sorted(unknown))}; expected a list of {', '.join(BACKENDS)}")
    md = ann_side_by_side(args, command_line("bench.backends_bench", argv), f"OMP_WAIT_POLICY {policy}")
    publish(md, write=not args.no_append)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
