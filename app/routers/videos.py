"""Videos: upload, metadata with transcript, thumbnail, playback (HTTP ranges), deletion."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import FileResponse, Response
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool

from indexer.enums import Source
from indexer.names import is_s3, path_from_db
from indexer.storage.db import Segment, Video
from indexer.videos import delete_video

from ..deps import AppState, MediaReadState, ReadState, WriteState
from ..media import MediaRow, media_type, object_response
from ..schemas import ERROR_RESPONSES, DbId, ErrorOut, SegmentOut, UploadAccepted, VideoOut
from ..uploads import accept_upload, receive_upload

router = APIRouter(prefix="/v1/videos", tags=["videos"], responses=ERROR_RESPONSES)


def _video_out(state: AppState, v: Video) -> VideoOut:
    thumbnail_url, video_url = state.links.urls(v.id, MediaRow(v.content_hash, v.filename, v.source_path,
                                                               v.thumbnail_path))
    return VideoOut(
        video_id=v.id, status=v.status, error=v.error, filename=v.filename, duration=v.duration_s, width=v.width,
        height=v.height, has_audio=v.has_audio, size_bytes=v.size_bytes, language=v.language,
        language_probability=v.language_probability, language_method=v.language_method,
        language_decision=v.language_decision, model_mode=v.model_mode, model_version=v.model_version,
        created_at=v.created_at.isoformat() + "Z",
        thumbnail_url=thumbnail_url, video_url=video_url,
        transcript=v.transcript or "",
        segments=[_segment_out(s) for s in v.segments if s.source == Source.SPEECH],
        screen_text=sorted((_segment_out(s) for s in v.segments if s.source == Source.SCREEN), key=lambda s: s.start),
        ocr_status=v.ocr_status, ocr_error=v.ocr_error,
        speech_seconds=v.speech_seconds, transcribed_seconds=v.transcribed_seconds, coverage=_coverage(v),
        redecoded_regions=v.redecoded_regions, empty_regions=v.empty_regions,
    )


def _coverage(v: Video) -> float | None:
    if v.speech_seconds is None or v.transcribed_seconds is None:
        return None
    return round(v.transcribed_seconds / v.speech_seconds, 4) if v.speech_seconds > 0 else 1.0


def _segment_out(s: Segment) -> SegmentOut:
    return SegmentOut(start=s.start_s, end=s.end_s, text=s.text, source=s.source)


def _get(state: AppState, video_id: int) -> Video:
    with state.services.sessions() as s:
        video = s.get(Video, video_id)
        if video is None:
            raise HTTPException(404, f"no video with id {video_id}")
        _ = video.segments  # load while the session is open
        s.expunge_all()
        return video


# The body is read by ``receive_upload`` (after the key rules, with limits), not by FastAPI, so it is
# documented here by hand.
UPLOAD_BODY = {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object", "required": ["file"],
    "properties": {"file": {"type": "string", "format": "binary", "description": "The video file."}}}}}}}


@router.post("", status_code=202, response_model=UploadAccepted, summary="Upload a video for indexing",
             openapi_extra=UPLOAD_BODY,
             responses={408: {"model": ErrorOut}, 413: {"model": ErrorOut}, 415: {"model": ErrorOut},
                        422: {"model": ErrorOut},
                        503: {"model": ErrorOut, "description": "The media store is down: nothing was stored"}})
async def upload(request: Request, state: WriteState) -> UploadAccepted:
    received = await receive_upload(request, state.settings, state.services.media)
    return await run_in_threadpool(accept_upload, state, received)


@router.get("", response_model=list[VideoOut], summary="List videos, newest first")
def list_videos(state: ReadState, limit: int = Query(50, ge=1, le=500),
                offset: int = Query(0, ge=0, le=10_000_000)) -> list[VideoOut]:
    with state.services.sessions() as s:
        videos = list(s.scalars(select(Video).order_by(Video.id.desc()).limit(limit).offset(offset)))
        return [_video_out(state, v) for v in videos]


@router.get("/{video_id}", response_model=VideoOut, responses={404: {"model": ErrorOut}},
            summary="Metadata, the transcript with its segments, and the text shown on screen")
def get_video(video_id: DbId, state: ReadState) -> VideoOut:
    return _video_out(state, _get(state, video_id))


@router.head("/{video_id}/thumbnail", include_in_schema=False)
@router.get("/{video_id}/thumbnail", response_class=FileResponse, responses={404: {"model": ErrorOut}})
def thumbnail(video_id: DbId, request: Request, state: MediaReadState) -> Response:
    video = _get(state, video_id)
    ref = video.thumbnail_path
    # Behind keys, shared caches must not keep a copy for others.
    cache = (f"private, max-age={min(300, state.settings.api.media_url_ttl_s)}" if state.guard.media_urls_signed()
             else "public, max-age=86400")
    if ref and is_s3(ref):  # object storage: a presigned URL, or proxied (app/media.py)
        return object_response(request, state.links, ref, "image/jpeg", {"Cache-Control": cache})
    if not ref or not Path(ref).is_file():
        raise HTTPException(404, "this video has no thumbnail yet")
    return FileResponse(ref, media_type="image/jpeg", headers={"Cache-Control": cache})


@router.head("/{video_id}/media", include_in_schema=False)  # players ask for the size and type first
@router.get("/{video_id}/media", response_class=FileResponse, responses={404: {"model": ErrorOut}},
            summary="The video file, with HTTP range requests (seekable playback)")
def media(video_id: DbId, request: Request, state: MediaReadState) -> Response:
    video = _get(state, video_id)
    content_type = media_type(video.filename, video.source_path)
    if is_s3(video.source_path):  # object storage: a presigned URL, or proxied with ranges (app/media.py)
        return object_response(request, state.links, video.source_path, content_type)
    path = path_from_db(video.source_path)
    if not path.is_file():
        raise HTTPException(404, "the media file of this video is no longer available")
    return FileResponse(path, media_type=content_type)


@router.delete("/{video_id}", status_code=204, responses={404: {"model": ErrorOut}},
               summary="Remove a video from the index and the database, with the files we own")
def delete(video_id: DbId, state: WriteState) -> None:
    if not delete_video(state.services, video_id):
        raise HTTPException(404, f"no video with id {video_id}")
