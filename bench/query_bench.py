"""Query benchmark: synthetic collections at the real dimensions (12 x 512 fp16 frame features per video in a
FeatureStore, pooled 512-d vectors in FAISS), flat vs HNSW vs IVF-PQ.

    .venv/bin/python -m bench.query_bench                          # 10k, 100k, 1M; appends to BENCHMARKS.md
    .venv/bin/python -m bench.query_bench --sizes 10000 --e2e 10000 --no-append   # a smoke run

Per collection size it measures, one query at a time (the latency a user sees):
- the index part alone: ANN search for ``candidates`` ids, reading their frame features from the feature shards
  (``FeatureStore.read_many``, checksums verified, as search does), exact SAVE re-scoring
  (``models.similarity.save_similarity``) and the top 10;
- recall@10 of that against exact SAVE scoring of ALL videos (brute force over every stored record, computed
  chunk by chunk while the collection is written, from the stored fp16 values);
- RAM per video (serialized FAISS index / n, and the process RSS growth while building it) and disk per video;
- the text encoder alone (CLIP B/32 text tower, full size, random weights, one query), and ``/search`` end to
  end through the real app (``create_app`` + TestClient) for the sizes in ``--e2e``.

Why synthetic data with clusters: real CLIP video vectors are anisotropic (a shared component: any two videos
have cosine ~0.4) and come in topics; frames of one video are similar but not equal. Uniform random vectors
would make every ANN method look perfect. The generator (see ``Synth``) has all three properties, and the SAVE
score (LSE over frames + pooled cosine, logit scale 100 as a trained model) differs from the pooled cosine the
ANN ranks by, which is what the re-scoring candidate count has to cover.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import gc
import logging
import math
import os
import random
import shutil
import socket
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bench.common import (
    WORK,
    command_line,
    entry,
    load1,
    md_table,
    percentile,
    publish,
    require_disk,
    rss_bytes,
    set_omp_wait_policy,
    wait_for_quiet,
)

DIM = 512
FRAMES = 12
TOP_K = 10
LOGIT_SCALE = 100.0  # a trained SAVE model's exp(logit_scale) (clamped at 100): the sharpest LSE, hardest case
CANDIDATES = (50, 100, 200, 400)
EF_SEARCH = (64, 128, 256)
NPROBE = (16, 32, 64)
RECALL_GOAL = 0.98
LATENCY_GOAL_MS = 5.0
RAM_GOAL_BYTES = 200


@dataclass(frozen=True)
class Synth:
    """Generator of the synthetic collection (noise vectors have unit expected norm: N(0, 1/D) per dim).

    centroid_k = normalize(common * g + u_k)           topics sharing one direction g (random pairs: cos ~0.4)
    video      = normalize(centroid_k + sigma_video * n)
    frame_t    = normalize(video + sigma_frame * n_t)    frame-to-video cos ~0.86, frame-to-frame ~0.74
    query      = normalize(centroid_k + sigma_query * n) query-to-video cos ~0.3-0.45, as CLIP text-video
    A share ``short`` of the videos has fewer than 12 valid frames (masked), as clips under 12 s.
    """

    videos_per_cluster: int = 500
    common: float = 0.8
    sigma_video: float = 0.8
    sigma_frame: float = 0.6
    sigma_query: float = 1.2
    short: float = 0.2

    def describe(self) -> str:
        return (f"{self.videos_per_cluster} videos per topic cluster, shared component {self.common}, "
                f"sigma video/frame/query {self.sigma_video}/{self.sigma_frame}/{self.sigma_query}, "
                f"{round(100 * self.short)} % of videos with fewer than 12 frames")

    def topics(self, g, n: int, n_queries: int):
        """(centroids [K, D], queries [Q, D]) for a collection of n videos, drawn from torch generator g."""
        import torch
        import torch.nn.functional as F

        inv = 1.0 / math.sqrt(DIM)
        n_clusters = max(8, n // self.videos_per_cluster)
        common = F.normalize(torch.randn(DIM, generator=g), dim=0)
        centroids = F.normalize(self.common * common
                                + F.normalize(torch.randn(n_clusters, DIM, generator=g), dim=-1), dim=-1)
        qc = torch.randint(n_clusters, (n_queries,), generator=g)
        queries = F.normalize(centroids[qc] + self.sigma_query * inv * torch.randn(n_queries, DIM, generator=g),
                              dim=-1)
        return centroids, queries

    def videos(self, g, centroids, count: int):
        """(frames fp16 [count, FRAMES, D] with masked frames zeroed, mask bool [count, FRAMES], pooled fp16
        [count, D]); the pooled vector is ``masked_mean_pool`` of the stored fp16 frames, as the worker stores it."""
        import torch
        import torch.nn.functional as F

        from models.similarity import masked_mean_pool

        inv = 1.0 / math.sqrt(DIM)
        cl = torch.randint(len(centroids), (count,), generator=g)
        centers = F.normalize(centroids[cl] + self.sigma_video * inv * torch.randn(count, DIM, generator=g), dim=-1)
        frames = torch.randn(count, FRAMES, DIM, generator=g).mul_(self.sigma_frame * inv).add_(centers[:, None])
        frames = F.normalize(frames, dim=-1)
        valid = torch.full((count,), FRAMES)
        short = torch.rand(count, generator=g) < self.short
        valid[short] = torch.randint(1, FRAMES, (int(short.sum()),), generator=g)
        mask = torch.arange(FRAMES)[None, :] < valid[:, None]
        frames16 = (frames * mask[..., None]).half()
        pooled16 = masked_mean_pool(frames16.float(), mask).half()
        return frames16, mask, pooled16


@dataclass
class Collection:
    """A written synthetic collection: feature shards on disk, pooled vectors and the exact answers in RAM."""

    n: int
    home: Path  # an app home: features live in home/features (the app reads them from there)
    shard_names: list[str]
    per_shard: int
    record_bytes: int
    pooled16: np.ndarray  # [n, D] fp16, row i is video id i + 1 (what the DB stores and the index is built from)
    queries: np.ndarray  # [Q, D] float32, unit length
    exact_top: np.ndarray  # [Q, TOP_K] video ids by exact SAVE score over all videos
    gen_seconds: float
    disk_bytes: int

    @property
    def features_dir(self) -> Path:
        return self.home / "features"

    def refs(self, ids: np.ndarray) -> list:
        from indexer.store import SHARD_HEADER_BYTES, FeatureRef

        out = []
        for vid in ids.tolist():
            shard, pos = divmod(vid - 1, self.per_shard)
            out.append(FeatureRef(self.shard_names[shard], SHARD_HEADER_BYTES + pos * self.record_bytes, vid))
        return out


def generate(n: int, home: Path, synth: Synth, n_queries: int, seed: int, chunk: int = 20_000) -> Collection:
    """Write n videos as FeatureStore shards (the store's exact record format) and compute the exact top 10 of
    every query over all of them, chunk by chunk, from the fp16 values that are stored."""
    import torch

    from indexer.store import (
        _CRC_START,
        _SHARD_HEADER,
        DEFAULT_MAX_SHARD_BYTES,
        FORMAT_VERSION,
        RECORD_MAGIC,
        SHARD_HEADER_BYTES,
        SHARD_MAGIC,
        FeatureStore,
    )
    from models.similarity import save_similarity

    start_time = time.perf_counter()
    g = torch.Generator().manual_seed(seed)
    root = home / "features"
    store = FeatureStore(root, FRAMES, DIM, owner="synth")  # writes store.json; records are written in bulk below
    dtype, rb = store.dtype, store.record_bytes
    crc_end = 16 + 2 * FRAMES * DIM + FRAMES
    per_shard = (DEFAULT_MAX_SHARD_BYTES - SHARD_HEADER_BYTES) // rb
    centroids, queries = synth.topics(g, n, n_queries)

    top_scores = torch.full((n_queries, TOP_K), -math.inf)
    top_ids = torch.full((n_queries, TOP_K), -1, dtype=torch.int64)
    pooled16 = np.empty((n, DIM), np.float16)
    shard_names: list[str] = []
    fh = None
    in_shard = per_shard
    header = _SHARD_HEADER.pack(SHARD_MAGIC, FORMAT_VERSION, FRAMES, DIM, rb).ljust(SHARD_HEADER_BYTES, b"\0")
    try:
        for lo in range(0, n, chunk):
            c = min(chunk, n - lo)
            frames16, mask, pooled_t = synth.videos(g, centroids, c)
            f16 = frames16.numpy()
            m8 = mask.numpy().astype(np.uint8)
            f32 = frames16.float()  # the stored values, for the exact scores
            pooled = pooled_t.numpy()
            pooled16[lo:lo + c] = pooled
            ids = np.arange(lo + 1, lo + c + 1, dtype=np.int64)

            rec = np.zeros(c, dtype)
            rec["magic"] = RECORD_MAGIC
            rec["video_id"] = ids
            rec["frames"] = f16
            rec["mask"] = m8
            raw = rec.view(np.uint8).reshape(c, rb)
            rec["crc"] = np.fromiter((zlib.crc32(raw[i, _CRC_START:crc_end]) for i in range(c)), np.uint32, c)
            done = 0
            while done < c:
                if in_shard == per_shard:
                    if fh is not None:
                        fh.close()
                    name = f"synth-{len(shard_names) + 1:05d}.feat"
                    shard_names.append(name)
                    fh = open(root / name, "wb")  # noqa: SIM115 - kept open across chunks, closed below
                    fh.write(header)
                    in_shard = 0
                take = min(c - done, per_shard - in_shard)
                fh.write(raw[done:done + take].tobytes())
                done += take
                in_shard += take

            with torch.no_grad():
                sims = save_similarity(queries, f32, mask, torch.from_numpy(pooled.astype(np.float32)), LOGIT_SCALE)
            both_s = torch.cat([top_scores, sims], dim=1)
            both_i = torch.cat([top_ids, torch.from_numpy(ids).expand(n_queries, -1)], dim=1)
            best = both_s.topk(TOP_K, dim=1)
            top_scores, top_ids = best.values, both_i.gather(1, best.indices)
            del frames16, f32, sims, rec, raw
    finally:
        if fh is not None:
            fh.close()
        store.close()
    disk = sum((root / s).stat().st_size for s in shard_names)
    return Collection(n, home, shard_names, per_shard, rb, pooled16, queries.numpy(), top_ids.numpy(),
                      time.perf_counter() - start_time, disk)


# ----------------------------------------------------------------------------------------------- indexes
@dataclass
class Built:
    kind: str
    index: object  # indexer.store.VectorIndex
    build_s: float
    serialized_bytes: int
    rss_delta: int
    note: str = ""


def build_index(col: Collection, kind: str, train_max: int, grown_from: int = 0, alt_pq_m: int = 0) -> Built:
    """A VectorIndex over the collection's pooled vectors (fp16 in the DB, so fp16-rounded here too).

    ``ivfpq-grown``: the IVF-PQ index the service ends up with when the collection grew past the auto threshold
    (``grown_from`` videos) and kept growing: the catalog trains it once, at the switch, on the videos it had then
    (nlist = ivf_nlist(grown_from)), and only adds after that.
    ``ivfpq-alt``: IVF-PQ with ``alt_pq_m`` sub-quantizers instead of the default 64 (finer codes, more bytes).
    """
    import faiss

    from indexer.store import VectorIndex, ivf_nlist, ivfpq_min_vectors

    gc.collect()
    before = rss_bytes()
    start = time.perf_counter()
    note = ""
    ids = np.arange(1, col.n + 1, dtype=np.int64)
    if kind in ("ivfpq", "ivfpq-alt"):
        nlist = ivf_nlist(col.n)
        pq_m = alt_pq_m if kind == "ivfpq-alt" else None
        # VectorIndex.create trains on every vector it is given; on 2 cores k-means over 1M x 4000 lists takes
        # long, so big collections train on a sample (>= the minimum faiss wants) and the rest is added.
        train_n = min(col.n, max(train_max, ivfpq_min_vectors(nlist)))
        order = np.random.default_rng(0).permutation(col.n)
        first, rest = order[:train_n], order[train_n:]
        index = VectorIndex.create(DIM, "ivfpq", col.pooled16[first].astype(np.float32), ids[first], nlist=nlist,
                                   pq_m=pq_m)
        for lo in range(0, len(rest), 200_000):
            part = rest[lo:lo + 200_000]
            index.add(ids[part], col.pooled16[part].astype(np.float32))
        note = f"nlist {nlist}, PQ {index.params()['pq_m']}x8, trained on {train_n} vectors"
    elif kind == "ivfpq-grown":
        first = min(col.n, grown_from)
        index = VectorIndex.create(DIM, "ivfpq", col.pooled16[:first].astype(np.float32), ids[:first])
        for lo in range(first, col.n, 200_000):
            index.add(ids[lo:lo + 200_000], col.pooled16[lo:lo + 200_000].astype(np.float32))
        p = index.params()
        note = (f"nlist {p['nlist']}, PQ {p['pq_m']}x8, trained on the first {first} videos, the rest added"
                if index.kind == "ivfpq" else f"too few vectors ({first}) to train IVF-PQ: flat")
    else:
        index = VectorIndex.create(DIM, kind, col.pooled16.astype(np.float32), ids)
        if kind == "hnsw":
            p = index.params()
            note = f"M {p['M']}, efConstruction {p['ef_construction']}"
    build_s = time.perf_counter() - start
    gc.collect()
    rss_delta = rss_bytes() - before
    size = int(faiss.serialize_index(index.faiss_index).nbytes)
    return Built(kind, index, build_s, size, rss_delta, note)


@dataclass
class Sweep:
    kind: str
    param: str
    candidates: int
    ann_ms: list[float]
    total_ms: list[float]
    read_ms: list[float]
    rescore_ms: list[float]
    recall: float
    ann_recall: float  # recall@10 of the ANN order alone (pooled cosine), without re-scoring


def index_part(col: Collection, store, built: Built, candidates: int, *, ef_search: int | None = None,
               nprobe: int | None = None, param: str = "", limit: int | None = None) -> Sweep:
    """One query at a time: ANN -> read candidate features -> exact SAVE scores -> top 10."""
    import torch

    from models.similarity import save_similarity

    ann_ms, read_ms, rescore_ms, total_ms = [], [], [], []
    hits = ann_hits = 0
    queries = col.queries[:limit] if limit else col.queries
    for qi, q in enumerate(queries):
        t0 = time.perf_counter()
        _, ids = built.index.search(q[None], candidates, ef_search=ef_search, nprobe=nprobe)
        t1 = time.perf_counter()
        found = ids[0][ids[0] >= 0]
        frames, masks = store.read_many(col.refs(found))
        pooled = col.pooled16[found - 1].astype(np.float32)
        t2 = time.perf_counter()
        # The conversions search does (VisualEncoder.score): fp16 -> fp32 frames, uint8 -> int64 masks.
        scores = save_similarity(torch.from_numpy(q[None]), torch.from_numpy(frames.astype(np.float32)),
                                 torch.from_numpy(masks.astype(np.int64)), torch.from_numpy(pooled),
                                 LOGIT_SCALE).numpy()[0]
        order = np.lexsort((found, -scores))[:TOP_K]
        top = found[order]
        t3 = time.perf_counter()
        ann_ms.append(1000 * (t1 - t0))
        read_ms.append(1000 * (t2 - t1))
        rescore_ms.append(1000 * (t3 - t2))
        total_ms.append(1000 * (t3 - t0))
        truth = set(col.exact_top[qi].tolist())
        hits += len(truth & set(top.tolist()))
        ann_hits += len(truth & set(found[:TOP_K].tolist()))
    denom = TOP_K * len(queries)
    return Sweep(built.kind, param, candidates, ann_ms, total_ms, read_ms, rescore_ms, hits / denom,
                 ann_hits / denom)


def search_defaults() -> tuple[int, int]:
    """(nprobe, candidates) the service uses by default."""
    import inspect

    from indexer.search import SearchService
    from indexer.store import DEFAULT_NPROBE

    return DEFAULT_NPROBE, inspect.signature(SearchService).parameters["ann_candidates"].default


def evict(col: Collection, store):
    """Drop this collection's shards from the page cache (only our own files), for a cold-read measurement:
    at 1M videos the 12 GB of frame features may not stay cached, and then every candidate is a disk read."""
    from indexer.store import FeatureStore

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


# ----------------------------------------------------------------------------------------------- end to end
def query_words() -> list[str]:
    """Real English words (the LJSpeech transcripts), so queries tokenise like real ones."""
    from tests.media_fixtures import ljspeech_transcripts

    words = sorted({w.strip(".,;:!?\"'()").lower() for t in ljspeech_transcripts().values() for w in t.split()})
    return [w for w in words if w.isalpha() and len(w) > 2]


def random_queries(count: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    words = query_words()
    return [" ".join(rng.sample(words, rng.randint(2, 6))) for _ in range(count)]


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


def insert_videos(services, col: Collection, version: str, batch: int = 10_000) -> float:
    """The database rows the worker would have committed for the synthetic videos (no transcripts)."""
    from sqlalchemy import insert

    from indexer.db import Video, utcnow

    start = time.perf_counter()
    now = utcnow()
    with services.sessions.begin() as s:
        for lo in range(0, col.n, batch):
            ids = np.arange(lo + 1, min(col.n, lo + batch) + 1)
            refs = col.refs(ids)
            rows = [dict(id=int(v), content_hash=f"{v:064x}", filename=f"synthetic-{v}.mp4", source_path="/dev/null",
                         size_bytes=0, duration_s=30.0, has_audio=False, transcript="", model_version=version,
                         model_mode="save-fused", feature_shard=r.shard, feature_offset=r.offset,
                         pooled=col.pooled16[v - 1].tobytes(), status="indexed", created_at=now)
                    for v, r in zip(ids.tolist(), refs, strict=True)]
            s.execute(insert(Video), rows)
    return time.perf_counter() - start


def insert_segments(services, n_videos: int, per_video: int, seed: int, batch: int = 20_000) -> float:
    """Transcript segments for the synthetic videos, as the worker commits them: 12 real English words each (so
    full-text queries match like real ones), and their passages (``indexer.passages.spans``) with random unit
    MiniLM-sized embeddings, fp16."""
    from sqlalchemy import insert

    from indexer.db import Passage, Segment
    from indexer.passages import spans

    rng = np.random.default_rng(seed)
    words = np.array(query_words())
    dim = services.sentences.dim
    start = time.perf_counter()
    with services.sessions.begin() as s:
        for lo in range(1, n_videos + 1, batch // per_video):
            vids = range(lo, min(n_videos, lo + batch // per_video - 1) + 1)
            text = rng.choice(words, (len(vids) * per_video, 12))
            rows = [dict(video_id=v, idx=i, start_s=3.0 * i, end_s=3.0 * i + 3.0, text=" ".join(text[j]),
                         norm_text=" ".join(text[j]).lower())
                    for j, (v, i) in enumerate((v, i) for v in vids for i in range(per_video))]
            s.execute(insert(Segment), rows)
            per_video_rows = [rows[k:k + per_video] for k in range(0, len(rows), per_video)]
            passages = [dict(video_id=v, first_idx=p.first, last_idx=p.last, start_s=p.start, end_s=p.end)
                        for v, group in zip(vids, per_video_rows, strict=True)
                        for p in spans([(r["start_s"], r["end_s"], r["text"]) for r in group])]
            emb = rng.standard_normal((len(passages), dim)).astype(np.float32)
            emb = (emb / np.linalg.norm(emb, axis=1, keepdims=True)).astype(np.float16)
            for row, e in zip(passages, emb, strict=True):
                row["embedding"] = e.tobytes()
            s.execute(insert(Passage), passages)
    return time.perf_counter() - start


def end_to_end(col: Collection, model, count: int, device: str = "cpu", index_type: str = "auto",
               insert: bool = True, segments_per_video: int = 0, milvus_uri: str | None = None,
               server_cpu_s: Callable[[], float] = lambda: 0.0) -> dict[str, object]:
    """``GET /v1/search`` through the real app on this collection, one new query at a time (no cache hits).
    With ``segments_per_video`` the videos get transcripts first (on top of an earlier call's rows). With
    ``milvus_uri`` the app runs on the Milvus backend: the frame features are copied from the shards into Milvus
    first (``copy_shard_features``, what moving a collection to Milvus does), so run FAISS on a collection first.
    ``server_cpu_s``: CPU seconds of a server process doing part of the work, counted in the CPU time per call."""
    from fastapi.testclient import TestClient

    from app.main import create_app
    from indexer.encode import VisualEncoder
    from indexer.reindex import copy_shard_features
    from indexer.settings import Settings
    from indexer.worker import Services

    backend = {"vector_store": "milvus", "milvus_uri": milvus_uri,
               "milvus_collection_prefix": f"bench{col.n}"} if milvus_uri else {}
    settings = Settings(home=col.home, device=device, index_type=index_type, **backend)
    services = Services(settings, encoder=VisualEncoder(settings, model=model))
    version = services.encoder.status().model_version
    insert_s = insert_videos(services, col, version) if insert else 0.0
    if segments_per_video:
        insert_s += insert_segments(services, col.n, segments_per_video, seed=col.n)
    start = time.perf_counter()
    if milvus_uri:
        copy_shard_features(services)
    with services.index_lock:
        services.catalog.repair()  # what the worker's start-up does: the index from the database
    sync_s = time.perf_counter() - start
    catalog = services.catalog
    kind = f"milvus {settings.milvus_index}" if milvus_uri else catalog.videos.index.kind
    latencies, direct = [], []
    queries = random_queries(2 * count + 10, seed=2)
    with TestClient(create_app(settings, embedded_worker=False, services=services)) as client:
        search = client.app.state.save.search  # the app's SearchService, to time it without HTTP as well
        parts = _time_parts(search)
        cpu, server_cpu = time.process_time(), server_cpu_s()
        for i in range(count + 5):
            t0 = time.perf_counter()
            r = client.get("/v1/search", params={"q": queries[2 * i], "k": TOP_K})
            t1 = time.perf_counter()
            search.search(queries[2 * i + 1], k=TOP_K)
            t2 = time.perf_counter()
            r.raise_for_status()
            if i == 0 and len(r.json()["results"]) != TOP_K:
                raise RuntimeError(f"expected {TOP_K} results, got {r.json()}")
            if i < 5:  # warm-up calls do not count in the breakdown either
                for key in parts:
                    parts[key] = 0.0
            else:
                latencies.append(1000 * (t1 - t0))
                direct.append(1000 * (t2 - t1))
        cpu_ms = 1000 * (time.process_time() - cpu + server_cpu_s() - server_cpu) / (2 * (count + 5))
    calls = 2 * count  # the HTTP request and the direct call both run the wrapped steps
    breakdown = {k: 1000 * v / calls for k, v in parts.items()}
    breakdown["outside the encoders"] = breakdown["total"] - breakdown["encoders"]
    return {"ms": latencies, "direct_ms": direct, "kind": kind, "insert_s": insert_s, "sync_s": sync_s,
            "candidates": search.ann_candidates, "breakdown": breakdown, "segments": segments_per_video,
            "cpu_ms": cpu_ms}


def _time_parts(search) -> dict[str, float]:
    """Wrap SearchService's steps on this instance to see where a direct ``search`` call spends its time (mean ms
    per call): query encoders (CLIP text + MiniLM, side by side), candidate scoring (SQL rows + features + exact
    re-scoring), within it the visual part (read features + re-scoring) and the transcript part (segment rows +
    one matrix product), and the page's rows. The rest is ANN, full-text search and glue."""
    totals = {"total": 0.0, "encoders": 0.0, "score (SQL + visual + segments)": 0.0,
              "visual (read + re-score)": 0.0, "segments (rows + cosine)": 0.0,
              "passages (rows + cosine + words)": 0.0, "page rows": 0.0}

    def wrap(name: str, label: str) -> None:
        inner = getattr(search, name, None)
        if inner is None:  # an older SearchService (the bench also measures earlier commits)
            return

        def timed(*a, **kw):
            t0 = time.perf_counter()
            try:
                return inner(*a, **kw)
            finally:
                totals[label] += time.perf_counter() - t0

        setattr(search, name, timed)

    wrap("_query_vectors", "encoders")
    wrap("_score", "score (SQL + visual + segments)")
    wrap("_visual_scores", "visual (read + re-score)")
    wrap("_best_segments", "segments (rows + cosine)")  # before passages (earlier commits)
    wrap("_text_scores", "passages (rows + cosine + words)")
    wrap("_hydrate", "page rows")
    wrap("search", "total")
    return totals


# ----------------------------------------------------------------------------------------------- report
def best_config(sweeps: Sequence[Sweep]) -> Sweep | None:
    """The fastest (p50 of the index part) setting that reaches the recall goal."""
    ok = [s for s in sweeps if s.recall >= RECALL_GOAL]
    return min(ok, key=lambda s: percentile(s.total_ms, 50)) if ok else None


# ----------------------------------------------------------------------------------------------- backends side by side
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


def proc_cpu_s(pid: int) -> float:
    """User + system CPU seconds of another process (the milvus-lite server), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proc_rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


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

    from indexer.store import ivf_training_sample

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


@contextlib.contextmanager
def milvus_lite_server(folder: Path, port: int) -> Iterator[int]:
    """A milvus-lite 2.5 gRPC server (its own process, as a deployment runs it) on 127.0.0.1:port; yields its pid."""
    from milvus_lite.server import Server

    folder.mkdir(parents=True, exist_ok=True)
    server = Server(str(folder / "bench.db"), address=f"127.0.0.1:{port}")
    if not server.start():
        raise RuntimeError("milvus-lite did not start (see its log above)")
    try:
        yield server._p.pid  # noqa: SLF001 - the server's process, for its RSS and CPU time
    finally:
        server.stop()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


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


def connect_milvus(uri: str, attempts: int = 50):
    """A MilvusClient once the freshly started server answers (it needs a moment to open its port)."""
    from pymilvus import MilvusClient
    from pymilvus.exceptions import MilvusException

    for attempt in range(attempts):
        try:
            return MilvusClient(uri=uri, timeout=5)
        except MilvusException:
            if attempt == attempts - 1:
                raise
            time.sleep(0.2)
    raise AssertionError("unreachable")


def end_to_end_side_by_side(n: int, backends: list[str], args: argparse.Namespace, work: Path) -> list[list[object]]:
    """/search end to end on each backend over one collection of n videos (FAISS first: the Milvus run moves the
    frame features into Milvus); table rows."""
    from bench.ingest_bench import build_model

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

    from indexer.milvus_store import MILVUS_SHARD, MilvusCatalog
    from indexer.store import FeatureRef

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

    from indexer.store import ivf_nlist

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


def size_label(n: int) -> str:
    return f"{n // 1_000_000}M" if n >= 1_000_000 and n % 1_000_000 == 0 else f"{n // 1000}k"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="1000000,100000,10000",
                   help="collection sizes (videos), measured in this order: the largest first, so the time budget "
                        "never cuts the numbers that matter most")
    p.add_argument("--queries", type=int, default=200, help="queries per setting")
    p.add_argument("--e2e", default="10000,100000", help="sizes that also get /search end to end")
    p.add_argument("--e2e-queries", type=int, default=100)
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
    p.add_argument("--backend", default="faiss",
                   help="faiss: the FAISS index types above; a list with milvus (e.g. faiss,milvus): the raw ANN "
                        "side by side instead, IVF_FLAT on each listed backend at equal recall@10 (needs milvus-lite)")
    p.add_argument("--pooled-cache", default="",
                   help="with milvus: keep the generated pooled vectors and exact answers in this .npz ({n} = size) "
                        "and reuse them if it exists (a rerun skips generating); deleted by nobody but you")
    p.add_argument("--stop-at-recall", type=float, default=0.0,
                   help="with milvus: stop each backend's nprobe sweep at the first recall@10 >= this (0: sweep all)")
    p.add_argument("--flat-queries", type=int, default=0,
                   help="with milvus: the FAISS exact-scan baseline runs only the first N queries (0: all)")
    p.add_argument("--frames-videos", type=int, default=0,
                   help="with milvus: also write this many videos' frame features into the Milvus backend's frame "
                        "collection and measure RAM/disk per video and the re-scoring read")
    p.add_argument("--quiet-wait-s", type=float, default=600.0,
                   help="wait at most this long for a 1-min load average below 1.5 before measuring")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-append", action="store_true")
    p.add_argument("--keep", action="store_true", help=f"keep {WORK}/query afterwards")
    return p


def run(args: argparse.Namespace, command: str, machine_extra: str = "") -> str:
    """Measure every size in ``args.sizes``; returns the BENCHMARKS.md section."""
    import torch

    from bench.ingest_bench import build_model
    from indexer.encode import VisualEncoder
    from indexer.settings import Settings
    from indexer.store import FeatureStore, choose_index_type
    from indexer.transcripts import SentenceEncoder

    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    if not args.grown_from:
        from indexer.store import HNSW_MAX_VECTORS

        args.grown_from = HNSW_MAX_VECTORS + 1
    sizes = [int(x) for x in args.sizes.split(",") if x.strip()]
    e2e_sizes = {int(x) for x in args.e2e.split(",") if x.strip()}
    candidates = [int(x) for x in args.candidates.split(",") if x.strip()]
    synth = Synth()
    work = WORK / "query"
    record_bytes = 12_320
    require_disk(WORK, max(sizes) * record_bytes * 1.05 / 1024**3)
    shutil.rmtree(work, ignore_errors=True)

    load = wait_for_quiet()
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
                res["e2e"] = []
                for segs in (0, args.e2e_segments) if args.e2e_segments else (0,):
                    e2e = end_to_end(col, model, args.e2e_queries, args.device, insert=not segs,
                                     segments_per_video=segs)
                    res["e2e"].append(e2e)  # type: ignore[union-attr]
                    print(f"  /search p50 {percentile(e2e['ms'], 50):.1f} ms ({e2e['kind']}, {segs} segments "
                          "per video)", flush=True)
            col.pooled16 = np.empty((0, DIM), np.float16)
            if not args.keep:
                shutil.rmtree(work / f"n{n}", ignore_errors=True)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    elapsed = time.monotonic() - started
    body = render(results, text, synth, args, elapsed, hnsw_scaling(results))
    return entry("Query latency, recall and memory by index type", command, load, body, machine_extra)


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    policy = set_omp_wait_policy(args.omp_wait_policy)
    logging.basicConfig(level=logging.WARNING)
    unknown = set(args.backend.split(",")) - set(BACKENDS)
    if unknown:
        raise SystemExit(f"--backend: unknown {', '.join(sorted(unknown))}; expected a list of {', '.join(BACKENDS)}")
    command = command_line("bench.query_bench", argv)
    if "milvus" in args.backend.split(","):
        md = ann_side_by_side(args, command, f"OMP_WAIT_POLICY {policy}")
    else:
        md = run(args, command, f"OMP_WAIT_POLICY {policy}")
    publish(md, append=not args.no_append)
    return 0


def hnsw_scaling(results: dict[int, dict[str, object]]) -> dict[int, float]:
    """HNSW build seconds per size measured, for the extrapolation to sizes where it was not built."""
    return {n: b.build_s for n, r in results.items() for b in r["built"] if b.kind == "hnsw"}  # type: ignore


def render(results: dict[int, dict[str, object]], text: dict[str, list[float]], synth: Synth,
           args: argparse.Namespace, elapsed: float,
           hnsw_builds: dict[int, float]) -> str:
    from indexer.store import DEFAULT_EF_SEARCH, DEFAULT_NPROBE, choose_index_type

    clip50, clip99 = percentile(text["clip"], 50), percentile(text["clip"], 99)
    minilm50 = percentile(text["minilm"], 50)
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
            e2e_rows.append([size_label(n), transcripts, e2e["kind"], e2e["candidates"], p50, percentile(ms, 99),
                             percentile(direct, 50), p50 - clip50, p50 - clip50 - minilm50,
                             e2e["breakdown"]["outside the encoders"], e2e["sync_s"]])
            brows += [[size_label(n), transcripts, k, v] for k, v in e2e["breakdown"].items()]
    if e2e_rows:
        parts += ["`GET /v1/search?k=10` end to end (real app through TestClient, a new query each time so the "
                  "query cache never hits, default settings: index type by `choose_index_type`, "
                  "`DEFAULT_EF_SEARCH`/`DEFAULT_NPROBE`, SearchService's `ann_candidates`), first on videos without "
                  "transcripts, then with synthetic transcripts (12 real English words per segment, random "
                  "embeddings: the full-text and segment parts do real work). `SearchService.search` is the same "
                  "call without HTTP:", "",
                  md_table(["videos", "transcripts", "index (auto)", "ann_candidates", "/search p50 ms", "p99 ms",
                            "SearchService.search p50 ms", "p50 minus CLIP text p50",
                            "p50 minus CLIP and MiniLM p50", "mean ms outside the encoders (direct call)",
                            "index build at start-up s"], e2e_rows), ""]
        parts += ["Where a direct `SearchService.search` call spends its time (mean ms per call; the rest of "
                  "`total` is ANN, full-text search and glue):", "",
                  md_table(["videos", "transcripts", "step", "mean ms"], brows), ""]
    if hnsw_builds:
        parts.append("HNSW build seconds measured: " + ", ".join(f"{size_label(n)}: {s:.0f}"
                                                                  for n, s in hnsw_builds.items()) + ".")
    parts.append("Code defaults when this ran: auto index = "
                 + ", ".join(f"{size_label(n)}: {choose_index_type(n)}" for n in results)
                 + f"; efSearch {DEFAULT_EF_SEARCH}, nprobe {DEFAULT_NPROBE}.")
    return "\n".join(parts)


if __name__ == "__main__":
    raise SystemExit(main())
