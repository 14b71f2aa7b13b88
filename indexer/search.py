"""Search: query -> candidates (ANN over pooled SAVE vectors, transcript segments by meaning and by words)
-> exact SAVE similarity on the stored frame features -> fusion with the transcript match -> best moment.

Fusion (documented in the README): ``score = (1 - w) * visual + w * speech`` where
- visual = exact SAVE similarity / logit scale (a cosine-like number, about -1..1; SAVE's LSE term adds up
  to log(12)/(2*scale) ~ 0.012 for a fused model),
- speech = max over the video's segments of max(cosine of MiniLM embeddings, full-text score in [0, 1]),
- w = ``speech_weight`` (default 0.5). In speech mode (no visual model) score = speech.
Every candidate from any source gets all its parts computed exactly, so the ranking does not depend on
which source found it. Ties break by video id, so pages are stable.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from sqlalchemy import func, select

from .catalog import from_blob
from .db import Segment, Video
from .store import FeatureRef, FeatureStoreError
from .transcripts import search_segments
from .worker import Services

log = logging.getLogger(__name__)



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
        self.batcher = QueryBatcher(self._encode_batch, self._model_lock)
        model = services.encoder.model
        self.store = None
        if model is not None:
            from .store import FeatureStore

            self.store = FeatureStore(services.settings.features_dir, model.config.num_frames,
                                      model.config.embed_dim, owner="reader")

    def _encode_batch(self, queries: list[str]) -> list[tuple[torch.Tensor | None, np.ndarray]]:
        encoder = self.services.encoder
        visual = encoder.encode_queries(queries) if encoder.available else None
        sentences = self.services.sentences.encode(queries)
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
        want = max(self.ann_candidates, 4 * (offset + k))
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
                scores, ids = segment_index.search(sentence_q[None].astype(np.float32),
                                                   min(4 * want, len(segment_index)))
                segment_hits = {int(i): float(sc) for sc, i in zip(scores[0], ids[0], strict=True) if i >= 0}
        with self.services.sessions() as s:
            if as_of is None:
                as_of = s.scalar(select(func.max(Video.id))) or 0
            text_hits = search_segments(s, query, limit=want)
            if segment_hits:
                candidates.update(s.scalars(select(Segment.video_id).where(Segment.id.in_(list(segment_hits)))))
            candidates.update(h.video_id for h in text_hits)
            candidates = {c for c in candidates if c <= as_of}
            results = self._score(s, sorted(candidates), visual_q, sentence_q, {h.segment_id: h.score
                                                                                 for h in text_hits})
        results.sort(key=lambda r: (-r.score, r.video_id))
        if min_score is not None:
            results = [r for r in results if r.score >= min_score]
        notes = [] if self.services.encoder.available else [self.services.encoder.reason]
        return SearchPage(results[offset:offset + k], len(results), self.mode, offset, as_of, notes)

    def _score(self, s, video_ids: list[int], visual_q, sentence_q: np.ndarray,
               text_scores: dict[int, float]) -> list[SearchResult]:
        if not video_ids:
            return []
        videos = {v.id: v for v in s.scalars(select(Video).where(Video.id.in_(video_ids), Video.status == "indexed"))}
        segs: dict[int, list[Segment]] = {}
        for seg in s.scalars(select(Segment).where(Segment.video_id.in_(video_ids)).order_by(Segment.idx)):
            segs.setdefault(seg.video_id, []).append(seg)
        visual = self._visual_scores(videos, visual_q)
        w = self.speech_weight if visual else 1.0
        out = []
        for vid, video in videos.items():
            best, best_seg = None, None
            for seg in segs.get(vid, []):
                sem = float(from_blob(seg.embedding) @ sentence_q) if seg.embedding is not None else 0.0
                sc = max(sem, text_scores.get(seg.id, 0.0))
                if best is None or sc > best:
                    best, best_seg = sc, seg
            vis = visual.get(vid)
            speech = best if best is not None else 0.0
            score = speech if vis is None and not visual else (1 - w) * (vis if vis is not None else 0.0) + w * speech
            moment = Moment(best_seg.start_s, best_seg.end_s, best_seg.text) if best_seg is not None else None
            out.append(SearchResult(vid, video.filename, round(float(score), 6),
                                    None if vis is None else round(float(vis), 6),
                                    None if best is None else round(float(best), 6), video.duration_s,
                                    video.transcript, moment, video.language, video.thumbnail_path))
        return out

    def _readable(self, videos: list[Video]) -> tuple[list[Video], np.ndarray, np.ndarray]:
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

    def _visual_scores(self, videos: dict[int, Video], visual_q) -> dict[int, float]:
        encoder = self.services.encoder
        if visual_q is None or self.store is None:
            return {}
        version = encoder.status().model_version
        usable = [v for v in videos.values() if v.model_version == version and v.feature_shard is not None]
        if not usable:
            return {}
        try:
            frames, masks = self.store.read_many([FeatureRef(v.feature_shard, v.feature_offset, v.id) for v in usable])
        except FeatureStoreError:
            usable, frames, masks = self._readable(usable)  # one damaged record must not break the search
            if not usable:
                return {}
        pooled = np.stack([from_blob(v.pooled) for v in usable])
        with self._model_lock:
            scores = encoder.score(visual_q, frames, masks, pooled)
        return {v.id: float(sc) for v, sc in zip(usable, scores, strict=True)}
