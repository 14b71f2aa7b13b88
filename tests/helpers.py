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


def migrate_to(db_url: str, target: str, down: bool = False) -> None:
    """Run the Alembic migrations of ``db_url`` up (or ``down``) to ``target``, as ``init_db`` does."""
    import alembic.command as command

    from indexer.migrate import alembic_config, locked_connection

    cfg = alembic_config(db_url)
    with locked_connection(db_url) as conn:
        cfg.attributes["connection"] = conn
        (command.downgrade if down else command.upgrade)(cfg, target)
