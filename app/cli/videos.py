"""Jobs and videos: ``save-search jobs ID`` (in-process from the database, or from a server) and ``save-search
videos get|delete ID`` (against a server)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

import app.cli.remote as remote
from app.cli.common import ApiKeyOpt, DatabaseOpt, ServerOpt, app, echo_model, fail, open_settings

if TYPE_CHECKING:
    from app.schemas import JobOut

videos_app = typer.Typer(help="One video on a server: its metadata and transcript, or its removal.",
                         no_args_is_help=True)
app.add_typer(videos_app, name="videos")


@app.command("jobs")
def jobs(
    job_id: Annotated[int, typer.Argument(help="The job id that ingest or an upload printed.", min=1)],
    wait: Annotated[bool, typer.Option(help="Wait until every item is done, failed or cancelled.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the API's job JSON.")] = False,
    server: ServerOpt = None,
    api_key: ApiKeyOpt = None,
    database_url: DatabaseOpt = None,
) -> None:
    """Show a job: status, progress and every item's outcome (the same JSON as GET /v1/jobs/ID)."""
    if server:
        remote.reject_local_options(database_url=database_url)
        job = remote.job(server, api_key, job_id, wait)
    else:
        from app.cli.local import job as local_job

        found = local_job(open_settings(database_url), job_id, wait)
        if found is None:
            fail(f"no job with id {job_id}")
        job = found
    if as_json:
        echo_model(job)
        return
    _print_job(job)


def _print_job(job: JobOut) -> None:
    typer.echo(f"job {job.job_id} ({job.kind}): {job.status}, {job.progress:.0%} - {job.done} indexed, "
               f"{job.failed} failed, {job.queued} queued, {job.running} running, {job.cancelled} cancelled")
    for item in job.items:
        stage = f" ({item.stage}, {item.progress:.0%})" if item.status == "running" and item.stage else ""
        typer.echo(f"  {item.status:<9} {item.path}{stage}" + (f" -> video {item.video_id}" if item.video_id else "")
                   + (f": {item.error}" if item.error else ""))


def _need_server(server: str | None) -> str:
    if not server:
        fail("`save-search videos` talks to a server: pass --server URL or set SAVE_SEARCH_SERVER")
    return server


@videos_app.command("get")
def video_get(
    video_id: Annotated[int, typer.Argument(help="Video id (search results and uploads print it).", min=1)],
    as_json: Annotated[bool, typer.Option("--json", help="Print the API's video JSON.")] = False,
    server: ServerOpt = None,
    api_key: ApiKeyOpt = None,
) -> None:
    """A video's metadata, transcript segments and on-screen text, with its media and thumbnail URLs."""
    remote.video_get(_need_server(server), api_key, video_id, as_json)


@videos_app.command("delete")
def video_delete(
    video_id: Annotated[int, typer.Argument(help="Video id.", min=1)],
    server: ServerOpt = None,
    api_key: ApiKeyOpt = None,
) -> None:
    """Remove a video from the index and the database, with the files the service owns."""
    remote.video_delete(_need_server(server), api_key, video_id)
