"""Pydantic v2 schemas of the public API (v1). The search result is the same object the CLI prints."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import Path as PathParam
from pydantic import BaseModel, ConfigDict, Field, field_validator

from indexer.names import path_problem

# Database ids: 64-bit signed integers; anything else is a 422, never a server error.
DbId = Annotated[int, PathParam(ge=1, le=2**63 - 1)]


class Moment(BaseModel):
    start: float = Field(description="Start of the best matching passage (one to three adjacent transcript "
                                     "segments, or on-screen text spans), in seconds.")
    end: float = Field(description="End of that passage, in seconds.")
    text: str
    source: Literal["speech", "screen"] = Field("speech", description="speech: said in the video; screen: text "
                                                                      "shown on screen from start to end.")
    highlights: list[tuple[int, int]] = Field(default_factory=list,
                                              description="Character spans of `text` matching the query words.")


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
    segment: Moment | None


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


class UploadAccepted(BaseModel):
    video_id: int
    job_id: int
    status: str = Field(description="queued, or done when this exact file was already indexed.")
    duplicate: bool = False


class IngestJobRequest(BaseModel):
    model_config = ConfigDict(strict=True)  # "true" or 1 for a boolean is a client bug: say so

    paths: list[str] = Field(min_length=1, max_length=100_000,
                             description="Server-side files or folders under the configured allowed roots.")
    recursive: bool = False

    @field_validator("paths")
    @classmethod
    def _usable_paths(cls, paths: list[str]) -> list[str]:
        """NUL, lone surrogates, over-long or relative paths: a 422 with the reason, before any file system call."""
        for i, path in enumerate(paths):
            if problem := path_problem(path):
                raise ValueError(f"paths[{i}]: {problem}")
        return paths


class JobItemOut(BaseModel):
    item_id: int
    path: str
    filename: str
    status: str
    stage: str | None
    progress: float
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
