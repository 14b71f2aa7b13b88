"""The commands' remote mode: what ``search``, ``ingest``, ``jobs`` and ``videos`` do when ``--server URL`` (or
``$SAVE_SEARCH_SERVER``) names a running server, through the Python client (``app.client``).

This path imports the client (httpx, pydantic, the API schemas), never the models, indexes or database, so a
command against a server starts in a fraction of a second. Output is the in-process output: the same lines, the
same JSON (``search --json`` prints the API's response in both modes). Errors end the command with one line and a
non-zero exit: 3 when the server cannot be reached (or does not answer in time), 4 when it refuses the request
(the reason is the API's ``detail``).
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from app.cli.common import echo_model, echo_results, fail

if TYPE_CHECKING:
    from app.client import Client, JobItemOut, JobOut, UploadAccepted

EXIT_UNREACHABLE = 3
EXIT_REFUSED = 4
# Same suffixes as the server's bulk ingest (indexer.ingest.jobs.MEDIA_SUFFIXES), kept here so that listing local
# folders does not load the ingest package; tests/test_client.py checks that they agree.
MEDIA_SUFFIXES = frozenset({".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".mpg", ".mpeg", ".wmv", ".flv",
                            ".ts", ".mts", ".m2ts", ".3gp", ".ogv"})


def reject_local_options(**options: object) -> None:
    """``--database-url``/``--model`` describe the in-process collection: with a server they would be ignored."""
    given = [name.replace("_", "-") for name, value in options.items() if value]
    if given:
        fail(f"--{', --'.join(given)} apply in-process only; the server at --server uses its own settings")


@contextmanager
def connect(server: str, api_key: str | None, connections: int = 16) -> Iterator[Client]:
    """A client for one command (``connections``: requests at once); any client error ends the command with a clear
    message and exit code."""
    from app.client import (
        APIError,
        AuthenticationRequired,
        Client,
        ClientTimeout,
        ConnectionFailed,
        RetryPolicy,
        SaveSearchError,
    )

    client = Client(server, api_key, retry=RetryPolicy(retries=3, backoff_s=0.25, max_wait_s=30.0),
                    max_connections=connections)
    try:
        with client:
            yield client
    except (ConnectionFailed, ClientTimeout) as exc:
        fail(f"{exc} (is `save-search serve` running there? the URL comes from --server or SAVE_SEARCH_SERVER)",
             EXIT_UNREACHABLE)
    except AuthenticationRequired as exc:
        fail(f"the server at {client.base_url} needs an API key ({exc.detail}): pass --api-key or set "
             "SAVE_SEARCH_API_KEY", EXIT_REFUSED)
    except APIError as exc:
        fail(f"the server at {client.base_url} answered {exc}", EXIT_REFUSED)
    except SaveSearchError as exc:
        fail(str(exc), EXIT_REFUSED)


# ---------------------------------------------------------------------------------------------------------- search
def search(server: str, api_key: str | None, query: str, k: int, as_json: bool, moments: int | None = None) -> None:
    with connect(server, api_key) as client:
        page = client.search(query, k, moments=moments)
    if as_json:
        echo_model(page)
        return
    typer.secho(f"model mode: {page.mode} (server {client.base_url})", err=True, fg=typer.colors.YELLOW)
    echo_results(page.results)


# ---------------------------------------------------------------------------------------------------------- ingest
@dataclass
class Upload:
    """One local file's way through an upload: accepted (a job of its own) or refused with the server's reason."""

    path: Path
    size: int = 0
    accepted: UploadAccepted | None = None
    error: str | None = None
    item: JobItemOut | None = None  # after --wait: the outcome of its job


def ingest(server: str, api_key: str | None, paths: Sequence[str], recursive: bool, wait: bool, as_json: bool,
           server_paths: bool, concurrency: int) -> None:
    """Upload local files (``concurrency`` at a time), or with ``server_paths`` hand the paths to the server as a
    bulk job over its own disk; ``s3://`` and ``http(s)://`` sources are always the server's to fetch. With
    ``wait``, follow the jobs to their end."""
    fetched = [p for p in paths if "://" in p]
    if fetched and len(fetched) < len(paths) and not server_paths:
        fail("give buckets and URLs (fetched by the server) and local files (uploaded) in separate commands")
    with connect(server, api_key, connections=max(16, concurrency)) as client:
        if server_paths or fetched:
            _ingest_server_paths(client, paths, recursive, wait, as_json)
            return
        uploads = local_media_files([Path(p) for p in paths], recursive)
        if not uploads:
            fail("no media files found in the given paths")
        client.health()  # a server that is down or a wrong URL fails here, before anything is sent
        fatal = _upload_all(client, uploads, max(1, concurrency), quiet=as_json)
        if fatal is not None:
            sent = [u for u in uploads if u.accepted]
            if sent:  # what the server did receive (its workers index it), then the error
                _print_uploads(sent, as_json, wait=False)
                typer.secho(f"{len(sent)} of {len(uploads)} file(s) were uploaded before the error; the others were "
                            "not sent", err=True)
            raise fatal
        if wait:
            _wait_uploads(client, [u for u in uploads if u.accepted], quiet=as_json)
    _print_uploads(uploads, as_json, wait)


def local_media_files(paths: Sequence[Path], recursive: bool) -> list[Upload]:
    """Files as given and the media files inside given folders (subfolders too with ``recursive``), sorted per
    folder, as the server's bulk ingest lists them. A path that cannot be read is an input failed with the
    reason, as in-process ingest reports it."""
    out: list[Upload] = []
    for p in paths:
        p = p.expanduser()
        try:
            if p.is_dir():
                found = p.rglob("*") if recursive else p.iterdir()
                out += [Upload(f, f.stat().st_size) for f in sorted(
                    f for f in found if f.is_file() and f.suffix.lower() in MEDIA_SUFFIXES)]
            else:
                out.append(Upload(p, p.stat().st_size))
        except OSError as exc:
            out.append(Upload(p, error=f"cannot read it: {exc.strerror or exc}"))
    return out


def _upload_all(client: Client, uploads: Sequence[Upload], concurrency: int, quiet: bool) -> Exception | None:
    """Upload every readable file, ``concurrency`` at a time, with one progress bar over all bytes. A file the
    server refuses (not a video, too large, a bad name) is that file's outcome; anything else (the server went
    away, a key refused) stops the run: uploads in flight finish, no new one starts, and the error is returned."""
    from concurrent.futures import ThreadPoolExecutor

    from tqdm import tqdm

    from app.client import InvalidRequest, PayloadTooLarge, SaveSearchError, UnsupportedMedia, UploadTooSlow

    lock = threading.Lock()
    stop = threading.Event()
    fatal: list[Exception] = []
    bar = tqdm(total=sum(u.size for u in uploads), desc="upload", unit="B", unit_scale=True, unit_divisor=1024,
               disable=quiet, file=sys.stderr)

    def send(u: Upload) -> None:
        if stop.is_set() or u.error:
            return
        counted = 0

        def progress(sent: int, total: int | None) -> None:
            nonlocal counted
            with lock:
                bar.update(sent - counted)  # a retry starts again from 0: the bar steps back
                counted = sent

        try:
            u.accepted = client.upload(u.path, progress=progress)
        except (InvalidRequest, PayloadTooLarge, UnsupportedMedia, UploadTooSlow) as exc:
            u.error = exc.detail or str(exc)
        except OSError as exc:
            u.error = f"cannot read the file: {exc.strerror or exc}"
        except SaveSearchError as exc:
            with lock:
                fatal.append(exc)
            stop.set()
        with lock:
            bar.update(u.size - counted)
            counted = u.size

    try:
        with ThreadPoolExecutor(concurrency, thread_name_prefix="upload") as pool:
            for _ in pool.map(send, uploads):
                pass
    except KeyboardInterrupt:
        stop.set()
        raise
    finally:
        bar.close()
    return fatal[0] if fatal else None


def _wait_uploads(client: Client, uploads: Sequence[Upload], quiet: bool) -> None:
    """Follow each upload's job to its end, oldest first (workers take them in about that order, so this is mostly
    one request per poll), with a bar of videos finished."""
    from tqdm import tqdm

    with tqdm(total=len(uploads), desc="ingest", unit="video", disable=quiet, file=sys.stderr) as bar:
        for u in uploads:
            assert u.accepted is not None
            job = client.wait_for_job(u.accepted.job_id, poll_s=0.5)
            u.item = job.items[0] if job.items else None
            bar.update(1)


def _print_uploads(uploads: Sequence[Upload], as_json: bool, wait: bool) -> None:
    import json

    rows: list[dict[str, Any]] = []
    for u in uploads:
        path = os.path.abspath(u.path)
        if u.error is not None or u.accepted is None:
            rows.append({"path": path, "video_id": None, "status": "failed", "error": u.error, "job_id": None})
        elif wait and u.item is not None:
            rows.append({"path": path, "video_id": u.item.video_id, "status": u.item.status, "error": u.item.error,
                         "job_id": u.accepted.job_id})
        else:
            rows.append({"path": path, "video_id": u.accepted.video_id, "status": u.accepted.status, "error": None,
                         "job_id": u.accepted.job_id})
    for row in rows:
        if as_json:
            typer.echo(json.dumps({k: v for k, v in row.items() if not (wait and k == "job_id")}))
        else:
            typer.echo(_item_line(row["path"], row["status"], row["video_id"], row["error"]))
    if not as_json:
        failed = sum(r["status"] == "failed" for r in rows)
        if wait:
            indexed = sum(r["status"] == "done" for r in rows)
            typer.echo(f"{len(rows)} file(s): {indexed} indexed, {failed} failed")
        else:
            known = sum(bool(u.accepted and u.accepted.duplicate) for u in uploads)
            typer.echo(f"{len(rows) - failed} file(s) uploaded ({known} already indexed), {failed} refused; the "
                       "server's workers index them (`save-search jobs ID` shows a job)")


def _item_line(path: str, status: str, video_id: int | None, error: str | None) -> str:
    """One input's line, as in-process ``ingest --wait`` prints it (``queued`` before the end)."""
    mark = {"done": "ok  ", "failed": "FAIL"}.get(status, status)
    return f"{mark} {path}" + (f" -> video {video_id}" if video_id else "") + (f": {error}" if error else "")


