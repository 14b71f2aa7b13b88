"""Synthetic collections at the real dimensions and the query path measured on them, shared by
bench/index_bench.py, bench/backends_bench.py and bench/omp_check.py (not a benchmark itself: nothing here writes
BENCHMARKS.md).

Why synthetic data with clusters: real CLIP video vectors are anisotropic (a shared component: any two videos
have cosine ~0.4) and come in topics; frames of one video are similar but not equal. Uniform random vectors
would make every ANN method look perfect. The generator (see ``Synth``) has all three properties, and the SAVE
score (LSE over frames + pooled cosine, logit scale 100 as a trained model) differs from the pooled cosine the
ANN ranks by, which is what the re-scoring candidate count has to cover.
"""

from __future__ import annotations

import gc
import math
import random
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bench.harness import DIM, FRAMES, rss_bytes

TOP_K = 10
LOGIT_SCALE = 100.0  # a trained SAVE model's exp(logit_scale) (clamped at 100): the sharpest LSE, hardest case


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
        from indexer.storage.shards import SHARD_HEADER_BYTES, FeatureRef

        out = []
        for vid in ids.tolist():
            shard, pos = divmod(vid - 1, self.per_shard)
            out.append(FeatureRef(self.shard_names[shard], SHARD_HEADER_BYTES + pos * self.record_bytes, vid))
        return out


