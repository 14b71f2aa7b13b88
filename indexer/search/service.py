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
- screen raw: the speech rule over the passages of on-screen text (``indexer.inference.ocr`` spans, cut into passages on
  their own), with its own map (a, b), fitted on the on-screen-text queries of the retrieval benchmark.
- score = 1 - (1 - p_visual) * (1 - p_speech) * (1 - p_screen): the chance that at least one channel's evidence
  is right, read as independent; a channel a video lacks counts 0 (speech only: score = p_speech, as before).
The moment is the video's best local passage (up to three segments) of whichever text channel is more sure,
speech or screen (then it is the stretch where the text is shown), and says its ``source``. A result's ``moments``
start with it and add, for the page's videos only, the best other local passages of either channel, each scored by
its channel's map, apart in time and not far below the first (``moments.choose_moments``). Candidates: the
``pool_size(k)`` best videos of the visual ANN, as many by their best passage (ANN) and as many by full text
(screen passages and segments included). Every candidate from any source gets all its parts computed exactly,
so the ranking does not depend on which source found it. The pool depends on the query and k only, ties break
by video id, so pages are stable; a query pages through at most its pool.
"""

from __future__ import annotations

import contextlib
import heapq
import logging
import math
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from sqlalchemy import func, select

from indexer.enums import Source, VideoStatus
from indexer.passages import MAX_WINDOW, embed
from indexer.search.fulltext import SegmentHit, document_frequencies, search_segments
from indexer.search.moments import MOMENTS_DEFAULT, MOMENTS_MAX, LocalPassages, choose_moments
from indexer.search.passage_cache import PassageCache, VideoText
from indexer.search.query import QueryBatcher, QueryCache
from indexer.search.ranking import Moment, Ranking, ScoredCandidate, ScoredMoment, SearchPage, SearchResult, calibrate
from indexer.services import Services
from indexer.storage.catalog import FeatureStorage, stack_blobs
from indexer.storage.db import Passage, Segment, Video
from indexer.storage.frame_cache import with_cache
from indexer.storage.shards import FeatureRef, FeatureStoreError
from indexer.text import content_terms, stem

log = logging.getLogger(__name__)

PASSAGES_PER_CANDIDATE = 8  # passage index hits asked for per wanted speech candidate (a video has many)
IDF_TTL_S = 60.0  # document frequencies are cached this long (they move slowly as videos arrive)


class SearchService:
    """Shared by the CLI and the API; thread-safe for concurrent queries."""

    def __init__(self, services: Services, ranking: Ranking | None = None, ann_candidates: int = 200) -> None:
        self.services = services
        settings = services.settings
        self.ranking = ranking or Ranking.from_settings(settings)
        self.max_query_chars, self.max_k = settings.search.max_query_chars, settings.search.max_k
        self.ann_candidates = ann_candidates
        self.cache = QueryCache()
        self.passages = PassageCache(settings.search.passage_cache_mb * 2**20)
        self._idf_cache: dict[str, tuple[float, int, int]] = {}  # term -> (time, document frequency, total)
        self._model_lock = threading.Lock()
        # MiniLM runs on this thread while CLIP encodes the same queries: on CPU the two small models overlap
        # (about 10 ms less per query on 2 cores than one after the other, BENCHMARKS.md).
        self._sentence_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="query-sentences")
        self.batcher = QueryBatcher(self._encode_batch, self._model_lock)
        # Full-text search needs no encoder: it runs while the query is encoded (SQLite and PostgreSQL release the GIL).
        self._words_threads = ThreadPoolExecutor(max_workers=4, thread_name_prefix="query-words")
        model = services.encoder.model
        self.store: FeatureStorage | None = None
        if model is not None:  # frames read over the network go through a per-process cache (frame_cache_mb)
            self.store = with_cache(services.catalog.open_features(model.config.num_frames, model.config.embed_dim,
                                                                   "reader"),
                                    services.encoder.status().model_version or "none", settings.search.frame_cache_mb)

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
            return cached
        value = self.batcher.encode(query)
        self.cache.put(query, value)
        return value

    def search(self, query: str, k: int = 10, offset: int = 0, min_score: float | None = None,
               as_of: int | None = None, moments: int = MOMENTS_DEFAULT) -> SearchPage:
        query = " ".join(query.split())
        if not query:
            raise ValueError("the query is empty")
        if len(query) > self.max_query_chars:
            raise ValueError(f"the query is longer than {self.max_query_chars} characters")
        if not 1 <= k <= self.max_k:
            raise ValueError(f"k must be between 1 and {self.max_k}")
        if offset < 0:
            raise ValueError("offset must not be negative")
        if not 1 <= moments <= MOMENTS_MAX:
            raise ValueError(f"moments must be between 1 and {MOMENTS_MAX}")
        catalog = self.services.catalog
        want = self.pool_size(k)
        by_words_pending = self._words_threads.submit(self._search_words, query, want)
        try:
            visual_q, sentence_q = self._query_vectors(query)
        finally:
            text_hits = by_words_pending.result()  # never leave the thread running past this call
        # The pool depends on the query and k only (never on the offset), so every page ranks the same set.
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
                candidates.update(v for v, _ in heapq.nsmallest(want, found.items(), key=lambda kv: (-kv[1], kv[0])))
            candidates = {c for c in candidates if c <= as_of}
            ranked, local = self._score(s, sorted(candidates), query, visual_q, sentence_q,
                                        {h.segment_id: h.score for h in text_hits})
            ranked.sort(key=lambda r: (-r.score, r.video_id))
            if min_score is not None:
                ranked = [r for r in ranked if r.score >= min_score]
            results = self._hydrate(s, ranked[offset:offset + k], local, moments)
        notes = [] if self.services.encoder.available else [self.services.encoder.reason]
        return SearchPage(results, len(ranked), self.mode, offset, as_of, notes)

    def _search_words(self, query: str, want: int) -> list[SegmentHit]:
        """The ``want`` best segments by words, and the document frequencies of the query's words cached for the
        lexical term (``_idf``): everything of a query that needs no encoder."""
        with self.services.sessions() as s:
            if self.ranking.lexical == "coverage" and self.ranking.lexical_weight:
                self._idf(s, content_terms(query))
            return search_segments(s, query, limit=want)

    def pool_size(self, k: int) -> int:
        """Candidates per source (visual ANN, passages by meaning, segments by words): ranked exactly, they are
        all the results a query can page through."""
        return max(self.ann_candidates, 4 * k)

    def _score(self, s, video_ids: list[int], query: str, visual_q, sentence_q: np.ndarray,
               text_scores: dict[int, float]) -> tuple[list[ScoredCandidate], LocalPassages]:
        """Every candidate's calibrated channel scores, fused, and its moment, from the few columns scoring needs
        (hundreds of candidates per query: full rows and ORM objects for all of them would cost more than the
        model); and the candidates' scored local passages, where the page's other moments come from."""
        if not video_ids:
            return [], LocalPassages.empty()
        videos = s.execute(select(Video.id, Video.model_version, Video.feature_shard, Video.feature_offset,
                                  Video.pooled, Video.text_tag)
                           .where(Video.id.in_(video_ids), Video.status == VideoStatus.INDEXED)).all()
        text, local = self._text_scores(s, [v.id for v in videos], query, sentence_q, text_scores,
                                        {v.id: v.text_tag for v in videos})
        visual = self._visual_scores(videos, visual_q)
        ranking = self.ranking
        out = []
        for v in videos:
            raw_s, speech_moment = text[Source.SPEECH].get(v.id, (None, None))
            raw_o, screen_moment = text[Source.SCREEN].get(v.id, (None, None))
            raw_v = visual.get(v.id)
            p_s = None if raw_s is None else float(calibrate(raw_s, ranking.speech_calibration))
            p_o = None if raw_o is None else float(calibrate(raw_o, ranking.screen_calibration))
            p_v = None if raw_v is None else float(calibrate(raw_v, ranking.visual_calibration))
            score = 1.0 - (1.0 - (p_v or 0.0)) * (1.0 - (p_s or 0.0)) * (1.0 - (p_o or 0.0))
            # The moment comes from the text channel that is surer (speech on a tie); either may lack a local one.
            surer, other = ((screen_moment, speech_moment) if (p_o or 0.0) > (p_s or 0.0)
                            else (speech_moment, screen_moment))
            out.append(ScoredCandidate(v.id, round(score, 6), _round(p_v), _round(p_s),
                                       surer if surer is not None else other, raw_s, raw_v, _round(p_o), raw_o))
        return out, local

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

    def _text_scores(self, s, video_ids: list[int], query: str, sentence_q: np.ndarray,
                     text_scores: dict[int, float], tags: dict[int, int | None] | None = None
                     ) -> tuple[dict[str, dict[int, tuple[float, int | None]]], LocalPassages]:
        """Per text channel (speech, screen: ``Ranking.screen``): video id -> (raw score, id of its best local
        passage in that channel: the moment). Per passage: the cosine of the sentence embeddings plus the lexical
        term of ``Ranking.lexical``; the best passage per video and channel scores it. Also every local passage
        with its raw score (``LocalPassages``), for the page's moments. ``tags``: each video's ``text_tag``, which
        lets the passage cache serve it (missing: read from the database)."""
        out: dict[str, dict[int, tuple[float, int | None]]] = {Source.SPEECH: {}, Source.SCREEN: {}}
        if not video_ids:
            return out, LocalPassages.empty()
        ranking = self.ranking
        tags = tags or {}
        texts = self.passages.read(s, [(v, tags.get(v)) for v in video_ids], sentence_q.shape[-1])
        present = [v for v in video_ids if len(texts[v].meta)]
        if not present:
            return out, LocalPassages.empty()
        parts = [texts[v] for v in present]
        sizes = np.array([len(t.meta) for t in parts])
        vids = np.repeat(np.array(present, dtype=np.int64), sizes)
        meta = np.concatenate([t.meta for t in parts])
        first, last = meta[:, 1].astype(np.int64), meta[:, 2].astype(np.int64)
        q = sentence_q.astype(np.float32)
        # einsum, not BLAS: hundreds of small products, where threaded BLAS waits for busy cores (20x slower here)
        scores = np.concatenate([np.einsum("ij,j->i", t.embedding, q) for t in parts]).astype(np.float64)
        if ranking.lexical == "coverage" and ranking.lexical_weight:
            scores += ranking.lexical_weight * self._coverage(s, query, parts, sizes, first, last)
        elif ranking.lexical == "max-fulltext" and text_scores:
            seg_ids = self._segment_ids(s, video_ids)
            for i in np.flatnonzero(first == last).tolist():
                seg_id = seg_ids.get((int(vids[i]), int(first[i])))
                if seg_id in text_scores:
                    scores[i] = max(scores[i], text_scores[seg_id])
        keep = np.ones(len(meta), dtype=bool)
        if not ranking.passages:
            keep &= first == last
        if ranking.screen == "off":
            keep &= meta[:, 5] == 0
        if not keep.all():
            meta, vids, scores = meta[keep], vids[keep], scores[keep]
        pids, first, last = (meta[:, i].astype(np.int64) for i in range(3))
        starts, ends, screen = meta[:, 3], meta[:, 4], meta[:, 5] > 0
        # The channel each passage scores (as-speech: on-screen text is read as if it were said).
        on_screen = screen & (ranking.screen != "as-speech")
        windows = (last - first) < MAX_WINDOW  # local passages: single segments and windows (not the whole)
        local = windows if ranking.moment == "passage" else first == last
        # Per video and channel, best first (earliest, then shortest, among equals): the first passage of a group
        # scores it; the moment is its first local passage, or (``segment-in-window``) the first segment inside
        # its first window.
        order = np.lexsort((last - first, starts, -scores, on_screen, vids))
        group = np.r_[True, (np.diff(vids[order]) != 0) | (np.diff(on_screen[order]) != 0)]
        group_id = np.cumsum(group) - 1
        heads = order[group]
        moment_at = np.full(len(heads), -1, dtype=np.int64)
        if ranking.moment == "segment-in-window":
            has_window = _first_per_group(group_id, windows[order], len(heads))
            w = np.where(has_window >= 0, order[np.maximum(has_window, 0)], -1)[group_id]
            inside = local[order] & (w >= 0) & (first[w] <= first[order]) & (first[order] <= last[w])
            at = _first_per_group(group_id, inside, len(heads))
        else:
            at = _first_per_group(group_id, local[order], len(heads))
        moment_at[at >= 0] = order[at[at >= 0]]
        moment: dict[tuple[int, str], int] = {}
        keys = [(int(vids[i]), Source.SCREEN if on_screen[i] else Source.SPEECH) for i in heads.tolist()]
        for key, m in zip(keys, moment_at.tolist(), strict=True):
            if m >= 0:
                moment[key] = int(pids[m])
        grown = np.zeros(len(pids), dtype=bool)
        if ranking.moment == "segment-grown" and moment:
            channels: list[str] = [Source.SCREEN if c else Source.SPEECH for c in on_screen.tolist()]
            moment = self._grow_moments(moment, pids, vids, channels, first, last, scores, windows,
                                        ranking.grow_margin)
            grown = np.isin(pids, np.fromiter(moment.values(), dtype=np.int64))
        for key, sc in zip(keys, scores[heads].tolist(), strict=True):
            out[key[1]][key[0]] = (float(sc), moment.get(key))
        kept = np.flatnonzero(local | grown)
        return out, LocalPassages(pids[kept], vids[kept], scores[kept], on_screen[kept], starts[kept], ends[kept],
                                  (last - first)[kept])

    @staticmethod
    def _grow_moments(moment: dict[tuple[int, str], int], pids: np.ndarray, vids: np.ndarray, channels: list[str],
                      first: np.ndarray, last: np.ndarray, scores: np.ndarray,
                      windows: np.ndarray, margin: float = 0.0) -> dict[tuple[int, str], int]:
        """Each moment segment replaced by the best window that holds it when that window scores higher:
        a query that paraphrases a whole sentence matches the sentence's clause pieces together better than any one
        of them, and its moment should start where the sentence starts; a query for one line does not, and keeps
        its line. A window must beat the segment by more than ``margin``."""
        row = {int(p): i for i, p in enumerate(pids.tolist())}
        at = {key: row[pid] for key, pid in moment.items()}
        best = {key: (float(scores[i]) + margin, 0, int(pids[i])) for key, i in at.items()}
        for w in np.flatnonzero(windows & (last > first)).tolist():
            key = (int(vids[w]), channels[w])
            i = at.get(key)
            if i is not None and first[w] <= first[i] <= last[w]:
                cand = (float(scores[w]), -int(last[w] - first[w]), int(pids[w]))
                if cand[:2] > best[key][:2]:
                    best[key] = cand
        return {key: pid for key, (_, _, pid) in best.items()}

    @staticmethod
    def _segment_ids(s, video_ids: list[int]) -> dict[tuple[int, int], int]:
        return {(vid, idx): sid for sid, vid, idx in s.execute(
            select(Segment.id, Segment.video_id, Segment.idx).where(Segment.video_id.in_(video_ids)))}

    def _coverage(self, s, query: str, parts: list[VideoText], sizes: np.ndarray, first: np.ndarray,
                  last: np.ndarray) -> np.ndarray:
        """Per passage (of ``parts``, in order): the IDF-weighted share of the query's content words (normalised,
        stemmed) that any of its segments says."""
        out = np.zeros(len(first))
        query_words = content_terms(query)
        if not query_words:
            return out
        wanted = [stem(w) for w in query_words]
        idf = self._idf(s, query_words)
        if idf.sum() <= 0:
            return out
        weights = idf / idf.sum()
        # One bit per query word and segment (all candidates' segments in one array), OR-ed over each passage's.
        seg_bits = np.concatenate([t.word_bits(wanted) for t in parts])
        if not seg_bits.any():
            return out
        base = np.repeat(np.cumsum([0] + [t.segments for t in parts[:-1]]), sizes)
        a, b = base + first, base + last
        bits = np.zeros(len(first), dtype=np.int64)
        short = (b - a) < MAX_WINDOW
        for k in range(MAX_WINDOW):
            m = short & (a + k <= b)
            bits[m] |= seg_bits[a[m] + k]
        for i in np.flatnonzero(~short).tolist():  # the whole transcript: one per video and channel
            bits[i] = np.bitwise_or.reduce(seg_bits[a[i]:b[i] + 1])
        said = (bits[:, None] >> np.arange(len(wanted), dtype=np.int64)) & 1
        return np.einsum("ij,j->i", said.astype(np.float64), weights)

    def _hydrate(self, s, ranked: list[ScoredCandidate], local: LocalPassages,
                 n_moments: int = MOMENTS_DEFAULT) -> list[SearchResult]:
        """The full results (names, transcripts, moments) of one page only."""
        if not ranked:
            return []
        ids = [r.video_id for r in ranked]
        videos = {v.id: v for v in s.execute(select(Video.id, Video.filename, Video.duration_s, Video.transcript,
                                                     Video.language, Video.thumbnail_path)
                                              .where(Video.id.in_(ids)))}
        chosen = self._moments(ranked, local, n_moments)
        passage_ids = [pid for picks in chosen.values() for pid, _ in picks]
        passages = {p.id: p for p in s.execute(select(Passage.id, Passage.video_id, Passage.first_idx,
                                                      Passage.last_idx, Passage.start_s, Passage.end_s, Passage.source)
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
            moments = []
            for pid, score in chosen.get(r.video_id, []):
                if (p := passages.get(pid)) is not None:
                    text = " ".join(t for i in range(p.first_idx, p.last_idx + 1)
                                    if (t := texts.get((p.video_id, i))))
                    moments.append((pid, ScoredMoment(p.start_s, p.end_s, text, p.source, score)))
            segment = None
            if moments and moments[0][0] == r.passage_id:  # the best moment, as ever: the first of the moments
                first = moments[0][1]
                segment = Moment(first.start, first.end, first.text, first.source)
            else:
                moments = []  # its passage is gone (deleted since scoring): no moment, as before
            out.append(SearchResult(r.video_id, video.filename, r.score, r.visual_score, r.speech_score,
                                    video.duration_s, video.transcript, segment, video.language,
                                    video.thumbnail_path, r.raw_speech, r.raw_visual, r.screen_score, r.raw_screen,
                                    [m for _, m in moments]))
        return out

    def _moments(self, ranked: list[ScoredCandidate], local: LocalPassages,
                 n: int) -> dict[int, list[tuple[int, float]]]:
        """Per video of the page: its moments as (passage id, calibrated score), the first being its ``passage_id``
        (the ``segment``), the rest from ``choose_moments`` over its local passages of both text channels, each
        scored by its own channel's map (the one that gives the video its channel score)."""
        page = local.of([r.video_id for r in ranked if r.passage_id is not None])
        if not len(page.passage_id):
            return {}
        ranking = self.ranking
        scores = np.where(page.screen, calibrate(page.raw, ranking.screen_calibration),
                          calibrate(page.raw, ranking.speech_calibration))
        order = np.argsort(page.video_id, kind="stable")
        groups = np.split(order, np.flatnonzero(np.diff(page.video_id[order])) + 1)
        rows = {int(page.video_id[g[0]]): g for g in groups}
        out = {}
        for r in ranked:
            g = rows.get(r.video_id)
            if g is None or r.passage_id is None:
                continue
            at = np.flatnonzero(page.passage_id[g] == r.passage_id)
            if not len(at):
                continue
            picks = choose_moments(scores[g], page.start[g], page.end[g], page.length[g], int(at[0]), n)
            out[r.video_id] = [(int(page.passage_id[g][i]), round(float(scores[g][i]), 6)) for i in picks]
        return out

    def _readable(self, videos: list) -> tuple[list, np.ndarray, np.ndarray]:
        assert self.store is not None
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
        pooled = stack_blobs([v.pooled for v in usable], frames.shape[-1])
        with self._model_lock:
            scores = encoder.score(visual_q, frames, masks, pooled)
        return {v.id: float(sc) for v, sc in zip(usable, scores, strict=True)}


def _first_per_group(group_id: np.ndarray, mask: np.ndarray, groups: int) -> np.ndarray:
    """Per group (``group_id``: sorted, 0..groups-1): the position of its first row where ``mask`` holds, or -1."""
    out = np.full(groups, -1, dtype=np.int64)
    at = np.flatnonzero(mask)
    if len(at):
        gid = group_id[at]
        head = np.r_[True, np.diff(gid) != 0]
        out[gid[head]] = at[head]
    return out


def _round(value: float | None) -> float | None:
    return None if value is None else round(float(value), 6)