def _ingest_server_paths(client: Client, paths: Sequence[str], recursive: bool, wait: bool, as_json: bool) -> None:
    """``ingest --remote`` (and buckets and URLs): paths on the server's disk (absolute, under its allowed roots),
    objects and URLs it fetches itself."""
    import json

    job = client.create_ingest_job(list(paths), recursive)
    if wait:
        from tqdm import tqdm

        with tqdm(total=job.total, desc="ingest", unit="video", disable=as_json, file=sys.stderr) as bar:
            def progress(j: JobOut) -> None:
                bar.n = j.done + j.failed + j.cancelled
                bar.refresh()

            job = client.wait_for_job(job.job_id, poll_s=0.5, progress=progress)
    for item in job.items:
        row = {"path": item.path, "video_id": item.video_id, "status": item.status, "error": item.error}
        if as_json:
            typer.echo(json.dumps(row if wait else {**row, "job_id": job.job_id}))
        elif wait:
            typer.echo(_item_line(item.path, item.status, item.video_id, item.error))
    if as_json:
        return
    if wait:
        typer.echo(f"job {job.job_id}: {job.done} indexed, {job.failed} failed")
    else:
        typer.echo(f"job {job.job_id}: {job.total} file(s) queued on the server (`save-search jobs {job.job_id}` "
                   "shows its progress)")


