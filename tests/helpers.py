"""Small helpers shared by the API, browser and schemathesis tests."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable

from indexer.ingest.jobs import FINISHED_STATUSES


def wait_for_job(get_json: Callable[[str], dict], job_id: int, timeout: float = 180.0, poll: float = 0.3) -> dict:
    """Poll ``GET /v1/jobs/{id}`` (through ``get_json(path)``) until the job is done or failed."""
    deadline = time.monotonic() + timeout
    job: dict = {}
    while time.monotonic() < deadline:
        job = get_json(f"/v1/jobs/{job_id}")
        if job["status"] in FINISHED_STATUSES:
            return job
        time.sleep(poll)
    raise AssertionError(f"job {job_id} did not finish in {timeout} s: {job}")


def migrate_to(db_url: str, target: str, down: bool = False) -> None:
    """Run the Alembic migrations of ``db_url`` up (or ``down``) to ``target``, as ``init_db`` does."""
    import alembic.command as command

    from indexer.storage.migrate import alembic_config, locked_connection

    cfg = alembic_config(db_url)
    with locked_connection(db_url) as conn:
        cfg.attributes["connection"] = conn
        (command.downgrade if down else command.upgrade)(cfg, target)


class Silent:
    """A transcriber that hears nothing (no Whisper load), for tests about where the bytes go."""

    def transcribe_pcm_file(self, path, **kwargs):
        from indexer.inference.asr import Transcript

        return Transcript("", None, 0.0, os.path.getsize(path) / 32000, [])


def objects(bucket: str, prefix: str = "") -> dict[str, int]:
    """Key -> size of the objects in a bucket of the S3 test endpoint (tests/conftest.py ``s3_env``)."""
    import boto3

    listed = boto3.client("s3").list_objects_v2(Bucket=bucket, Prefix=prefix)
    return {o["Key"]: o["Size"] for o in listed.get("Contents", [])}


def dead_endpoint() -> str:
    """An http URL on this machine where nothing listens: a store that is down."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"
