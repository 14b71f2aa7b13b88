"""Search: query -> candidates (ANN over pooled SAVE vectors, transcript passages by meaning, segments by
words) -> exact scores per channel -> calibrated fusion -> best moment.

Each channel's raw score is mapped to a probability that the video is the one asked for,
``p = sigmoid(a * raw + b)`` (``Ranking.*_calibration``), so scores compare across queries and channels:
- speech raw = max over the video's passages (``indexer.passages``: segments, windows of adjacent segments,
  the whole transcript) of ``cosine(MiniLM(query), MiniLM(passage)) + lexical_weight * coverage``, where
  coverage is the IDF-weighted share of the query's content words (normalised: ``indexer.text``) that the
  passage says. Words add to meaning, never replace it: a passage sharing one rare word but not the meaning
  gains at most ``lexical_weight``. The speech map (a, b) is fitted on the retrieval benchmark (BENCHMARKS.md):
  a speech_score of 0.8 means that about 8 in 10 results with that score were the right video there.
- visual raw = exact SAVE similarity / logit scale (about a CLIP cosine); its map is a fixed prior, not measured
  here (no CLIP weights offline): see ``Ranking``.
- score = 1 - (1 - p_visual) * (1 - p_speech): the chance that at least one channel's evidence is right, read
  as independent; in speech mode (no visual model), score = p_speech.
The moment is the video's best local passage (up to three segments). Candidates: the ``pool_size(k)`` best
videos of the visual ANN, as many by their best passage (ANN) and as many by full text. Every candidate from
any source gets all its parts computed exactly, so the ranking does not depend on which source found it. The
pool depends on the query and k only, ties break by video id, so pages are stable; a query pages through at
most its pool.
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace

import numpy as np
import torch
from sqlalchemy import func, select

from .db import Passage, Segment, Video
from .passages import MAX_WINDOW, embed
from .store import FeatureRef, FeatureStoreError
from .text import content_terms, stem, stems, words
from .transcripts import document_frequencies, search_segments
from .worker import Services

log = logging.getLogger(__name__)

PASSAGES_PER_CANDIDATE = 8  # passage index hits asked for per wanted speech candidate (a video has many)
IDF_TTL_S = 60.0  # document frequencies are cached this long (they move slowly as videos arrive)


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
    raw_speech: float | None = None  # before calibration (for evaluate-search --fit-calibration)
    raw_visual: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Ranking:
    """How candidates are scored. The defaults come from ``Settings`` (measured: BENCHMARKS.md); the other
    values exist so the retrieval benchmark can measure each change against what it replaced.

    - ``passages``: score windows and the whole transcript, not only single segments.
    - ``moment``: the moment is the best single ``segment`` (a clause piece, ``indexer.asr.clause_pieces``), or
      the best local ``passage`` (windows included): windows win on context and start too early (measured).
    - ``lexical``: ``coverage`` (cosine + lexical_weight * IDF-weighted share of query words said),
      ``max-fulltext`` (the previous rule: per segment max(cosine, bm25 / (1 + bm25))) or ``none`` (dense only).
    - ``speech_calibration``, ``visual_calibration``: (a, b) of ``p = sigmoid(a * raw + b)``. The visual default
      (50, -12.5) puts p = 0.5 at a cosine of 0.25 and moves one logit per 0.02 of cosine: CLIP ViT-B text-frame
      cosines are typically ~0.30 for a matching and ~0.20 for an unrelated caption; it is a prior, not a
      measurement (no CLIP weights here): fit yours with ``save-search evaluate-search --fit-calibration``.
    """

    passages: bool = True
    moment: str = "segment"
    lexical: str = "coverage"
    lexical_weight: float = 0.1
    normalize_sentence_input: bool = False
    speech_calibration: tuple[float, float] = (13.9, -9.5)
    visual_calibration: tuple[float, float] = (50.0, -12.5)

    @classmethod
    def from_settings(cls, settings) -> Ranking:
        return cls(lexical_weight=settings.lexical_weight, normalize_sentence_input=settings.normalize_sentence_input,
                   speech_calibration=tuple(settings.speech_calibration),  # type: ignore[arg-type]
                   visual_calibration=tuple(settings.visual_calibration))  # type: ignore[arg-type]

    def with_(self, **changes) -> Ranking:
        return replace(self, **changes)


def calibrate(raw: np.ndarray | float, ab: Sequence[float]) -> np.ndarray:
    """``sigmoid(a * raw + b)``: a channel's raw score as the probability that the video is the one asked for."""
    a, b = ab
    return 1.0 / (1.0 + np.exp(-(a * np.asarray(raw, dtype=np.float64) + b)))


