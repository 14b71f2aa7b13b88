"""GET /v1/search: ranked videos with their transcript and matching moments (said or shown on screen), best first."""

from __future__ import annotations

import base64
import hashlib
import json

from fastapi import APIRouter, HTTPException, Query

from indexer.names import text_problem
from indexer.search.moments import MOMENTS_DEFAULT, MOMENTS_MAX
from indexer.search.ranking import SearchResult as Found
from indexer.text import word_spans

from ..deps import AppState, ReadState
from ..media import MediaRow
from ..schemas import ERROR_RESPONSES, ErrorOut, Moment, ScoredMoment, SearchResponse, SearchResult

MAX_PAGE_OFFSET = 1_000_000  # far past any candidate pool; keeps forged tokens' numbers in range

router = APIRouter(prefix="/v1", tags=["search"], responses=ERROR_RESPONSES)


def _query_fingerprint(q: str, k: int, min_score: float | None) -> str:
    return hashlib.sha256(json.dumps([" ".join(q.split()), k, min_score]).encode()).hexdigest()[:16]


def encode_page_token(offset: int, as_of: int, fingerprint: str) -> str:
    raw = json.dumps({"o": offset, "a": as_of, "q": fingerprint}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_page_token(token: str, fingerprint: str) -> tuple[int, int]:
    try:
        data = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        offset, as_of, fp = int(data["o"]), int(data["a"]), str(data["q"])
    except (ValueError, KeyError, TypeError, OverflowError) as exc:  # OverflowError: int(1e400)
        raise HTTPException(422, "page_token is not valid") from exc
    if not (0 <= offset <= MAX_PAGE_OFFSET and 0 <= as_of < 2**63):
        raise HTTPException(422, "page_token is not valid")
    if fp != fingerprint:
        raise HTTPException(422, "page_token belongs to another query (q, k and min_score must not change)")
    return offset, as_of


def to_api(result: Found, query: str, state: AppState, row: MediaRow | None) -> SearchResult:
    seg = result.segment
    thumbnail_url, video_url = state.links.urls(result.video_id, row)
    return SearchResult(
        video_id=result.video_id, filename=result.filename, score=result.score, visual_score=result.visual_score,
        speech_score=result.speech_score, screen_score=result.screen_score, duration=result.duration,
        language=result.language,
        thumbnail_url=thumbnail_url, video_url=video_url,
        transcript=result.transcript,
        segment=None if seg is None else Moment(start=seg.start, end=seg.end, text=seg.text, source=seg.source,
                                                highlights=word_spans(seg.text, query)),
        moments=[ScoredMoment(start=m.start, end=m.end, text=m.text, source=m.source, score=m.score,
                              highlights=word_spans(m.text, query)) for m in result.moments],
    )


@router.get("/search", response_model=SearchResponse, summary="Search videos in plain language",
            responses={503: {"model": ErrorOut, "description": "Busy: retry after the Retry-After seconds"}})
def search(
    state: ReadState,
    q: str = Query(min_length=1, max_length=500, description="What to look for; matched against what is seen "
                                                             "and what is said."),
    k: int = Query(10, ge=1, le=100, description="Results per page."),
    page_token: str | None = Query(None, max_length=512, description="next_page_token of the previous page."),
    min_score: float | None = Query(None, ge=-1.0, le=1.0, description="Drop results scoring below this."),
    moments: int = Query(MOMENTS_DEFAULT, ge=1, le=MOMENTS_MAX, description="Moments per result at most (places "
                                                                            "in the video that match, best first)."),
) -> SearchResponse:
    if not q.strip():
        raise HTTPException(422, "the query is empty")
    if problem := text_problem(q, "the query"):  # PostgreSQL text cannot hold NUL
        raise HTTPException(422, problem)
    fingerprint = _query_fingerprint(q, k, min_score)
    offset, as_of = decode_page_token(page_token, fingerprint) if page_token else (0, None)
    try:
        with state.admission.admit():  # bounded CPU for searches: queue, then 503 (app/admission.py)
            page = state.search.search(q, k=k, offset=offset, min_score=min_score, as_of=as_of, moments=moments)
    except ValueError as exc:
        raise HTTPException(422, str(exc)) from exc
    more = offset + len(page.results) < page.total_candidates
    token = encode_page_token(offset + len(page.results), page.as_of, fingerprint) if more else None
    rows = state.links.rows(r.video_id for r in page.results) if state.links.needs_rows() else {}
    results = [to_api(r, q, state, rows.get(r.video_id)) for r in page.results]
    return SearchResponse(query=q, mode=page.mode, results=results, next_page_token=token)
