"""Pydantic v2 schemas of the public API (v1). The search result is the same object the CLI prints.

The Python client (``app.client``) parses responses into these same classes, so this module imports no FastAPI
(a client needs only pydantic); the routers read path-parameter limits from the plain annotations below.
"""

from __future__ import annotations

from typing import Annotated, Literal

import annotated_types as at
from pydantic import BaseModel, ConfigDict, Field, field_validator

from indexer.names import source_problem
from indexer.search.moments import MOMENT_GAP_S, MOMENT_MIN_SCORE, MOMENT_RATIO

# Database ids: 64-bit signed integers; anything else is a 422, never a server error. Plain constraints (not
# fastapi.Path): FastAPI reads them the same way for path parameters (same validation, same OpenAPI schema).
DbId = Annotated[int, at.Ge(1), at.Le(2**63 - 1)]


class Moment(BaseModel):
    start: float = Field(description="Start of the best matching passage (one to three adjacent transcript "
                                     "segments, or on-screen text spans), in seconds.")
    end: float = Field(description="End of that passage, in seconds.")
    text: str
    source: Literal["speech", "screen"] = Field("speech", description="speech: said in the video; screen: text "
                                                                      "shown on screen from start to end.")
    highlights: list[tuple[int, int]] = Field(default_factory=list,
                                              description="Character spans of `text` matching the query words.")


class ScoredMoment(Moment):
    score: float = Field(description="Calibrated match of this passage in [0, 1]: its channel's map (speech or "
                                     "screen, by `source`) applied to the passage's own raw score, the map that "
                                     "gives the video its speech_score or screen_score. The first moment's score "
                                     "equals that channel score when the channel's best passage is this one; it is "
                                     "lower when a longer passage (three segments, the whole transcript) scores the "
                                     "channel higher.")


class SearchResult(BaseModel):
    video_id: int
    filename: str = Field(description="Original file name.")
    score: float = Field(description="Probability-like relevance in [0, 1]: 1 - (1 - visual_score) * "
                                     "(1 - speech_score) * (1 - screen_score), a missing channel counting 0 "
                                     "(see README, Search).")
    visual_score: float | None = Field(description="Calibrated visual match in [0, 1] (exact SAVE similarity "
                                                   "through a fixed logistic map); null in speech mode.")
    speech_score: float | None = Field(description="Calibrated transcript match in [0, 1]: on the retrieval "
                                                   "benchmark about this share of results with this score were "
                                                   "the right video; null without speech.")
    screen_score: float | None = Field(None, description="Calibrated match of the text shown on screen in "
                                                         "[0, 1] (read by OCR); null without on-screen text.")
    duration: float
    language: str | None = None
    thumbnail_url: str
    video_url: str
    transcript: str
    segment: Moment | None = Field(description="The best matching moment: the best local passage (a segment by "
                                               "default) of the surer text channel; the same passage as moments[0].")
    moments: list[ScoredMoment] = Field(
        default_factory=list,
        description=f"Up to `moments` places in the video that match, best first: moments[0] is `segment`; the "
                    f"others are the best remaining local passages of either text channel (by score), each at least "
                    f"{MOMENT_GAP_S:g} s away from every other (overlapping, touching or nearly touching passages are "
                    f"one place), scoring at least {MOMENT_MIN_SCORE:g} and {MOMENT_RATIO:g} times the first's "
                    f"score. Empty when `segment` is null.")


class SearchResponse(BaseModel):
    query: str
    mode: str = Field(description="save-fused, zero-shot-clip or speech.")
    results: list[SearchResult]
    next_page_token: str | None = None


class SegmentOut(BaseModel):
    start: float
    end: float
    text: str
    source: Literal["speech", "screen"] = Field("speech", description="speech: a transcript segment; screen: "
                                                                      "text shown on screen from start to end.")