@dataclass
class _Scored:
    """A candidate's scores, before its row is loaded for display."""

    video_id: int
    score: float
    visual_score: float | None
    speech_score: float | None
    passage_id: int | None  # the moment
    raw_speech: float | None = None
    raw_visual: float | None = None


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

    def __init__(self, services: Services, ranking: Ranking | None = None, ann_candidates: int = 200) -> None:
        self.services = services
        settings = services.settings
        self.ranking = ranking or Ranking.from_settings(settings)
        self.max_query_chars, self.max_k = settings.max_query_chars, settings.max_k
        self.ann_candidates = ann_candidates
        self.cache = QueryCache()
        self._idf_cache: dict[str, tuple[float, int, int]] = {}  # term -> (time, document frequency, total)
        self._model_lock = threading.Lock()
        # MiniLM runs on this thread while CLIP encodes the same queries: on CPU the two small models overlap
        # (about 10 ms less per query on 2 cores than one after the other, BENCHMARKS.md).
        self._sentence_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="query-sentences")
        self.batcher = QueryBatcher(self._encode_batch, self._model_lock)
        model = services.encoder.model
        self.store = (services.catalog.open_features(model.config.num_frames, model.config.embed_dim, "reader")
                      if model is not None else None)

    def _encode_sentences(self, queries: list[str]) -> np.ndarray:
        return embed(self.services.sentences, queries, self.ranking.normalize_sentence_input)

    def _encode_batch(self, queries: list[str]) -> list[tuple[torch.Tensor | None, np.ndarray]]:
        encoder = self.services.encoder
        if not encoder.available:
            return [(None, row) for row in self._encode_sentences(queries)]
        pending = self._sentence_thread.submit(self._encode_sentences, queries)
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
        # An embedded worker may be adding to the same in-memory indexes.
        with self.services.index_lock if catalog.in_process else contextlib.nullcontext():
            catalog.reload_if_changed()  # pick up what other processes published
            if visual_q is not None:
                q = torch.nn.functional.normalize(visual_q, dim=-1).numpy().astype(np.float32)
                candidates.update(catalog.search_videos(q, want))
            # More passages than videos wanted: a video has several, and approximate indexes need the margin for
            # recall (BENCHMARKS.md).
            passage_hits = catalog.search_passages(sentence_q.astype(np.float32), PASSAGES_PER_CANDIDATE * want)
        with self.services.sessions() as s:
            if as_of is None:
                as_of = s.scalar(select(func.max(Video.id))) or 0
            text_hits = search_segments(s, query, limit=want)
            # Speech candidates: the `want` videos with the best passage by meaning and the `want` with the best
            # segment by words, next to the `want` best visual candidates. Separate lists, so that many word
            # matches can never crowd out the matches by meaning (or the other way round).
            by_meaning: dict[int, float] = {}
            if passage_hits:
                for pid, vid in s.execute(select(Passage.id, Passage.video_id)
                                          .where(Passage.id.in_(list(passage_hits)))):
                    by_meaning[vid] = max(by_meaning.get(vid, -1.0), passage_hits[pid])
            by_words: dict[int, float] = {}
            for h in text_hits:
                by_words[h.video_id] = max(by_words.get(h.video_id, -1.0), h.score)
            for found in (by_meaning, by_words):
                candidates.update(sorted(found, key=lambda v, f=found: (-f[v], v))[:want])
            candidates = {c for c in candidates if c <= as_of}
            ranked = self._score(s, sorted(candidates), query, visual_q, sentence_q,
                                 {h.segment_id: h.score for h in text_hits})
            ranked.sort(key=lambda r: (-r.score, r.video_id))
            if min_score is not None:
                ranked = [r for r in ranked if r.score >= min_score]
            results = self._hydrate(s, ranked[offset:offset + k])
        notes = [] if self.services.encoder.available else [self.services.encoder.reason]
        return SearchPage(results, len(ranked), self.mode, offset, as_of, notes)

    def pool_size(self, k: int) -> int:
        """Candidates per source (visual ANN, passages by meaning, segments by words): ranked exactly, they are
        all the results a query can page through."""
        return max(self.ann_candidates, 4 * k)

    def _score(self, s, video_ids: list[int], query: str, visual_q, sentence_q: np.ndarray,
               text_scores: dict[int, float]) -> list[_Scored]:
        """Every candidate's calibrated channel scores, fused, and its moment, from the few columns scoring needs
        (hundreds of candidates per query: full rows and ORM objects for all of them would cost more than the
        model)."""
        if not video_ids:
            return []
        videos = s.execute(select(Video.id, Video.model_version, Video.feature_shard, Video.feature_offset,
                                  Video.pooled)
                           .where(Video.id.in_(video_ids), Video.status == "indexed")).all()
        speech = self._speech_scores(s, [v.id for v in videos], query, sentence_q, text_scores)
        visual = self._visual_scores(videos, visual_q)
        ranking = self.ranking
        out = []
        for v in videos:
            raw_s, passage_id = speech.get(v.id, (None, None))
            raw_v = visual.get(v.id)
            p_s = None if raw_s is None else float(calibrate(raw_s, ranking.speech_calibration))
            p_v = None if raw_v is None else float(calibrate(raw_v, ranking.visual_calibration))
            score = 1.0 - (1.0 - (p_v or 0.0)) * (1.0 - (p_s or 0.0))
            out.append(_Scored(v.id, round(score, 6), _round(p_v), _round(p_s), passage_id, raw_s, raw_v))
        return out

    def _idf(self, s, words: list[str]) -> np.ndarray:
        """BM25's inverse document frequency of each word over all segments (cached for ``IDF_TTL_S``)."""
        now = time.monotonic()
        stale = [w for w in words if w not in self._idf_cache or now - self._idf_cache[w][0] > IDF_TTL_S]
        if stale:
            df, total = document_frequencies(s, stale)
            for w in stale:
                self._idf_cache[w] = (now, df[w], total)
        values = []
        for w in words:
            _, df_w, total = self._idf_cache[w]
            values.append(math.log(1.0 + (total - df_w + 0.5) / (df_w + 0.5)))
        return np.array(values, dtype=np.float64)

    def _speech_scores(self, s, video_ids: list[int], query: str, sentence_q: np.ndarray,
                       text_scores: dict[int, float]) -> dict[int, tuple[float, int | None]]:
        """video id -> (raw speech score, id of its best local passage: the moment). Per passage: the cosine of the
        sentence embeddings plus the lexical term of ``Ranking.lexical``; the best passage per video scores it."""
        if not video_ids:
            return {}
        ranking = self.ranking
        stmt = select(Passage.id, Passage.video_id, Passage.first_idx, Passage.last_idx, Passage.start_s,
                      Passage.embedding).where(Passage.video_id.in_(video_ids))
        if not ranking.passages:
            stmt = stmt.where(Passage.first_idx == Passage.last_idx)
        rows = s.execute(stmt).all()
        if not rows:
            return {}
        pid_col, vid_col, first_col, last_col, start_col, blobs = zip(*rows, strict=True)
        pids, vids = np.array(pid_col), np.array(vid_col)
        first, last = np.array(first_col), np.array(last_col)
        width = 2 * sentence_q.shape[-1]  # fp16 bytes per embedding
        if not all(len(b) == width for b in blobs):  # a passage of another encoder counts 0 until reindexed
            blobs = tuple(b if len(b) == width else bytes(width) for b in blobs)
        matrix = np.frombuffer(b"".join(blobs), dtype=np.float16).reshape(len(rows), -1)
        scores = (matrix.astype(np.float32) @ sentence_q).astype(np.float64)
        if ranking.lexical == "coverage" and ranking.lexical_weight:
            scores += ranking.lexical_weight * self._coverage(s, video_ids, query, vids, first, last)
        elif ranking.lexical == "max-fulltext" and text_scores:
            seg_ids = self._segment_ids(s, video_ids)
            for i in np.flatnonzero(first == last).tolist():
                seg_id = seg_ids.get((int(vids[i]), int(first[i])))
                if seg_id in text_scores:
                    scores[i] = max(scores[i], text_scores[seg_id])
        local = first == last if ranking.moment == "segment" else (last - first) < MAX_WINDOW
        # Per video: the best passage scores the video; the best local passage is the moment (earliest, then
        # shortest, among equals).
        starts = np.array(start_col, dtype=np.float64)
        best_score: dict[int, float] = {}
        moment: dict[int, int] = {}
        for i in np.lexsort((last - first, starts, -scores, vids)).tolist():
            vid = int(vids[i])
            best_score.setdefault(vid, float(scores[i]))
            if local[i]:
                moment.setdefault(vid, int(pids[i]))
        return {vid: (sc, moment.get(vid)) for vid, sc in best_score.items()}

    @staticmethod
    def _segment_ids(s, video_ids: list[int]) -> dict[tuple[int, int], int]:
        return {(vid, idx): sid for sid, vid, idx in s.execute(
            select(Segment.id, Segment.video_id, Segment.idx).where(Segment.video_id.in_(video_ids)))}

    def _coverage(self, s, video_ids: list[int], query: str, vids: np.ndarray, first: np.ndarray,
                  last: np.ndarray) -> np.ndarray:
        """Per passage: the IDF-weighted share of the query's content words (normalised, stemmed) it says."""
        query_words = content_terms(query)
        if not query_words:
            return np.zeros(len(vids))
        wanted = [stem(w) for w in query_words]
        idf = self._idf(s, query_words)
        if idf.sum() <= 0:
            return np.zeros(len(vids))
        weights = idf / idf.sum()
        # One bit per query word and segment: a passage says the words of any of its segments.
        masks: dict[tuple[int, int], int] = {}
        for vid, idx, norm in s.execute(select(Segment.video_id, Segment.idx, Segment.norm_text)
                                        .where(Segment.video_id.in_(video_ids))):
            if not any(w[:4] in norm for w in wanted):  # most segments say none of the words: skip tokenising
                continue
            said = stems(words(norm))
            bits = sum(1 << j for j, w in enumerate(wanted) if w in said)
            if bits:
                masks[(int(vid), int(idx))] = bits
        if not masks:
            return np.zeros(len(vids))
        bit_weights = {}
        out = np.zeros(len(vids))
        for i in range(len(vids)):
            vid, a, b = int(vids[i]), int(first[i]), int(last[i])
            bits = 0
            for idx in range(a, b + 1):
                bits |= masks.get((vid, idx), 0)
            if bits:
                if bits not in bit_weights:
                    bit_weights[bits] = float(sum(weights[j] for j in range(len(wanted)) if bits >> j & 1))
                out[i] = bit_weights[bits]
        return out

    def _hydrate(self, s, ranked: list[_Scored]) -> list[SearchResult]:
        """The full results (names, transcripts, moments) of one page only."""
        if not ranked:
            return []
        ids = [r.video_id for r in ranked]
        videos = {v.id: v for v in s.execute(select(Video.id, Video.filename, Video.duration_s, Video.transcript,
                                                     Video.language, Video.thumbnail_path)
                                              .where(Video.id.in_(ids)))}
        passage_ids = [r.passage_id for r in ranked if r.passage_id is not None]
        passages = {p.id: p for p in s.execute(select(Passage.id, Passage.video_id, Passage.first_idx,
                                                      Passage.last_idx, Passage.start_s, Passage.end_s)
                                               .where(Passage.id.in_(passage_ids)))} if passage_ids else {}
        texts: dict[tuple[int, int], str] = {}
        if passages:
            wanted = {(p.video_id, i) for p in passages.values() for i in range(p.first_idx, p.last_idx + 1)}
            for vid, idx, text in s.execute(select(Segment.video_id, Segment.idx, Segment.text)
                                            .where(Segment.video_id.in_({v for v, _ in wanted}))):
                if (vid, idx) in wanted:
                    texts[(vid, idx)] = text
        out = []
        for r in ranked:
            video = videos.get(r.video_id)
            if video is None:  # deleted between scoring and now (same session: only on read-committed backends)
                continue
            p = passages.get(r.passage_id) if r.passage_id is not None else None
            moment = None
            if p is not None:
                text = " ".join(t for i in range(p.first_idx, p.last_idx + 1) if (t := texts.get((p.video_id, i))))
                moment = Moment(p.start_s, p.end_s, text)
            out.append(SearchResult(r.video_id, video.filename, r.score, r.visual_score, r.speech_score,
                                    video.duration_s, video.transcript, moment, video.language,
                                    video.thumbnail_path, r.raw_speech, r.raw_visual))
        return out

    def _readable(self, videos: list) -> tuple[list, np.ndarray, np.ndarray]:
        ok, frames, masks = [], [], []
        for v in videos:
            try:
                f, m = (x[0] for x in self.store.read_many([FeatureRef(v.feature_shard, v.feature_offset, v.id)]))
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


def _round(value: float | None) -> float | None:
    return None if value is None else round(float(value), 6)
