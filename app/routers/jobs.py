"""Ingest jobs: bulk ingest of server-side files, and the status of any job (uploads included)."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException

from indexer.jobs import JobSummary, expand_paths

from ..deps import ReadState, WriteState
from ..schemas import ERROR_RESPONSES, DbId, ErrorOut, IngestJobRequest, JobItemOut, JobOut

router = APIRouter(prefix="/v1", tags=["jobs"], responses=ERROR_RESPONSES)


def job_out(summary: JobSummary) -> JobOut:
    return JobOut(job_id=summary.id, kind=summary.kind, status=summary.status, total=summary.total,
                  done=summary.done, failed=summary.failed, queued=summary.queued, running=summary.running,
                  cancelled=summary.cancelled,
                  progress=summary.progress,
                  items=[JobItemOut(item_id=i.item_id, path=i.path, filename=i.filename, status=i.status,
                                    stage=i.stage, progress=i.progress, attempts=i.attempts, video_id=i.video_id,
                                    error=i.error, error_kind=i.error_kind) for i in summary.items])


@router.post("/ingest-jobs", status_code=202, response_model=JobOut, summary="Ingest server-side files or folders",
             responses={403: {"model": ErrorOut}, 422: {"model": ErrorOut}})
def create_ingest_job(body: IngestJobRequest, state: WriteState) -> JobOut:
    roots = state.settings.allowed_roots
    if not roots:
        raise HTTPException(403, "bulk ingest is disabled: configure SAVE_SEARCH_ALLOWED_ROOTS on the server")
    files = expand_paths(body.paths, body.recursive, roots)
    if not files:
        raise HTTPException(422, "the given folders contain no media files")
    job_id = state.queue.enqueue("bulk", files, roots)
    return job_out(state.queue.summary(job_id))


@router.get("/jobs/{job_id}", response_model=JobOut, responses={404: {"model": ErrorOut}},
            summary="Status, progress and per-item outcome of a job")
def get_job(job_id: DbId, state: ReadState) -> JobOut:
    summary = state.queue.summary(job_id)
    if summary is None:
        raise HTTPException(404, f"no job with id {job_id}")
    return job_out(summary)