class VideoOut(BaseModel):
    video_id: int
    status: str = Field(description="pending, indexed or failed.")
    error: str | None = None
    filename: str
    duration: float | None = None
    width: int | None = None
    height: int | None = None
    has_audio: bool | None = None
    size_bytes: int | None = None
    language: str | None = None
    language_probability: float | None = Field(None, description="Whisper's detection probability of `language`.")
    language_method: str | None = Field(None, description="How the language was chosen: detected, compared "
                                                          "(uncertain detection: candidate decodes compared), "
                                                          "expected, given, english-only or none.")
    language_decision: str | None = Field(None, description="One line saying how the language was chosen.")
    model_mode: str | None = None
    model_version: str | None = None
    created_at: str
    thumbnail_url: str
    video_url: str
    transcript: str
    segments: list[SegmentOut] = Field(description="The transcript's segments (source speech).")
    screen_text: list[SegmentOut] = Field(default_factory=list,
                                          description="Text shown on screen (source screen), by start time.")
    ocr_status: str | None = Field(None, description="read, failed (see ocr_error) or null: on-screen text was "
                                                     "never read (OCR off, or indexed before it).")
    ocr_error: str | None = None
    speech_seconds: float | None = Field(None, description="Seconds of speech the voice activity detector found "
                                                           "(null: indexed before this was measured).")
    transcribed_seconds: float | None = Field(None, description="Of those, the seconds words were found in.")
    coverage: float | None = Field(None, description="transcribed_seconds / speech_seconds (1 when there is no "
                                                     "speech).")
    redecoded_regions: int | None = Field(None, description="Stretches of speech the first decode left without "
                                                            "words that a second, separate decode filled.")
    empty_regions: int | None = Field(None, description="Stretches of speech that stayed without words (music, "
                                                        "noise or speech Whisper could not read; logged).")


class UploadAccepted(BaseModel):
    video_id: int
    job_id: int
    status: str = Field(description="queued, or done when this exact file was already indexed.")
    duplicate: bool = False


class IngestJobRequest(BaseModel):
    model_config = ConfigDict(strict=True)  # "true" or 1 for a boolean is a client bug: say so

    paths: list[str] = Field(min_length=1, max_length=100_000,
                             description="What to ingest: server-side files or folders under the allowed roots "
                                         "(SAVE_SEARCH_ALLOWED_ROOTS), s3://bucket/prefix under the allowed buckets "
                                         "(SAVE_SEARCH_ALLOWED_BUCKETS; listed, media objects only), or http(s) "
                                         "URLs of video files (public addresses only, unless the server allows "
                                         "more).")
    recursive: bool = Field(False, description="Folders and prefixes: their subfolders too.")

    @field_validator("paths")
    @classmethod
    def _usable_paths(cls, paths: list[str]) -> list[str]:
        """NUL, lone surrogates, over-long or relative paths, malformed object URIs or URLs: a 422 with the
        reason, before any file system or network call."""
        for i, path in enumerate(paths):
            if problem := source_problem(path):
                raise ValueError(f"paths[{i}]: {problem}")
        return paths


class JobItemOut(BaseModel):
    item_id: int
    path: str
    filename: str
    status: str
    stage: str | None
    progress: float
    stage_progress: float | None = Field(None, description="How far into its stage a running item is, 0..1; while "
                                                           "the stage is transcribe: the fraction of the audio "
                                                           "transcribed.")
    attempts: int
    video_id: int | None
    error: str | None
    error_kind: str | None


class JobOut(BaseModel):
    job_id: int
    kind: str
    status: str = Field(description="queued, running, or once every item is done, failed or cancelled: done (one "
                                    "was indexed), failed (none was, one failed) or cancelled (all were).")
    total: int
    done: int
    failed: int
    queued: int
    running: int
    cancelled: int = Field(description="Items whose video was deleted before it was indexed.")
    progress: float
    items: list[JobItemOut]


class Health(BaseModel):
    status: str


class Ready(BaseModel):
    ready: bool
    mode: str
    reason: str
    model: dict
    videos: int
    queue_depth: int
    worker: str
    auth: str


class ErrorOut(BaseModel):
    detail: str


# Every error body is {"detail": "<sentence>"} (validation errors included, see app.main).
ERROR_RESPONSES: dict[int | str, dict] = {
    400: {"model": ErrorOut, "description": "Malformed request body"},
    422: {"model": ErrorOut, "description": "Invalid parameters"},
}