# ------------------------------------------------------------------------------------------------ jobs and videos
def job(server: str, api_key: str | None, job_id: int, wait: bool) -> JobOut:
    with connect(server, api_key) as client:
        return client.wait_for_job(job_id, poll_s=0.5) if wait else client.get_job(job_id)


def video_get(server: str, api_key: str | None, video_id: int, as_json: bool) -> None:
    with connect(server, api_key) as client:
        video = client.get_video(video_id)
        media, thumbnail = client.media_url(video), client.thumbnail_url(video)
    if as_json:
        echo_model(video)
        return
    duration = f"{video.duration:.1f} s" if video.duration is not None else "duration unknown"
    typer.echo(f"video {video.video_id}: {video.filename} ({video.status}, {duration}"
               + (f", {video.language}" if video.language else "") + ")")
    if video.error:
        typer.echo(f"error: {video.error}")
    typer.echo(f"media: {media}\nthumbnail: {thumbnail}")
    for seg in video.segments:
        typer.echo(f"  [{seg.start:.1f}-{seg.end:.1f}s] {seg.text}")
    for seg in video.screen_text:
        typer.echo(f"  [on screen, {seg.start:.1f}-{seg.end:.1f}s] {seg.text}")


def video_delete(server: str, api_key: str | None, video_id: int) -> None:
    with connect(server, api_key) as client:
        client.delete_video(video_id)
    typer.echo(f"deleted video {video_id}")