def generate(n: int, home: Path, synth: Synth, n_queries: int, seed: int, chunk: int = 20_000) -> Collection:
    """Write n videos as FeatureStore shards (the store's exact record format) and compute the exact top 10 of
    every query over all of them, chunk by chunk, from the fp16 values that are stored."""
    import torch

    from indexer.storage.shards import (
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


# -------------------------------------------------------------------------------------------------------------- indexes
@dataclass
class Built:
    kind: str
    index: object  # indexer.storage.faiss_index.VectorIndex
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

    from indexer.storage.faiss_index import VectorIndex, ivf_nlist, ivfpq_min_vectors

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

    from indexer.search.service import SearchService
    from indexer.storage.faiss_index import DEFAULT_NPROBE

    return DEFAULT_NPROBE, inspect.signature(SearchService).parameters["ann_candidates"].default


# ----------------------------------------------------------------------------------------------------------- end to end
def query_words() -> list[str]:
    """Real English words (the LJSpeech transcripts), so queries tokenise like real ones."""
    from tests.media_fixtures import ljspeech_transcripts

    words = sorted({w.strip(".,;:!?\"'()").lower() for t in ljspeech_transcripts().values() for w in t.split()})
    return [w for w in words if w.isalpha() and len(w) > 2]


def random_queries(count: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    words = query_words()
    return [" ".join(rng.sample(words, rng.randint(2, 6))) for _ in range(count)]


def insert_videos(services, col: Collection, version: str, batch: int = 10_000) -> float:
    """The database rows the worker would have committed for the synthetic videos (no transcripts)."""
    from sqlalchemy import insert

    from indexer.storage.db import Video, utcnow

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


def insert_segments(services, n_videos: int, per_video: int, seed: int, batch: int = 20_000,
                    video_ids: Sequence[int] | None = None) -> float:
    """Transcript segments for the synthetic videos (1..n_videos, or ``video_ids``), as the worker commits them:
    12 real English words each (so full-text queries match like real ones), 3 s each, and their passages
    (``indexer.passages.spans``: every segment, every window of up to 3, the whole transcript) with random unit
    MiniLM-sized embeddings, fp16."""
    from sqlalchemy import insert, update

    from indexer.passages import spans
    from indexer.storage.db import Passage, Segment, Video
    from indexer.storage.shards import write_tag

    rng = np.random.default_rng(seed)
    words = np.array(query_words())
    dim = services.sentences.dim
    ids = list(video_ids) if video_ids is not None else list(range(1, n_videos + 1))
    step = max(1, batch // per_video)
    start = time.perf_counter()
    with services.sessions.begin() as s:
        for lo in range(0, len(ids), step):
            vids = ids[lo:lo + step]
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
            # what the worker does with each write of a video's text: a new tag, so the search's cache reads it again
            s.execute(update(Video).where(Video.id.in_(vids)).values(text_tag=write_tag()))
    return time.perf_counter() - start


def point_rows(services, col: Collection, milvus: bool) -> None:
    """Point the video rows at the frame store the next backend reads: the shard files (FAISS) or the database's
    ``video_frames`` rows an earlier Milvus run copied (``copy_frame_features`` re-points the rows it copies), so
    both backends can take turns on one database without copying the frames again."""
    from sqlalchemy import select, update

    from indexer.storage.db import Video, VideoFrames
    from indexer.storage.sql_frames import DB_SHARD

    with services.sessions.begin() as s:
        if milvus:
            s.execute(update(Video).where(Video.id.in_(select(VideoFrames.video_id)))
                      .values(feature_shard=DB_SHARD, feature_offset=0))
            return
        ids = np.arange(1, col.n + 1)
        s.execute(update(Video), [{"id": int(v), "feature_shard": r.shard, "feature_offset": r.offset}
                                  for v, r in zip(ids.tolist(), col.refs(ids), strict=True)])


def make_long(services, video_ids: Sequence[int], per_video: int, seed: int) -> float:
    """Turn ``video_ids`` into long videos: their transcripts replaced by ``per_video`` segments of 3 s (534
    segments: ~27 min and 1,600 passages, what a 31-minute talk gets), as the worker would have committed them."""
    from sqlalchemy import delete, update

    from indexer.storage.db import Passage, Segment, Video

    start = time.perf_counter()
    with services.sessions.begin() as s:
        s.execute(delete(Passage).where(Passage.video_id.in_(video_ids)))
        s.execute(delete(Segment).where(Segment.video_id.in_(video_ids)))
        s.execute(update(Video).where(Video.id.in_(video_ids)).values(duration_s=3.0 * per_video))
    return time.perf_counter() - start + insert_segments(services, 0, per_video, seed, video_ids=video_ids)


def end_to_end(col: Collection, model, count: int, device: str = "cpu", index_type: str = "auto",
               insert: bool = True, segments_per_video: int = 0, milvus_uri: str | None = None,
               server_cpu_s: Callable[[], float] = lambda: 0.0, frame_store: str = "database",
               before: Callable[[object], None] | None = None) -> dict[str, object]:
    """``GET /v1/search`` through the real app on this collection, one new query at a time (no cache hits).
    With ``segments_per_video`` the videos get transcripts first (on top of an earlier call's rows). With
    ``milvus_uri`` the app runs on the Milvus backend: the frame features are copied from the shards into the
    database's ``video_frames`` table first (``copy_frame_features``, what moving a collection to Milvus does; with
    ``frame_store="milvus"`` into the Milvus ``frames`` collection), so run FAISS on a collection first.
    ``server_cpu_s``: CPU seconds of a server process doing part of the work, counted in the CPU time per call."""
    from fastapi.testclient import TestClient
    from sqlalchemy import func, select

    from app.main import create_app
    from indexer.inference.visual import VisualEncoder
    from indexer.ingest.reindex import copy_frame_features
    from indexer.services import Services
    from indexer.settings import Settings
    from indexer.storage.db import Passage

    backend = {"vector_store": "milvus", "milvus_uri": milvus_uri, "frame_store": frame_store,
               "milvus_collection_prefix": f"bench{col.n}"} if milvus_uri else {}
    settings = Settings(home=col.home, device=device, index_type=index_type, **backend)
    services = Services(settings, encoder=VisualEncoder(settings, model=model))
    version = services.encoder.status().model_version
    insert_s = insert_videos(services, col, version) if insert else 0.0
    if segments_per_video:
        insert_s += insert_segments(services, col.n, segments_per_video, seed=col.n)
    if before is not None:  # more rows (long videos) before the start-up repair
        start = time.perf_counter()
        before(services)
        insert_s += time.perf_counter() - start
    start = time.perf_counter()
    if milvus_uri:
        copy_frame_features(services)
    with services.index_lock:
        services.catalog.repair()  # what the worker's start-up does: the index from the database
    sync_s = time.perf_counter() - start
    catalog = services.catalog
    kind = f"milvus {catalog.index_type}" if milvus_uri else catalog.videos.index.kind
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
        store = search.store
        cache = f"{store.hits / max(1, store.hits + store.misses):.0%}" if hasattr(store, "hits") else "-"
        texts = getattr(search, "passages", None)  # an older SearchService has no passage cache
        passage_cache = f"{texts.hits / max(1, texts.hits + texts.misses):.0%}" if texts is not None else "-"
    with services.sessions() as s:
        passages = s.scalar(select(func.count()).select_from(Passage))
    calls = 2 * count  # the HTTP request and the direct call both run the wrapped steps
    breakdown = {k: 1000 * v / calls for k, v in parts.items()}
    breakdown["outside the encoders"] = breakdown["total"] - breakdown["encoders"]
    return {"ms": latencies, "direct_ms": direct, "kind": kind, "insert_s": insert_s, "sync_s": sync_s,
            "candidates": search.ann_candidates, "breakdown": breakdown, "segments": segments_per_video,
            "cpu_ms": cpu_ms, "cache": cache, "passage_cache": passage_cache, "passages": passages}


def _time_parts(search) -> dict[str, float]:
    """Wrap SearchService's steps on this instance to see where a direct ``search`` call spends its time (mean ms
    per call): query encoders (CLIP text + MiniLM, side by side), candidate scoring (SQL rows + features + exact
    re-scoring), within it the visual part (read features + re-scoring) and the transcript part (segment rows +
    one matrix product), and the page's rows; full-text search runs on a thread of its own while the encoders run
    (an earlier commit: inside the rest). The rest is ANN and glue."""
    totals = {"total": 0.0, "encoders": 0.0, "score (SQL + visual + segments)": 0.0,
              "visual (read + re-score)": 0.0, "segments (rows + cosine)": 0.0,
              "passages (rows + cosine + words)": 0.0, "page rows": 0.0,
              "full text + word statistics (beside the encoders)": 0.0}

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
    wrap("_search_words", "full text + word statistics (beside the encoders)")  # a thread of its own
    wrap("search", "total")
    return totals


def size_label(n: int) -> str:
    return f"{n // 1_000_000}M" if n >= 1_000_000 and n % 1_000_000 == 0 else f"{n // 1000}k"
