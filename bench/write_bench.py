"""Index writes with two workers, on each backend: the part of ingest after the encoders.

    .venv/bin/python -m bench.write_bench                                  # faiss and milvus; to BENCHMARKS.md
    .venv/bin/python -m bench.write_bench --existing 2000 --per-worker 5 --no-append   # a smoke run

Two worker processes commit synthetic videos exactly as ``Worker.commit`` does (a video row with its passages
in one transaction, its frame features appended through ``catalog.open_features`` before the commit) and then
call ``catalog.index_videos`` for it, as the worker does after each batch (batch size 1 here: the worst case
for snapshot publishing, the common case for a lightly loaded queue). The collection already holds
``--existing`` videos. FAISS: both workers share one home folder (its snapshots and ``.sync.lock``, as on one
host); Milvus: each worker has its own home and only PostgreSQL and the Milvus server (milvus-lite 2.5 over gRPC)
are shared. No model runs: the encoders' cost is in bench/ingest_bench.py; this is the index-write ceiling that
the snapshot lock sets for the whole cluster.
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import shutil
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from bench.harness import (
    DIM,
    FRAMES,
    PASSAGE_DIM,
    PASSAGES_PER_VIDEO,
    VERSION,
    WORK,
    collect,
    command_line,
    connect_milvus,
    entry,
    free_port,
    md_table,
    milvus_lite_server,
    open_catalog,
    percentile,
    prepopulate,
    proc_cpu_s,
    publish,
    scratch_database,
    unit16,
    wait_for_quiet,
)


def settings_for(backend: str, home: Path, db_url: str, milvus_uri: str | None):
    from indexer.settings import Settings

    extra = {"vector_store": "milvus", "milvus_uri": milvus_uri, "milvus_collection_prefix": "bench_write"} \
        if backend == "milvus" else {}
    return Settings(home=home, database_url=db_url, **extra)


def write_videos(backend: str, home: str, db_url: str, milvus_uri: str | None, worker: int, count: int,
                 out: multiprocessing.Queue) -> None:
    """One worker: ``count`` videos committed and indexed one at a time, as ``Worker.commit`` + ``index_videos``."""
    from indexer.storage.catalog import store_embedding
    from indexer.storage.db import Passage, Video

    settings = settings_for(backend, Path(home), db_url, milvus_uri)
    sessions, catalog = open_catalog(settings)
    store = catalog.open_features(FRAMES, DIM, owner=f"w{worker}")
    rng = np.random.default_rng(100 + worker)
    commit_ms, index_ms = [], []
    cpu, first = time.process_time(), time.time()
    for i in range(count):
        frames = unit16(rng, FRAMES, DIM)
        mask = np.ones(FRAMES, np.uint8)
        pooled = frames.astype(np.float32).mean(0)
        t0 = time.perf_counter()
        with sessions.begin() as s:
            video = Video(content_hash=f"{worker + 1:08x}{i:056x}", filename=f"new-{worker}-{i}.mp4",
                          source_path="/dev/null", size_bytes=0, duration_s=60.0, has_audio=True, transcript="",
                          model_mode="save-fused", status="indexed")
            emb = unit16(rng, PASSAGES_PER_VIDEO, PASSAGE_DIM)
            video.passages.extend(Passage(first_idx=k, last_idx=k, start_s=10.0 * k, end_s=10.0 * k + 10,
                                          embedding=emb[k].tobytes()) for k in range(PASSAGES_PER_VIDEO))
            s.add(video)
            s.flush()
            store_embedding(video, store, frames, mask, pooled, VERSION)
            video_id = video.id
        t1 = time.perf_counter()
        catalog.index_videos([video_id])
        t2 = time.perf_counter()
        commit_ms.append(1000 * (t1 - t0))
        index_ms.append(1000 * (t2 - t1))
    out.put({"worker": worker, "commit_ms": commit_ms, "index_ms": index_ms, "cpu_s": time.process_time() - cpu,
             "first": first, "last": time.time()})


def run_backend(backend: str, args: argparse.Namespace, work: Path) -> list[object]:
    """Prepopulate, then two worker processes at once; one table row."""
    with contextlib.ExitStack() as stack:
        db_url = stack.enter_context(scratch_database(f"bench_write_{backend}"))
        uri, pid = None, None
        if backend == "milvus":
            port = free_port()
            pid = stack.enter_context(milvus_lite_server(work / "milvus", port))
            uri = f"http://127.0.0.1:{port}"
            connect_milvus(uri).close()
        homes = [work / backend / "shared"] * 2 if backend == "faiss" else [work / backend / f"w{i}" for i in (0, 1)]
        repair_s = prepopulate(settings_for(backend, homes[0], db_url, uri), args.existing)
        ctx = multiprocessing.get_context("spawn")
        out = ctx.Queue()
        server_cpu = proc_cpu_s(pid) if pid else 0.0
        procs = [ctx.Process(target=write_videos, args=(backend, str(homes[i]), db_url, uri, i, args.per_worker, out))
                 for i in (0, 1)]
        for p in procs:
            p.start()
        results = collect(out, procs)
        # from the first write to the last (the processes' start-up, imports and collection loading excluded)
        wall = max(r["last"] for r in results) - min(r["first"] for r in results)
        for p in procs:
            p.join()
        server_cpu_s = proc_cpu_s(pid) - server_cpu if pid else 0.0
    videos = 2 * args.per_worker
    commit = [x for r in results for x in r["commit_ms"]]
    index = [x for r in results for x in r["index_ms"]]
    cpu_s = sum(r["cpu_s"] for r in results) + server_cpu_s
    print(f"{backend}: {videos / wall:.2f} videos/s, index_videos p50 {percentile(index, 50):.0f} ms", flush=True)
    return [backend, args.existing, videos, videos / wall, percentile(commit, 50), percentile(index, 50),
            percentile(index, 99), 1000 * cpu_s / videos, repair_s]


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backends", default="faiss,milvus")
    p.add_argument("--existing", type=int, default=20_000, help="videos already indexed when the workers start")
    p.add_argument("--per-worker", type=int, default=40, help="videos each of the two workers writes")
    p.add_argument("--quiet-wait-s", type=float, default=600.0)
    p.add_argument("--no-append", action="store_true", help="print only; do not write BENCHMARKS.md")
    args = p.parse_args(argv)
    work = WORK / "write"
    shutil.rmtree(work, ignore_errors=True)
    load = wait_for_quiet(max_wait_s=args.quiet_wait_s)
    try:
        rows = [run_backend(b, args, work) for b in args.backends.split(",")]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    body = "\n".join([
        f"Two worker processes write at once, one video per commit + `catalog.index_videos` (the worker's path after "
        f"its encoders, no model): a video row with {PASSAGES_PER_VIDEO} passages (384-d) and its 12 x 512 fp16 frame "
        f"features, on a collection that already holds `existing` videos. FAISS: one shared home (snapshots published "
        f"under `.sync.lock`); Milvus: separate homes, one milvus-lite 2.5 gRPC server. PostgreSQL 15 on the same "
        f"machine. CPU ms/video counts both workers (and the Milvus server): steadier than wall time on this shared "
        f"machine (the Milvus server's share is counted from the workers' start, loading included). videos/s: from the "
        f"first write to the last. The encoders (seconds per video on CPU, bench/ingest_bench.py) are not included.",
        "",
        md_table(["backend", "existing videos", "videos written", "videos/s (2 workers)", "commit p50 ms",
                  "index_videos p50 ms", "index_videos p99 ms", "CPU ms/video", "start-up repair s"], rows),
    ])
    publish(entry("Index writes with two workers: FAISS snapshots vs Milvus", command_line("bench.write_bench", argv),
                  load, body), write=not args.no_append)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
