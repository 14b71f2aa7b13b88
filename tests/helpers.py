"""Small helpers shared by the API, browser and schemathesis tests."""

from __future__ import annotations

import time
from collections.abc import Callable

from indexer.jobs import FINISHED_JOB_STATUSES


def wait_for_job(get_json: Callable[[str], dict], job_id: int, timeout: float = 180.0, poll: float = 0.3) -> dict:
    """Poll ``GET /v1/jobs/{id}`` (through ``get_json(path)``) until the job is done or failed."""
    deadline = time.monotonic() + timeout
    job: dict = {}
    while time.monotonic() < deadline:
        job = get_json(f"/v1/jobs/{job_id}")
        if job["status"] in FINISHED_JOB_STATUSES:
            return job
        time.sleep(poll)
    raise AssertionError(f"job {job_id} did not finish in {timeout} s: {job}")
