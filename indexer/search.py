"""Search: query -> candidates (ANN over pooled SAVE vectors, transcript segments by meaning and by words)
-> exact SAVE similarity on the stored frame features -> fusion with the transcript match -> best moment.

Fusion (documented in the README): ``score = (1 - w) * visual + w * speech`` where
- visual = exact SAVE similarity / logit scale (a cosine-like number, about -1..1; SAVE's LSE term adds up
  to log(12)/(2*scale) ~ 0.012 for a fused model),
- speech = max over the video's segments of max(cosine of MiniLM embeddings, full-text score in [0, 1]),
- w = ``speech_weight`` (default 0.5). In speech mode (no visual model) score = speech.
Candidates: the ``pool_size(k)`` best videos of the visual ANN plus as many by their best transcript segment
(segment ANN by meaning, full text by words). Every candidate from any source gets all its parts computed
exactly, so the ranking does not depend on which source found it. The pool depends on the query and k only,
ties break by video id, so pages are stable; a query pages through at most its pool.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from sqlalchemy import func, select

from .db import Segment, Video
from .store import FeatureRef, FeatureStoreError
from .transcripts import search_segments
from .worker import Services

log = logging.getLogger(__name__)

SEGMENTS_PER_CANDIDATE = 4  # segment index hits asked for per wanted speech candidate



@dataclass
class Moment:
    start: float
    end: float
    text: str


@dataclass
class SearchResult:
    video_id: int
    filename: str
    score: float
    visual_score: float | None
    speech_score: float | None
    duration: float
    transcript: str
    segment: Moment | None
    language: str | None = None
    thumbnail_path: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class _Scored:
    """A candidate's scores, before its row is loaded for display."""

    video_id: int
    score: float
    visual_score: float | None
    speech_score: float | None
    segment_id: int | None


@dataclass
class SearchPage:
    results: list[SearchResult]
    total_candidates: int
    mode: str
    offset: int = 0
    as_of: int = 0  # the largest video id considered: later pages of the same query use the same set
    notes: list[str] = field(default_factory=list)


class QueryCache:
    """Recent query embeddings: repeated and paged queries skip the text encoder."""

    def __init__(self, size: int = 1024) -> None:
        self.size = size
        self._data: dict[str, object] = {}
        self._lock = threading.Lock()

    def get(self, key: str):
        with self._lock:
            return self._data.get(key)

    def put(self, key: str, value) -> None:
        with self._lock:
            if len(self._data) >= self.size:
                self._data.pop(next(iter(self._data)))
            self._data[key] = value


class QueryBatcher:
    """Concurrent queries share one encoder pass: the first waiting request encodes everything that queued
    up behind it (up to ``max_batch``), so requests never serialise one by one on the model."""

    def __init__(self, encode: Callable[[list[str]], list], lock: threading.Lock, max_batch: int = 32) -> None:
        self._encode = encode
        self._lock = lock
        self._max_batch = max_batch
        self._pending: list[tuple[str, Future]] = []
        self._pending_lock = threading.Lock()

    def encode(self, query: str):
        future: Future = Future()
        with self._pending_lock:
            self._pending.append((query, future))
        while not future.done():
            if self._lock.acquire(timeout=0.05):
                try:
                    with self._pending_lock:
                        batch, self._pending = self._pending[:self._max_batch], self._pending[self._max_batch:]
                    if batch:
                        try:
                            results = self._encode([q for q, _ in batch])
                            for (_, f), r in zip(batch, results, strict=True):
                                f.set_result(r)
                        except Exception as exc:  # noqa: BLE001 - every waiter gets the error
                            for _, f in batch:
                                f.set_exception(exc)
                finally:
                    self._lock.release()
        return future.result()


