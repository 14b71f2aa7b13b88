"""Query latency, recall and memory by index type: synthetic collections at the real dimensions (12 x 512 fp16
frame features per video in a FeatureStore, pooled 512-d vectors in FAISS), flat vs HNSW vs IVF-PQ.

    .venv/bin/python -m bench.index_bench                          # 10k, 100k, 1M; writes BENCHMARKS.md
    .venv/bin/python -m bench.index_bench --sizes 10000 --e2e 10000 --no-append   # a smoke run
    .venv/bin/python -m bench.index_bench --sizes 10000 --e2e 10000 --skip-sweeps  # /search end to end only

Per collection size it measures, one query at a time (the latency a user sees):
- the index part alone: ANN search for ``candidates`` ids, reading their frame features from the feature shards
  (``FeatureStore.read_many``, checksums verified, as search does), exact SAVE re-scoring
  (``models.similarity.save_similarity``) and the top 10;
- recall@10 of that against exact SAVE scoring of ALL videos (brute force over every stored record, computed
  chunk by chunk while the collection is written, from the stored fp16 values);
- RAM per video (serialized FAISS index / n, and the process RSS growth while building it) and disk per video;
- the text encoder alone (CLIP B/32 text tower, full size, random weights, one query), and ``/search`` end to
  end through the real app (``create_app`` + TestClient) for the sizes in ``--e2e``.

The synthetic collection (and why it has clusters) is in bench/synthetic.py. FAISS vs Milvus side by side is
bench/backends_bench.py (until 2026-12 both were ``bench/query_bench.py``; ``--backend faiss,milvus`` moved there).
With ``--skip-sweeps`` only the text encoder and ``/search`` end to end run, and the section has its own title
(``/search`` latency end to end), so it never replaces the index-type sweeps.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import logging
import math
import os
import shutil
import time
from collections.abc import Sequence

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
    md_table,
    milvus_lite_server,
    percentile,
    proc_cpu_s,
    publish,
    require_disk,
    set_omp_wait_policy,
    wait_for_quiet,
)
from bench.synthetic import (
    LOGIT_SCALE,
    TOP_K,
    Built,
    Collection,
    Sweep,
    Synth,
    build_index,
    end_to_end,
    generate,
    index_part,
    make_long,
    point_rows,
    random_queries,
    search_defaults,
    size_label,
)

CANDIDATES = (50, 100, 200, 400)
EF_SEARCH = (64, 128, 256)
NPROBE = (16, 32, 64)
RECALL_GOAL = 0.98
LATENCY_GOAL_MS = 5.0
RAM_GOAL_BYTES = 200


def evict(col: Collection, store):
    """Drop this collection's shards from the page cache (only our own files), for a cold-read measurement:
    at 1M videos the 12 GB of frame features may not stay cached, and then every candidate is a disk read."""
    from indexer.storage.shards import FeatureStore

    store.close()
    gc.collect()  # unmap: mapped pages are not evicted
    for name in col.shard_names:
        fd = os.open(col.features_dir / name, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
    return FeatureStore(col.features_dir, FRAMES, DIM, owner="reader")


def sweep(col: Collection, store, built: Built, candidates: Sequence[int], deadline: float,
          limit: int | None = None) -> list[Sweep]:
    out: list[Sweep] = []
    if built.kind == "hnsw":
        settings = [(f"efSearch {ef}", {"ef_search": ef}) for ef in EF_SEARCH]
    elif built.kind.startswith("ivfpq"):
        settings = [(f"nprobe {p}", {"nprobe": p}) for p in NPROBE]
    else:
        settings = [("exact", {})]
    for label, kw in settings:
        for c in candidates:
            if time.monotonic() > deadline:
                print(f"  time budget reached: skipping {built.kind} {label} candidates {c}", flush=True)
                continue
            s = index_part(col, store, built, c, param=label, limit=limit, **kw)
            print(f"  {built.kind:5s} {label:12s} cand {c:4d}: index part p50 {percentile(s.total_ms, 50):6.2f} ms "
                  f"p99 {percentile(s.total_ms, 99):6.2f} ms, recall@10 {s.recall:.3f}", flush=True)
            out.append(s)
    return out


def text_encoder_latency(encoder, sentences, count: int) -> dict[str, list[float]]:
    """One query per call: CLIP text (as search encodes a query, tokenisation included) and MiniLM."""
    clip_ms, minilm_ms = [], []
    queries = random_queries(count + 5, seed=1)
    for i, q in enumerate(queries):
        t0 = time.perf_counter()
        encoder.encode_queries([q])
        t1 = time.perf_counter()
        sentences.encode([q])
        t2 = time.perf_counter()
        if i >= 5:  # the first calls warm the kernels up
            clip_ms.append(1000 * (t1 - t0))
            minilm_ms.append(1000 * (t2 - t1))
    return {"clip": clip_ms, "minilm": minilm_ms}


def best_config(sweeps: Sequence[Sweep]) -> Sweep | None:
    """The fastest (p50 of the index part) setting that reaches the recall goal."""
    ok = [s for s in sweeps if s.recall >= RECALL_GOAL]
    return min(ok, key=lambda s: percentile(s.total_ms, 50)) if ok else None


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="1000000,100000,10000",
                   help="collection sizes (videos), measured in this order: the largest first, so the time budget "
                        "never cuts the numbers that matter most")
    p.add_argument("--queries", type=int, default=200, help="queries per setting")
    p.add_argument("--e2e", default="10000,100000", help="sizes that also get /search end to end")
    p.add_argument("--e2e-queries", type=int, default=100)
    p.add_argument("--e2e-backends", default="faiss",
                   help="backends of /search end to end: faiss, milvus (a Milvus Lite server, frames in the database)")
    p.add_argument("--e2e-long", type=int, default=0,
                   help="then this many videos (spread over the ids) get long transcripts, and /search runs again")
    p.add_argument("--e2e-long-segments", type=int, default=534,
                   help="segments per long video (534 x 3 s: ~27 min, 1,600 passages)")
    p.add_argument("--e2e-skip-bare", action="store_true", help="no /search run on videos without transcripts")
    p.add_argument("--e2e-segments", type=int, default=5,
                   help="then measure /search again with this many transcript segments per video (0: skip)")
    p.add_argument("--hnsw-max", type=int, default=100_000,
                   help="largest size an HNSW index is built at (larger: extrapolated from its build time)")
    p.add_argument("--ivf-train-max", type=int, default=160_000,
                   help="IVF-PQ training sample (at least what faiss needs for ivf_nlist(n) lists)")
    p.add_argument("--candidates", default=",".join(map(str, CANDIDATES)), help="re-scoring candidate counts")
    p.add_argument("--alt-pq-m", type=int, default=128,
                   help="also measure IVF-PQ with this many sub-quantizers at one size in (50k, 200k]; 0: skip")
    p.add_argument("--grown-from", type=int, default=0,
                   help="also measure IVF-PQ trained on the first N videos only (default: HNSW_MAX_VECTORS + 1, "
                        "where auto switches to IVF-PQ), at sizes >= 4N")
    p.add_argument("--budget-s", type=float, default=840.0,
                   help="after this many seconds of measuring, remaining sweeps are skipped (and say so)")
    p.add_argument("--torch-threads", type=int, default=0, help="0: torch's default (one per core, as the service)")
    p.add_argument("--device", default="cpu", help="where the text encoder runs (cpu or cuda)")
    p.add_argument("--omp-wait-policy", choices=("default", "passive", "active"), default="passive",
                   help="OMP_WAIT_POLICY for this process (default: passive, see bench/omp_check.py for why)")
    p.add_argument("--skip-sweeps", action="store_true", help="only the text encoder and /search end to end")
    p.add_argument("--kinds", default="ivfpq,ivfpq-grown,ivfpq-alt,hnsw,flat", help="index kinds to sweep")
    p.add_argument("--cold", action="store_true",
                   help="after the IVF-PQ sweeps, evict this run's feature shards from the page cache "
                        "(posix_fadvise DONTNEED, our files only) and measure the default setting again")
    p.add_argument("--quiet-wait-s", type=float, default=600.0,
                   help="wait at most this long for a 1-min load average below 1.5 before measuring")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-append", action="store_true", help="print only; do not write BENCHMARKS.md")
    p.add_argument("--keep", action="store_true", help=f"keep {WORK}/query afterwards")
    return p


def run(args: argparse.Namespace, command: str, machine_extra: str = "") -> str:
    """Measure every size in ``args.sizes``; returns the BENCHMARKS.md section."""
    import torch

    from indexer.inference.sentences import SentenceEncoder
    from indexer.inference.visual import VisualEncoder
    from indexer.settings import Settings
    from indexer.storage.faiss_index import choose_index_type
    from indexer.storage.shards import FeatureStore

    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    if not args.grown_from:
        from indexer.storage.faiss_index import HNSW_MAX_VECTORS

        args.grown_from = HNSW_MAX_VECTORS + 1
    sizes = [int(x) for x in args.sizes.split(",") if x.strip()]
    e2e_sizes = {int(x) for x in args.e2e.split(",") if x.strip()}
    candidates = [int(x) for x in args.candidates.split(",") if x.strip()]
    synth = Synth()
    work = WORK / "query"
    record_bytes = 12_320
    require_disk(WORK, max(sizes) * record_bytes * 1.05 / 1024**3)
    shutil.rmtree(work, ignore_errors=True)

    load = wait_for_quiet(max_wait_s=args.quiet_wait_s)
    started = time.monotonic()
    deadline = started + args.budget_s
    model = build_model(args.device)
    encoder = VisualEncoder(Settings(home=work / "model-home", device=args.device), model=model)
    sentences = SentenceEncoder()
    text = text_encoder_latency(encoder, sentences, 100)
    print(f"text encoder p50 {percentile(text['clip'], 50):.1f} ms", flush=True)

    results: dict[int, dict[str, object]] = {}
    try:
        for n in sizes:
            print(f"== {n} videos", flush=True)
            col = generate(n, work / f"n{n}" / "home", synth, args.queries, args.seed + n)
            print(f"  generated in {col.gen_seconds:.0f} s", flush=True)
            store = FeatureStore(col.features_dir, FRAMES, DIM, owner="reader")
            res: dict[str, object] = {"col": col, "built": [], "sweeps": []}
            # A short wait per size (the first one waited up to 10 min): latencies are what a loaded CPU distorts.
            res["load"] = wait_for_quiet(max_wait_s=max(0.0, min(30.0, deadline - time.monotonic() - 300)))
            # IVF-PQ first: at 1M it is the candidate that matters, and flat (~0.2 s per query there) goes last.
            kinds = [k for k in ("ivfpq", "ivfpq-grown", "ivfpq-alt", "hnsw", "flat") if k in args.kinds.split(",")]
            for kind in () if args.skip_sweeps else kinds:
                if kind == "ivfpq-grown" and n < 4 * args.grown_from:
                    continue  # only where the collection outgrew its training set by far
                if kind == "ivfpq-alt" and not (args.alt_pq_m and 50_000 < n <= 200_000):
                    continue  # one mid size is enough to see what finer codes buy (its training is the slow part)
                if kind == "hnsw" and n > args.hnsw_max:
                    continue  # too slow to build here: extrapolated from the largest size it was built at
                if kind.startswith("ivfpq") and choose_index_type(n, "ivfpq") != "ivfpq":
                    continue  # too few vectors to train IVF-PQ: it would fall back to flat
                built = build_index(col, kind, args.ivf_train_max, args.grown_from, args.alt_pq_m)
                print(f"  built {kind} in {built.build_s:.1f} s ({built.serialized_bytes / n:.0f} B/video)",
                      flush=True)
                res["built"].append(built)  # type: ignore[union-attr]
                cands, limit = candidates, None
                if kind == "flat" and n > 50_000:  # tens of ms per query; exact order, so recall ~1 anyway
                    cands, limit = [c for c in candidates if c == 200] or candidates[:1], 50
                res["sweeps"] += sweep(col, store, built, cands, deadline, limit)  # type: ignore[operator]
                if kind == "ivfpq" and args.cold:
                    store = evict(col, store)
                    s = index_part(col, store, built, search_defaults()[1], nprobe=search_defaults()[0],
                                   param=f"nprobe {search_defaults()[0]}, cold page cache")
                    print(f"  cold cache: index part p50 {percentile(s.total_ms, 50):.2f} ms, read p50 "
                          f"{percentile(s.read_ms, 50):.2f} ms", flush=True)
                    res["sweeps"].append(s)  # type: ignore[union-attr]
                built.index = None  # free it before the next one
                gc.collect()
            results[n] = res
            store.close()
            if n in e2e_sizes and time.monotonic() < deadline:
                res["e2e"] = e2e_runs(col, model, args, work)
            col.pooled16 = np.empty((0, DIM), np.float16)
            if not args.keep:
                shutil.rmtree(work / f"n{n}", ignore_errors=True)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    elapsed = time.monotonic() - started
    body = render(results, text, synth, args, elapsed, hnsw_scaling(results))
    return entry(title(args), command, load, body, machine_extra)


def e2e_runs(col: Collection, model, args: argparse.Namespace, work) -> list[dict[str, object]]:
    """``/search`` end to end on each backend of ``--e2e-backends``, per transcript variant: none, ``--e2e-segments``
    per video, then with ``--e2e-long`` long videos mixed in. One database: the first backend of a variant writes
    its rows, the next one indexes the same rows (Milvus: frames copied from the shards into ``video_frames``)."""
    backends = [b.strip() for b in args.e2e_backends.split(",") if b.strip()]
    variants = ([] if args.e2e_skip_bare else [(0, 0)]) + ([(args.e2e_segments, 0)] if args.e2e_segments else [])
    if args.e2e_long:
        variants.append((args.e2e_segments, args.e2e_long))
    long_ids = np.unique(np.linspace(1, col.n, args.e2e_long).astype(int)).tolist() if args.e2e_long else []
    out: list[dict[str, object]] = []
    with contextlib.ExitStack() as stack:
        uri, pid = None, 0
        if "milvus" in backends:
            port = free_port()
            pid = stack.enter_context(milvus_lite_server(work / f"milvus-{col.n}", port))
            uri = f"http://127.0.0.1:{port}"
            connect_milvus(uri).close()
        have_videos = have_segments = have_long = False
        for segs, n_long in variants:
            for backend in backends:
                milvus = backend == "milvus"
                grow = bool(n_long and not have_long)

                def make(services, milvus=milvus, grow=grow) -> None:
                    if grow:
                        make_long(services, long_ids, args.e2e_long_segments, seed=col.n + 1)
                    point_rows(services, col, milvus)

                e2e = end_to_end(col, model, args.e2e_queries, args.device, insert=not have_videos,
                                 segments_per_video=segs if segs and not have_segments else 0,
                                 milvus_uri=uri if milvus else None,
                                 server_cpu_s=(lambda: proc_cpu_s(pid)) if milvus else (lambda: 0.0),
                                 before=make if have_videos else None)
                have_videos, have_segments, have_long = True, have_segments or bool(segs), have_long or bool(n_long)
                e2e.update(backend=backend, long=n_long, long_segments=args.e2e_long_segments)
                out.append(e2e)
                print(f"  /search p50 {percentile(e2e['ms'], 50):.1f} ms p99 {percentile(e2e['ms'], 99):.1f} "
                      f"({e2e['kind']}, {segs} segments per video, {n_long} long videos, {e2e['passages']} "
                      f"passages, start-up sync {e2e['sync_s']:.0f} s)", flush=True)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    policy = set_omp_wait_policy(args.omp_wait_policy)
    logging.basicConfig(level=logging.WARNING)
    md = run(args, command_line("bench.index_bench", argv), f"OMP_WAIT_POLICY {policy}")
    publish(md, write=not args.no_append)
    return 0


def title(args: argparse.Namespace) -> str:
    """The section's title: what was measured (with ``--skip-sweeps`` only ``/search`` end to end), and where,
    so that no run replaces the section of another kind of run."""
    name = ("Search latency end to end on synthetic collections" if args.skip_sweeps
            else "Query latency, recall and memory by index type")
    return name + (", on GPU" if args.device.startswith("cuda") else "")


def hnsw_scaling(results: dict[int, dict[str, object]]) -> dict[int, float]:
    """HNSW build seconds per size measured, for the extrapolation to sizes where it was not built."""
    return {n: b.build_s for n, r in results.items() for b in r["built"] if b.kind == "hnsw"}  # type: ignore


def render(results: dict[int, dict[str, object]], text: dict[str, list[float]], synth: Synth,
           args: argparse.Namespace, elapsed: float,
           hnsw_builds: dict[int, float]) -> str:
    from indexer.storage.faiss_index import DEFAULT_EF_SEARCH, DEFAULT_NPROBE, choose_index_type

    clip50, clip99 = percentile(text["clip"], 50), percentile(text["clip"], 99)
    parts = [
        f"Synthetic collections: {synth.describe()}. Exact scores: SAVE similarity with logit scale {LOGIT_SCALE:g}. "
        f"{args.queries} queries per setting, one at a time, page cache warm (the shards were just written). "
        f"Index part = ANN for `candidates` ids + `FeatureStore.read_many` (checksums verified) + exact SAVE "
        f"re-scoring + top {TOP_K}. Recall@10 against exact SAVE scoring of all videos; `ANN-only` is the recall "
        f"of the ANN order without re-scoring. RSS growth is only indicative (it also moves with memory-mapped "
        f"feature pages and freed buffers); the serialized size is the index's RAM. Run time {elapsed:.0f} s.",
        "",
        md_table(["text encoder alone (one query)", "p50 ms", "p99 ms"],
                 [["CLIP B/32 text tower (full size, random weights), tokenisation included", clip50, clip99],
                  ["MiniLM (search also embeds the query for transcript search)", percentile(text["minilm"], 50),
                   percentile(text["minilm"], 99)]]),
        "",
    ]
    size_rows = []
    for n, r in results.items():
        col: Collection = r["col"]  # type: ignore[assignment]
        for b in r["built"]:  # type: ignore[union-attr]
            size_rows.append([size_label(n), b.kind, b.note, b.build_s, b.serialized_bytes / n, b.rss_delta / n,
                              col.disk_bytes / n, "yes" if b.serialized_bytes / n <= RAM_GOAL_BYTES else "no"])
        if n > args.hnsw_max and hnsw_builds and not args.skip_sweeps:
            n0 = max(hnsw_builds)  # HNSW inserts cost ~log(n) each: n log n scaling from the largest build
            est = hnsw_builds[n0] * (n / n0) * math.log(n) / math.log(n0)
            size_rows.append([size_label(n), "hnsw", f"not built (extrapolated from {size_label(n0)})",
                              f"~{est:.0f} (extrapolated)", "~2330 (as measured at smaller sizes)", "n/a",
                              col.disk_bytes / n, "no"])
    if size_rows:  # none with --skip-sweeps
        parts += [md_table(["videos", "index", "parameters", "build s", "index bytes/video (serialized)",
                            "RSS growth bytes/video", "disk bytes/video (frame features)", "RAM goal <= 200 B"],
                           size_rows), ""]
    rows = []
    for n, r in results.items():
        for s in r["sweeps"]:  # type: ignore[union-attr]
            rows.append([size_label(n), s.kind, s.param, f"{s.candidates}" + ("" if len(s.total_ms) == args.queries
                                                                          else f" ({len(s.total_ms)} queries)"),
                         percentile(s.ann_ms, 50),
                         percentile(s.read_ms, 50), percentile(s.rescore_ms, 50), percentile(s.total_ms, 50),
                         percentile(s.total_ms, 99), f"{s.recall:.3f}", f"{s.ann_recall:.3f}"])
    if rows:
        parts += [md_table(["videos", "index", "setting", "candidates", "ANN p50 ms", "read p50 ms",
                            "re-score p50 ms", "index part p50 ms", "p99 ms", "recall@10", "ANN-only recall@10"],
                           rows)]
    parts += ["1-min load average when each size's measurements started: "
              + ", ".join(f"{size_label(n)}: {r['load']:.2f}" for n, r in results.items()) + ".", ""]
    best_rows = []
    for n, r in results.items():
        by_kind: dict[str, list[Sweep]] = {}
        for s in r["sweeps"]:  # type: ignore[union-attr]
            by_kind.setdefault(s.kind, []).append(s)
        for kind, ss in by_kind.items():
            b = best_config(ss)
            if b is None:
                best_rows.append([size_label(n), kind, "recall goal not reached", "", "", "", ""])
                continue
            p50 = percentile(b.total_ms, 50)
            best_rows.append([size_label(n), kind, b.param, b.candidates, f"{b.recall:.3f}", p50,
                              "yes" if p50 <= LATENCY_GOAL_MS else "no"])
    if best_rows:
        parts += ["Fastest setting per index that reaches recall@10 >= 0.98:", "",
                  md_table(["videos", "index", "setting", "candidates", "recall@10", "index part p50 ms",
                            "<= 5 ms p50"], best_rows), ""]
    e2e_rows, brows = [], []
    for n, r in results.items():
        for e2e in r.get("e2e") or []:  # type: ignore[union-attr]
            ms, direct = e2e["ms"], e2e["direct_ms"]
            p50 = percentile(ms, 50)
            transcripts = f"{e2e['segments']} segments/video" if e2e["segments"] else "none"
            if e2e.get("segments") == 0 and e2e.get("passages"):
                transcripts = f"{args.e2e_segments} segments/video"  # rows written by an earlier run
            if e2e.get("long"):
                transcripts += f" + {e2e['long']} long ({e2e['long_segments']} segments)"
            backend = e2e.get("backend", "faiss")
            e2e_rows.append([size_label(n), transcripts, e2e.get("passages", ""), backend, e2e["kind"],
                             e2e["candidates"], p50, percentile(ms, 99), percentile(direct, 50), p50 - clip50,
                             e2e["breakdown"]["encoders"], e2e["breakdown"]["outside the encoders"],
                             e2e.get("cache", "-"), e2e.get("passage_cache", "-"), e2e["cpu_ms"], e2e["sync_s"]])
            brows += [[size_label(n), transcripts, backend, k, v] for k, v in e2e["breakdown"].items()]
    if e2e_rows:
        parts += ["`GET /v1/search?k=10` end to end (real app through TestClient, a new query each time so the query "
                  "cache never hits, default settings: index type by `choose_index_type`, "
                  "`DEFAULT_EF_SEARCH`/`DEFAULT_NPROBE`, SearchService's `ann_candidates`; on Milvus, Milvus Lite as a"
                  " gRPC server process on this machine, frame features in the database's `video_frames`, the frame "
                  "and passage caches at their default sizes), on videos with synthetic transcripts (12 real English "
                  "words per 3-s segment, passages as the worker writes them: every segment, every window of up to 3, "
                  "the whole transcript, random MiniLM-sized embeddings: the full-text and passage parts do real "
                  "work), then with long videos mixed in (their transcripts replaced by many more segments, spread "
                  "over the ids). One SQLite database; the backends take turns on it. `SearchService.search` is the "
                  "same call without HTTP. `CPU ms per call` counts this process and the Milvus server:", "",
                  md_table(["videos", "transcripts", "passages", "backend", "index", "ann_candidates",
                            "/search p50 ms", "p99 ms", "SearchService.search p50 ms",
                            "p50 minus CLIP text p50 (goal on FAISS: <= 20)",
                            "mean ms in the text encoders (direct call)", "mean ms outside the encoders (direct call)",
                            "frame cache hits", "passage cache hits", "CPU ms per call (with Milvus's)",
                            "index sync at start-up s"],
                           e2e_rows), ""]
        parts += ["Where a direct `SearchService.search` call spends its time (mean ms per call; the rest of "
                  "`total` is ANN, full-text search and glue):", "",
                  md_table(["videos", "transcripts", "backend", "step", "mean ms"], brows), ""]
    if hnsw_builds:
        parts.append("HNSW build seconds measured: " + ", ".join(f"{size_label(n)}: {s:.0f}"
                                                                  for n, s in hnsw_builds.items()) + ".")
    parts.append("Code defaults when this ran: auto index = "
                 + ", ".join(f"{size_label(n)}: {choose_index_type(n)}" for n in results)
                 + f"; efSearch {DEFAULT_EF_SEARCH}, nprobe {DEFAULT_NPROBE}.")
    return "\n".join(parts)


if __name__ == "__main__":
    raise SystemExit(main())
