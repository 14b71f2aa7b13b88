"""Why search processes should run with ``OMP_WAIT_POLICY=PASSIVE`` (or one thread per runtime) on small CPUs.

    .venv/bin/python -m bench.omp_check            # writes its BENCHMARKS.md section
    .venv/bin/python -m bench.omp_check --no-append --size 12000 --queries 50

torch, faiss (and CTranslate2) each bundle their own libgomp. One search runs faiss (HNSW search opens an
OpenMP region even for one query) and then torch (exact re-scoring); with the default *active* wait policy the
threads of the runtime that just finished keep spinning and, on 2 cores, starve the other runtime's threads.
This script measures the index part (ANN + read features + exact re-scoring, 200 candidates) and ``/search``
through the real app, on one synthetic collection, in three child processes: the default policy, PASSIVE, and
the default policy with torch and faiss limited to one thread each.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from bench.harness import (
    ROOT,
    WORK,
    command_line,
    entry,
    md_table,
    percentile,
    publish,
    wait_for_quiet,
)

VARIANTS = {"default (active)": ({}, 0), "OMP_WAIT_POLICY=PASSIVE": ({"OMP_WAIT_POLICY": "PASSIVE"}, 0),
            "default, torch and faiss 1 thread": ({}, 1)}


def child(size: int, queries: int, threads: int) -> dict[str, object]:
    """Runs in a fresh process (the policy is read when libgomp loads)."""
    import shutil

    import faiss
    import torch

    from bench import synthetic as q
    from bench.harness import DIM, FRAMES, build_model
    from indexer.storage.shards import FeatureStore

    if threads:
        torch.set_num_threads(threads)
        faiss.omp_set_num_threads(threads)
    work = WORK / f"omp-{os.getpid()}"
    try:
        col = q.generate(size, work / "home", q.Synth(), queries, 0)
        store = FeatureStore(col.features_dir, FRAMES, DIM, owner="reader")
        out: dict[str, object] = {}
        for kind in ("flat", "hnsw"):
            built = q.build_index(col, kind, 0)
            s = q.index_part(col, store, built, 200, ef_search=128 if kind == "hnsw" else None)
            out[f"index part, {kind}"] = s.total_ms
        store.close()
        model = build_model()
        for i, kind in enumerate(("flat", "hnsw")):
            e2e = q.end_to_end(col, model, queries, index_type=kind, insert=i == 0)
            out[f"/search, {kind}"] = e2e["ms"]
        return out
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=20_000)
    p.add_argument("--queries", type=int, default=100)
    p.add_argument("--no-append", action="store_true")
    p.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)  # thread count in a child process
    args = p.parse_args(argv)
    if args.child is not None:
        print("RESULT " + json.dumps(child(args.size, args.queries, args.child)))
        return 0
    load = wait_for_quiet()
    results: dict[str, dict[str, list[float]]] = {}
    for label, (env, threads) in VARIANTS.items():
        cmd = [sys.executable, "-m", "bench.omp_check", "--size", str(args.size), "--queries", str(args.queries),
               "--child", str(threads)]
        proc = subprocess.run(cmd, cwd=ROOT, env={**os.environ, **env}, capture_output=True, text=True, timeout=600,
                              check=False)
        line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
        if line is None:
            raise SystemExit(f"{label}: child failed\n{proc.stderr[-5000:]}")
        results[label] = json.loads(line[len("RESULT "):])
        print(label, {k: round(percentile(v, 50), 2) for k, v in results[label].items()}, flush=True)
    measures = list(next(iter(results.values())))
    rows = [[label, m, percentile(r[m], 50), percentile(r[m], 99)] for m in measures for label, r in results.items()]
    body = "\n".join([
        f"{args.size} synthetic videos (the query benchmark's generator), {args.queries} queries, one at a time. Index "
        "part = ANN (200 candidates; HNSW efSearch 128) + reading the candidates' frame features + exact SAVE "
        "re-scoring. `/search` = the real app through TestClient (CLIP text encoder, MiniLM, SQL, index part), "
        "index type forced with `SAVE_SEARCH_INDEX_TYPE`. Each variant ran in its own process.",
        "",
        md_table(["variant", "measure", "p50 ms", "p99 ms"], rows),
    ])
    text = entry("OpenMP wait policy on the query path", command_line("bench.omp_check", argv), load, body)
    publish(text, write=not args.no_append)
    return 0


if __name__ == "__main__":
    if __package__ in (None, ""):
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    raise SystemExit(main())