class SearchService:
    """Shared by the CLI and the API; thread-safe for concurrent queries."""

    def __init__(self, services: Services, speech_weight: float | None = None, ann_candidates: int = 200) -> None:
        self.services = services
        settings = services.settings
        self.speech_weight = settings.speech_weight if speech_weight is None else speech_weight
        self.max_query_chars, self.max_k = settings.max_query_chars, settings.max_k
        self.ann_candidates = ann_candidates
        self.cache = QueryCache()
        self._model_lock = threading.Lock()
        # MiniLM runs on this thread while CLIP encodes the same queries: on CPU the two small models overlap
        # (about 10 ms less per query on 2 cores than one after the other, BENCHMARKS.md).
        self._sentence_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="query-sentences")
        self.batcher = QueryBatcher(self._encode_batch, self._model_lock)
        model = services.encoder.model
        self.store = None
        if model is not None:
            from .store import FeatureStore

            self.store = FeatureStore(services.settings.features_dir, model.config.num_frames,
                                      model.config.embed_dim, owner="reader")

    def _encode_batch(self, queries: list[str]) -> list[tuple[torch.Tensor | None, np.ndarray]]:
        encoder = self.services.encoder
        if not encoder.available:
            return [(None, row) for row in self.services.sentences.encode(queries)]
        pending = self._sentence_thread.submit(self.services.sentences.encode, queries)
        try:
            visual = encoder.encode_queries(queries)
        finally:
            sentences = pending.result()  # never leave the thread running past this call
        return [(None if visual is None else visual[i:i + 1], sentences[i]) for i in range(len(queries))]

    @property
    def mode(self) -> str:
        return self.services.encoder.status().mode

    def _query_vectors(self, query: str) -> tuple[torch.Tensor | None, np.ndarray]:
        cached = self.cache.get(query)
        if cached is not None:
            return cached  # type: ignore[return-value]
        value = self.batcher.encode(query)
        self.cache.put(query, value)
        return value

    def search(self, query: str, k: int = 10, offset: int = 0, min_score: float | None = None,
               as_of: int | None = None) -> SearchPage:
        query = " ".join(query.split())
        if not query:
            raise ValueError("the query is empty")
        if len(query) > self.max_query_chars:
            raise ValueError(f"the query is longer than {self.max_query_chars} characters")
        if not 1 <= k <= self.max_k:
            raise ValueError(f"k must be between 1 and {self.max_k}")
        if offset < 0:
            raise ValueError("offset must not be negative")
        catalog = self.services.catalog
        visual_q, sentence_q = self._query_vectors(query)
        # The pool depends on the query and k only (never on the offset), so every page ranks the same set.
        want = self.pool_size(k)
        candidates: set[int] = set()
        segment_hits: dict[int, float] = {}
        with self.services.index_lock:  # an embedded worker may be adding to the same in-memory indexes
            catalog.reload_if_changed()  # pick up snapshots that other processes published
            video_index = catalog.videos.index if catalog.videos is not None else None
            if visual_q is not None and video_index is not None and len(video_index):
                q = torch.nn.functional.normalize(visual_q, dim=-1).numpy().astype(np.float32)
                _, ids = video_index.search(q, min(want, len(video_index)))
                candidates.update(int(i) for i in ids[0] if i >= 0)
            segment_index = catalog.segments.index
            if segment_index is not None and len(segment_index):
                # More segments than videos wanted: several hits can be one video's, and approximate segment
                # indexes need the margin for recall (BENCHMARKS.md).
                scores, ids = segment_index.search(sentence_q[None].astype(np.float32),
                                                   min(SEGMENTS_PER_CANDIDATE * want, len(segment_index)))
                segment_hits = {int(i): float(sc) for sc, i in zip(scores[0], ids[0], strict=True) if i >= 0}
        with self.services.sessions() as s:
            if as_of is None:
                as_of = s.scalar(select(func.max(Video.id))) or 0
            text_hits = search_segments(s, query, limit=want)
            # Speech candidates: the `want` videos with the best segment by meaning or by words (the same
            # max(cosine, full-text score) that scoring uses), next to the `want` best visual candidates.
            best_speech: dict[int, float] = {}
            if segment_hits:
                for seg_id, vid in s.execute(select(Segment.id, Segment.video_id)
                                             .where(Segment.id.in_(list(segment_hits)))):
                    best_speech[vid] = max(best_speech.get(vid, -1.0), segment_hits[seg_id])
            for h in text_hits:
                best_speech[h.video_id] = max(best_speech.get(h.video_id, -1.0), h.score)
            candidates.update(sorted(best_speech, key=lambda v: (-best_speech[v], v))[:want])
            candidates = {c for c in candidates if c <= as_of}
            ranked = self._score(s, sorted(candidates), visual_q, sentence_q,
                                 {h.segment_id: h.score for h in text_hits})
            ranked.sort(key=lambda r: (-r.score, r.video_id))
            if min_score is not None:
                ranked = [r for r in ranked if r.score >= min_score]
            results = self._hydrate(s, ranked[offset:offset + k])
        notes = [] if self.services.encoder.available else [self.services.encoder.reason]
        return SearchPage(results, len(ranked), self.mode, offset, as_of, notes)

    def pool_size(self, k: int) -> int:
        """Candidates per source (visual ANN, transcript): ranked exactly, they are all the results a query can
        page through."""
        return max(self.ann_candidates, 4 * k)

    def _score(self, s, video_ids: list[int], visual_q, sentence_q: np.ndarray,
               text_scores: dict[int, float]) -> list[_Scored]:
        """Every candidate's fused score and best segment, from the few columns scoring needs (hundreds of
        candidates per query: full rows and ORM objects for all of them would cost more than the model)."""
        if not video_ids:
            return []
        videos = s.execute(select(Video.id, Video.model_version, Video.feature_shard, Video.feature_offset,
                                  Video.pooled)
                           .where(Video.id.in_(video_ids), Video.status == "indexed")).all()
        best = self._best_segments(s, [v.id for v in videos], sentence_q, text_scores)
        visual = self._visual_scores(videos, visual_q)
        w = self.speech_weight if visual else 1.0
        out = []
        for v in videos:
            speech, segment_id = best.get(v.id, (None, None))
            vis = visual.get(v.id)
            part = speech if speech is not None else 0.0
            score = part if vis is None and not visual else (1 - w) * (vis if vis is not None else 0.0) + w * part
            out.append(_Scored(v.id, round(float(score), 6), None if vis is None else round(float(vis), 6),
                               None if speech is None else round(float(speech), 6), segment_id))
        return out

    @staticmethod
    def _best_segments(s, video_ids: list[int], sentence_q: np.ndarray,
                       text_scores: dict[int, float]) -> dict[int, tuple[float, int]]:
        """video id -> (speech score, id of its best segment): per segment max(cosine of the sentence
        embeddings, full-text score), the best segment per video (the earliest among equals)."""
        if not video_ids:
            return {}
        rows = s.execute(select(Segment.id, Segment.video_id, Segment.idx, Segment.embedding)
                         .where(Segment.video_id.in_(video_ids))).all()
        if not rows:
            return {}
        seg_id_col, video_id_col, idx_col, blobs = zip(*rows, strict=True)
        seg_ids, vids, idx = np.array(seg_id_col), np.array(video_id_col), np.array(idx_col)
        width = 2 * sentence_q.shape[-1]  # fp16 bytes per embedding
        if not all(b is not None and len(b) == width for b in blobs):  # a segment without an embedding counts 0
            blobs = [b if b is not None and len(b) == width else bytes(width) for b in blobs]
        matrix = np.frombuffer(b"".join(blobs), dtype=np.float16).reshape(len(rows), -1)
        scores = (matrix.astype(np.float32) @ sentence_q).astype(np.float64)
        if text_scores:
            matched = np.flatnonzero(np.isin(seg_ids, np.fromiter(text_scores, dtype=np.int64)))
            for i in matched.tolist():
                scores[i] = max(scores[i], text_scores[int(seg_ids[i])])
        order = np.lexsort((idx, -scores, vids))  # per video: best score first, then the earliest segment
        first = np.ones(len(order), dtype=bool)
        first[1:] = vids[order][1:] != vids[order][:-1]
        return {int(vids[i]): (float(scores[i]), int(seg_ids[i])) for i in order[first]}

    def _hydrate(self, s, ranked: list[_Scored]) -> list[SearchResult]:
        """The full results (names, transcripts, moments) of one page only."""
        if not ranked:
            return []
        ids = [r.video_id for r in ranked]
        videos = {v.id: v for v in s.execute(select(Video.id, Video.filename, Video.duration_s, Video.transcript,
                                                     Video.language, Video.thumbnail_path)
                                              .where(Video.id.in_(ids)))}
        seg_ids = [r.segment_id for r in ranked if r.segment_id is not None]
        segments = {g.id: g for g in s.execute(select(Segment.id, Segment.start_s, Segment.end_s, Segment.text)
                                                .where(Segment.id.in_(seg_ids)))} if seg_ids else {}
        out = []
        for r in ranked:
            video = videos.get(r.video_id)
            if video is None:  # deleted between scoring and now (same session: only on read-committed backends)
                continue
            seg = segments.get(r.segment_id) if r.segment_id is not None else None
            moment = Moment(seg.start_s, seg.end_s, seg.text) if seg is not None else None
            out.append(SearchResult(r.video_id, video.filename, r.score, r.visual_score, r.speech_score,
                                    video.duration_s, video.transcript, moment, video.language,
                                    video.thumbnail_path))
        return out

    def _readable(self, videos: list) -> tuple[list, np.ndarray, np.ndarray]:
        ok, frames, masks = [], [], []
        for v in videos:
            try:
                f, m = self.store.read(FeatureRef(v.feature_shard, v.feature_offset, v.id))
            except FeatureStoreError as exc:
                log.error("stored features of video %s are unreadable (%s); run `save-search reindex`", v.id, exc)
                continue
            ok.append(v)
            frames.append(f)
            masks.append(m)
        if not ok:
            return [], np.zeros(0), np.zeros(0)
        return ok, np.stack(frames), np.stack(masks)

    def _visual_scores(self, videos: list, visual_q) -> dict[int, float]:
        encoder = self.services.encoder
        if visual_q is None or self.store is None:
            return {}
        version = encoder.status().model_version
        usable = [v for v in videos if v.model_version == version and v.feature_shard is not None]
        if not usable:
            return {}
        try:
            frames, masks = self.store.read_many([FeatureRef(v.feature_shard, v.feature_offset, v.id) for v in usable])
        except FeatureStoreError:
            usable, frames, masks = self._readable(usable)  # one damaged record must not break the search
            if not usable:
                return {}
        pooled = np.frombuffer(b"".join(v.pooled for v in usable), dtype=np.float16).reshape(len(usable), -1).copy()
        with self._model_lock:
            scores = encoder.score(visual_q, frames, masks, pooled)
        return {v.id: float(sc) for v, sc in zip(usable, scores, strict=True)}
