"""Ingest jobs: bulk ingest of server-side files, objects in buckets and URLs, and the status of any job (uploads
included)."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException

from indexer.enums import JobKind
from indexer.errors import StoreUnavailableError
from indexer.ingest.jobs import JobSummary, expand_sources
from indexer.names import is_remote, is_s3

from ..deps import ReadState, WriteState
from ..schemas import ERROR_RESPONSES, DbId, ErrorOut, IngestJobRequest, JobItemOut, JobOut

router = APIRouter(prefix="/v1", tags=["jobs"], responses=ERROR_RESPONSES)


def job_out(summary: JobSummary) -> JobOut:
    return JobOut(job_id=summary.id, kind=summary.kind, status=summary.status, total=summary.total,
                  done=summary.done, failed=summary.failed, queued=summary.queued, running=summary.running,
                  cancelled=summary.cancelled,
                  progress=summary.progress,
                  items=[JobItemOut(item_id=i.item_id, path=i.path, filename=i.filename, status=i.status,
                                    stage=i.stage, progress=i.progress, stage_progress=i.stage_progress,
                                    attempts=i.attempts, video_id=i.video_id,
                                    error=i.error, error_kind=i.error_kind) for i in summary.items])


@router.post("/ingest-jobs", status_code=202, response_model=JobOut,
             summary="Ingest server-side files or folders, objects in buckets, or URLs",
             responses={403: {"model": ErrorOut}, 422: {"model": ErrorOut}, 503: {"model": ErrorOut}})
def create_ingest_job(body: IngestJobRequest, state: WriteState) -> JobOut:
    ingest = state.settings.ingest
    roots, buckets = ingest.allowed_roots, ingest.allowed_buckets
    if not roots and any(not is_remote(p) for p in body.paths):
        raise HTTPException(403, "bulk ingest of server files is disabled: configure SAVE_SEARCH_ALLOWED_ROOTS on "
                                 "the server")
    if not buckets and any(is_s3(p) for p in body.paths):
        raise HTTPException(403, "bulk ingest from buckets is disabled: configure SAVE_SEARCH_ALLOWED_BUCKETS on "
                                 "the server")
    try:
        files = expand_sources(body.paths, body.recursive, roots, buckets, state.services.media)
    except StoreUnavailableError as exc:
        raise HTTPException(503, f"a bucket could not be listed: {exc.reason}", headers={"Retry-After": "30"}) from exc
    if not files:
        raise HTTPException(422, "the given folders contain no media files")
    job_id = state.queue.enqueue(JobKind.BULK, files, roots, allowed_buckets=buckets)
    summary = state.queue.summary(job_id)
    assert summary is not None  # just created
    return job_out(summary)


@router.get("/jobs/{job_id}", response_model=JobOut, responses={404: {"model": ErrorOut}},
            summary="Status, progress and per-item outcome of a job")
def get_job(job_id: DbId, state: ReadState) -> JobOut:
    summary = state.queue.summary(job_id)
    if summary is None:
        raise HTTPException(404, f"no job with id {job_id}")
    return job_out(summary)
