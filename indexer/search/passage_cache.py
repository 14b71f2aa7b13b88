"""The candidates' passages and words as scoring reads them, kept per process between queries.

Scoring a candidate's transcript reads every passage of the video (its embedding, segment range, times, channel) and
which of its segments say the query's words. A 30-minute talk has ~1,600 passages and ~530 segments, and a long video
with common words is a candidate of most queries: read from the database each time, that was most of ``/search`` at
100k videos (BENCHMARKS.md, "Search latency end to end"). ``PassageCache`` keeps ``VideoText`` per video id (an LRU
bounded in bytes, ``SAVE_SEARCH_PASSAGE_CACHE_MB``) and serves an entry only while the video row's ``text_tag`` is the
entry's: every write of a video's segments or passages gives it a new random tag (``shards.write_tag``), so a video
re-transcribed by any process, or a new video given a deleted one's id, is read again. A row without a tag (written
before the tag existed) is read every time and never kept. Misses are read in two queries for all of them.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from indexer.enums import Source
from indexer.storage.catalog import stack_blobs
from indexer.storage.db import Passage, Segment
from indexer.storage.lru import SizedLRU
from indexer.text import stems, words

ENTRY_OVERHEAD = 600  # bytes per entry besides its arrays and texts (headers, key, LRU node), approx.
POSTINGS_FROM = 32  # segments from which a video's words get an inverted index (below: its texts are scanned)
META = ("passage_id", "first", "last", "start", "end", "screen")  # the columns of ``VideoText.meta``


class VideoText:
    """One video's passages (one row each, in id order) and its segments' normalised texts. ``meta`` holds their
    scalars in one float64 [P, 6] array (``META``: ids and segment indexes are exact in float64), so a miss costs one
    copy per video and a query one concatenation."""

    __slots__ = ("tag", "meta", "embedding", "norms", "postings", "nbytes")

    def __init__(self, tag: int | None, meta: np.ndarray, embedding: np.ndarray, norms: list[str]) -> None:
        self.tag = tag
        self.meta = meta
        self.embedding = embedding  # float32 [P, dim]: the sentence embedding (fp16 in the database)
        self.norms = norms  # by segment index ("" for an index without a row); speech and screen share the numbering
        self.postings: dict[str, np.ndarray] | None = None  # stem -> segment indexes that say it (long videos)
        if len(norms) >= POSTINGS_FROM:
            index: dict[str, list[int]] = {}
            for idx, norm in enumerate(norms):
                for w in stems(words(norm)):
                    index.setdefault(w, []).append(idx)
            self.postings = {w: np.array(at, dtype=np.int64) for w, at in index.items()}
        self.nbytes = (ENTRY_OVERHEAD + meta.nbytes + embedding.nbytes + sum(50 + len(t) for t in norms)
                       + sum(60 + a.nbytes for a in (self.postings or {}).values()))

    @property
    def segments(self) -> int:
        return len(self.norms)

    def word_bits(self, wanted: Sequence[str]) -> np.ndarray:
        """Per segment index: bit j set when the segment says ``wanted[j]`` (a stem, ``indexer.text.stem``). A long
        video's words are indexed when it is read (stem -> segment indexes: a query costs a lookup per word); a
        short video's few texts are scanned, tokenising only those that contain a word's first letters (a stem is a
        prefix of the words it comes from)."""
        bits = np.zeros(len(self.norms), dtype=np.int64)
        if self.postings is not None:
            for j, w in enumerate(wanted):
                at = self.postings.get(w)
                if at is not None:
                    bits[at] |= np.int64(1) << j
            return bits
        prefixes = [w[:4] for w in wanted]
        for idx, norm in enumerate(self.norms):
            if any(p in norm for p in prefixes):
                said = stems(words(norm))
                bits[idx] = sum(1 << j for j, w in enumerate(wanted) if w in said)
        return bits


class PassageCache(SizedLRU[int, VideoText]):
    """Thread-safe; at most ``max_bytes`` of entries (0: nothing kept, every read goes to the database)."""

    def __init__(self, max_bytes: int) -> None:
        super().__init__(max_bytes, lambda entry: entry.nbytes)

    def read(self, session: Session, videos: Sequence[tuple[int, int | None]], dim: int) -> dict[int, VideoText]:
        """``VideoText`` of each (video id, text tag); a video without passages or segments gets empty arrays."""
        tags = dict(videos)
        found = self.get_many(tags, lambda vid, entry: tags[vid] is not None and entry.tag == tags[vid])
        missing = {vid: tag for vid, tag in tags.items() if vid not in found}
        if missing:
            loaded = load_texts(session, missing, dim)
            found.update(loaded)
            self.put_many((vid, entry) for vid, entry in loaded.items() if entry.tag is not None)
        return found


def load_texts(session: Session, tags: dict[int, int | None], dim: int) -> dict[int, VideoText]:
    """The ``VideoText`` of each video id in ``tags`` from the database: one query for the passages, one for the
    segments (Core rows, not ORM objects: thousands of rows per query). A passage embedding of another width (another
    encoder, until re-indexed) is a zero row (``stack_blobs``), so it scores 0 instead of failing the query."""
    ids = list(tags)
    conn = session.connection()
    rows = conn.execute(select(Passage.video_id, Passage.id, Passage.first_idx, Passage.last_idx, Passage.start_s,
                               Passage.end_s, Passage.source, Passage.embedding)
                        .where(Passage.video_id.in_(ids)).order_by(Passage.video_id, Passage.id)).all()
    norms: dict[int, dict[int, str]] = {vid: {} for vid in ids}
    for vid, idx, norm in conn.execute(select(Segment.video_id, Segment.idx, Segment.norm_text)
                                       .where(Segment.video_id.in_(ids))):
        norms[vid][idx] = norm
    out: dict[int, VideoText] = {}
    if rows:
        vid_col, pid_col, first_col, last_col, start_col, end_col, source_col, blobs = zip(*rows, strict=True)
        vids = np.array(vid_col, dtype=np.int64)
        matrix = stack_blobs(blobs, dim).astype(np.float32)
        meta = np.column_stack([np.array(pid_col, dtype=np.float64), np.array(first_col, dtype=np.float64),
                                np.array(last_col, dtype=np.float64), np.array(start_col, dtype=np.float64),
                                np.array(end_col, dtype=np.float64),
                                np.array([s == Source.SCREEN for s in source_col], dtype=np.float64)])
        cuts = np.flatnonzero(np.diff(vids)) + 1
        for a, b in zip(np.r_[0, cuts].tolist(), np.r_[cuts, len(vids)].tolist(), strict=True):
            vid = int(vids[a])
            count = max(max(norms[vid], default=-1), int(meta[a:b, 2].max())) + 1  # column 2: last segment index
            # Copies: an entry must not keep the whole batch's arrays alive.
            out[vid] = VideoText(tags[vid], meta[a:b].copy(), matrix[a:b].copy(), _by_index(norms[vid], count))
    for vid in ids:
        if vid not in out:
            count = max(norms[vid], default=-1) + 1
            out[vid] = VideoText(tags[vid], np.zeros((0, len(META))), np.zeros((0, dim), np.float32),
                                 _by_index(norms[vid], count))
    return out


def _by_index(texts: dict[int, str], count: int) -> list[str]:
    return [texts.get(i, "") for i in range(count)]
