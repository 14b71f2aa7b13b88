"""Collection commands: the worker, ingest, search, search evaluation, re-indexing and the server."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

import app.cli.remote as remote
from app.cli.common import (
    ApiKeyOpt,
    DatabaseOpt,
    ModelOpt,
    ServerOpt,
    app,
    echo_model,
    echo_results,
    fail,
    open_services,
    open_settings,
    setup_logging,
)
from indexer.enums import FrameStore, JobKind, JobStatus, Stage

if TYPE_CHECKING:
    from indexer.storage.db import Video


@app.command("worker")
def worker(
    database_url: DatabaseOpt = None,
    model: ModelOpt = None,
    worker_id: Annotated[str | None, typer.Option(help="A fixed id (default: unique per process); a worker "
                                                       "restarted under it takes back its items at once.")] = None,
    exit_when_idle: Annotated[bool, typer.Option(help="Stop when the queue is empty.")] = False,
    verbose: bool = False,
) -> None:
    """Run the ingest worker loop (any number of workers can share one database)."""
    setup_logging(verbose)
    import signal
    import threading

    from indexer.ingest.worker import Worker

    services = open_services(open_settings(database_url, model))
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):  # finish the batch in hand, then exit (docker stop, Ctrl-C)
        signal.signal(sig, lambda *_: stop.set())
    Worker(services, owner=worker_id).run(stop=stop, exit_when_idle=exit_when_idle)


@app.command("ingest")
def ingest(
    paths: Annotated[list[str], typer.Argument(help="Video files and/or folders, s3://bucket/prefix (listed) or "
                                                    "http(s):// URLs of video files.")],
    recursive: Annotated[bool, typer.Option("--recursive", "-r", help="Descend into subfolders.")] = False,
    wait: Annotated[bool, typer.Option(help="Process the job in this process and wait for the outcome.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per input (path, video_id, status, "
                                                         "error).")] = False,
    server_paths: Annotated[bool, typer.Option(
        "--remote", help="With --server: the paths are on the server's disk (absolute, under its "
                         "SAVE_SEARCH_ALLOWED_ROOTS); nothing is uploaded.")] = False,
    concurrency: Annotated[int, typer.Option("--concurrency", "-j", min=1, max=64,
                                             help="With --server: uploads at once.")] = 4,
    server: ServerOpt = None,
    api_key: ApiKeyOpt = None,
    database_url: DatabaseOpt = None,
    model: ModelOpt = None,
) -> None:
    """Enqueue files/folders, buckets and URLs (a bulk job); with --wait, ingest them now and report every input's
    outcome. With --server, upload the files to that server (or, with --remote, hand it paths on its own disk);
    --wait then follows the server's jobs."""
    if server:
        remote.reject_local_options(database_url=database_url, model=model)
        return remote.ingest(server, api_key, paths, recursive, wait, as_json, server_paths, concurrency)
    if server_paths:
        fail("--remote names paths on a server's disk: give the server with --server or SAVE_SEARCH_SERVER")
    from indexer.errors import IngestError
    from indexer.ingest.jobs import JobQueue, expand_sources
    from indexer.names import source_problem
    from indexer.storage.media import make_media_store

    settings = open_settings(database_url, model)
    roots, buckets = settings.ingest.allowed_roots or None, settings.ingest.allowed_buckets or None
    for raw in paths:
        if "://" in raw and (problem := source_problem(raw)):  # an object URI or a URL: said before any listing
            fail(f"{raw}: {problem}")
    try:
        files = expand_sources(paths, recursive, roots, buckets, make_media_store(settings))
    except IngestError as exc:
        fail(f"could not list the given sources: {exc.reason}")
    if not files:
        fail("no media files found in the given paths")
    if not wait:
        from indexer.storage.db import make_engine, session_factory
        from indexer.storage.migrate import init_db

        init_db(settings.db_url)
        queue = JobQueue(session_factory(make_engine(settings.db_url)))
        job_id = queue.enqueue(JobKind.BULK, files, roots, allowed_buckets=buckets)
        summary = queue.summary(job_id)
        assert summary is not None  # just created
        if as_json:
            for item in summary.items:
                typer.echo(json.dumps({"path": item.path, "video_id": item.video_id, "status": item.status,
                                       "error": item.error, "job_id": job_id}))
        else:
            typer.echo(f"job {job_id}: {summary.total} file(s) queued; run `save-search worker` to process them")
        return
    setup_logging()
    logging.getLogger().setLevel(logging.WARNING)
    import threading

    from tqdm import tqdm

    from indexer.ingest.jobs import FINISHED_STATUSES
    from indexer.ingest.worker import Worker

    services = open_services(settings)
    w = Worker(services)
    job_id = w.queue.enqueue(JobKind.BULK, files, roots, allowed_buckets=buckets)
    w.startup()
    bar = tqdm(total=len(files), desc="ingest", unit="video", disable=as_json)
    stop = threading.Event()

    def work() -> None:  # the worker in a thread, so the bar moves while a long video is transcribed
        while not stop.is_set():
            if w.run_once() == 0:
                stop.wait(0.5)

    worker_thread = threading.Thread(target=work, name="ingest-wait", daemon=True)
    worker_thread.start()
    while True:
        summary = w.queue.summary(job_id)
        assert summary is not None  # a job is only deleted with its videos' rows: never while we wait on it
        running = [i for i in summary.items if i.status == JobStatus.RUNNING]
        # Finished videos, plus how far the running ones are (a long video moves the bar while it is transcribed).
        bar.n = round(summary.done + summary.failed + sum(i.progress for i in running), 2)
        transcribing = [i for i in running if i.stage == Stage.TRANSCRIBE and i.stage_progress is not None]
        bar.set_postfix_str(f"{transcribing[0].filename}: {transcribing[0].stage_progress:.0%} of the audio "
                            "transcribed" if transcribing else "", refresh=False)
        bar.refresh()
        if summary.status in FINISHED_STATUSES or not worker_thread.is_alive():
            break
        time.sleep(0.5)
    stop.set()
    worker_thread.join()
    w.shutdown()
    bar.close()
    for item in summary.items:
        row = {"path": item.path, "video_id": item.video_id, "status": item.status, "error": item.error}
        if as_json:
            typer.echo(json.dumps(row))
        else:
            mark = "ok  " if item.status == JobStatus.DONE else "FAIL"
            typer.echo(f"{mark} {item.path}" + (f" -> video {item.video_id}" if item.video_id else "")
                       + (f": {item.error}" if item.error else ""))
    if not as_json:
        typer.echo(f"job {job_id}: {summary.done} indexed, {summary.failed} failed")


@app.command("search")
def search(
    query: Annotated[str, typer.Argument(help="What to look for, in plain language.")],
    k: Annotated[int, typer.Option("--k", help="Number of results.")] = 10,
    moments: Annotated[int | None, typer.Option("--moments", help="Moments per result at most (places in the video "
                                                                  "that match, best first; 1 to 20, default 3).",
                                                show_default=False)] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the API's search response (GET /v1/search), "
                                                         "the same with and without --server.")] = False,
    server: ServerOpt = None,
    api_key: ApiKeyOpt = None,
    database_url: DatabaseOpt = None,
    model: ModelOpt = None,
) -> None:
    """Search the indexed videos from the command line (the same service the API uses), in-process or on --server.
    One line per result with its best moment; the video's other moments follow on indented lines starting with
    "+"."""
    if server:
        remote.reject_local_options(database_url=database_url, model=model)
        return remote.search(server, api_key, query, k, as_json, moments)
    from indexer.search.service import SearchService

    services = open_services(open_settings(database_url, model))
    service = SearchService(services)
    try:
        page = service.search(query, k=k, **({} if moments is None else {"moments": moments}))
    except ValueError as exc:
        fail(str(exc))
    if as_json:
        from app.cli.local import search_response

        echo_model(search_response(service, query, k, page))
        return
    echo_results(page.results)


@app.command("evaluate-search")
def evaluate_search(
    queries: Annotated[Path, typer.Argument(help="TSV: query, expected file name or video id, optional start, end "
                                                 "(seconds) and kind; '#' comments.")],
    k: Annotated[int, typer.Option(help="Results looked at per query (ranks beyond count as not found).")] = 100,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    fit_calibration: Annotated[bool, typer.Option(
        "--fit-calibration", help="Also fit the speech, visual and screen score maps on these queries and print them "
                                  "as SAVE_SEARCH_*_CALIBRATION values.")] = False,
    server: ServerOpt = None,
    database_url: DatabaseOpt = None,
    model: ModelOpt = None,
) -> None:
    """Search quality on your own labelled queries: R@1, R@5, MRR and moment accuracy on the running collection."""
    if server:  # never quietly evaluate a local collection when a server was named
        fail("evaluate-search runs in-process only: the API has no evaluation endpoint, and the calibration fit needs "
             "raw channel scores that the API does not return; run it on the server's machine without --server "
             "(and without SAVE_SEARCH_SERVER)")
    setup_logging()
    from indexer.search import evaluation
    from indexer.search.service import SearchService

    try:
        labelled = evaluation.read_queries(queries)
    except (OSError, ValueError) as exc:
        fail(str(exc))
    service = SearchService(open_services(open_settings(database_url, model)))
    try:
        report = evaluation.evaluate(service, labelled, k=k)
    except ValueError as exc:
        fail(str(exc))
    fits: dict[str, tuple[float, float] | str] = {}
    if fit_calibration:
        for channel in evaluation.CHANNELS:
            pairs = evaluation.calibration_pairs(report.outcomes, channel)
            try:
                fits[channel] = evaluation.fit_calibration(pairs)
            except ValueError as exc:
                fits[channel] = str(exc)
    if as_json:
        typer.echo(json.dumps({**report.to_dict(), "calibration": fits}, indent=2))
        return
    typer.echo(evaluation.format_report(report))
    for channel, fit in fits.items():
        value = f"SAVE_SEARCH_{channel.upper()}_CALIBRATION={fit[0]:.3f},{fit[1]:.3f}" if isinstance(fit, tuple) \
            else f"not fitted: {fit}"
        typer.echo(f"{channel} calibration: {value}")


@app.command("reindex")
def reindex(
    rebuild_only: Annotated[bool, typer.Option(help="Only rebuild the index files from stored features.")] = False,
    text: Annotated[bool, typer.Option(
        "--text", help="Also recompute normalised full text and passage embeddings from the stored transcripts "
                       "(after an upgrade that changed them; no audio is decoded).")] = False,
    ocr: Annotated[bool, typer.Option(
        "--ocr", help="Also read the on-screen text of videos that have none yet (indexed before OCR, with "
                      "SAVE_SEARCH_OCR=0, or whose OCR failed): decodes their frames again.")] = False,
    verify: Annotated[bool, typer.Option(
        "--verify", help="Only compare the database with the indexes (ids per model version, both ways) and "
                         "repair the differences; nothing is re-encoded or rebuilt.")] = False,
    database_url: DatabaseOpt = None,
    model: ModelOpt = None,
) -> None:
    """Re-encode videos made with another model (never mixing embedding spaces), then rebuild the indexes."""
    setup_logging()
    from indexer.ingest.reindex import (
        copy_frame_features,
        rebuild_indexes,
        reencode_stale,
        reindex_ocr,
        reindex_text,
        verify_indexes,
    )

    settings = open_settings(database_url, model)
    services = open_services(settings)
    if verify:
        for name, report in verify_indexes(services).items():
            missing = f", {report.missing} without frame features (run `save-search reindex`)" * bool(report.missing)
            typer.echo(f"{name}: {report.count} in the database, {report.added} added, {report.removed} removed"
                       f"{missing}")
        return
    if text:
        typer.echo(f"recomputed the text data of {reindex_text(services)} video(s)")
    if ocr:
        def progress(done: int, total: int, video: Video) -> None:
            typer.echo(f"[{done}/{total}] on-screen text of video {video.id} ({video.filename}): "
                       f"{video.ocr_status}" + (f" ({video.ocr_error})" if video.ocr_error else ""))

        read, failed = reindex_ocr(services, progress=progress)
        typer.echo(f"read the on-screen text of {read} video(s), {failed} failed")
    if not rebuild_only:
        done, failed = reencode_stale(services)
        typer.echo(f"re-encoded {done} video(s), {failed} failed")
    copied = copy_frame_features(services)
    if copied:
        where = "the database" if settings.milvus.frame_store == FrameStore.DATABASE else "Milvus"
        typer.echo(f"copied the frame features of {copied} video(s) into {where}")
    counts = rebuild_indexes(services)
    typer.echo(f"indexes rebuilt: {counts}")


@app.command("serve")
def serve(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port.")] = 8000,
    no_worker: Annotated[bool, typer.Option(
        "--no-worker", help="API only; run `save-search worker` separately (API replicas can share one database).",
    )] = False,
    database_url: DatabaseOpt = None,
    model: ModelOpt = None,
) -> None:
    """Start the search API and web page (with an embedded ingest worker unless --no-worker)."""
    setup_logging()
    import signal

    import uvicorn

    from app.admission import limit_api_threads
    from app.main import create_app

    settings = open_settings(database_url, model)
    if no_worker:
        limit_api_threads(settings)
    # SIGTERM (docker stop, Kubernetes, systemd) is a normal shutdown: exit 0. uvicorn shuts down gracefully
    # on it, then restores the handler it found and raises the signal again; with Python's default handler
    # that kills the process by SIGTERM (exit 143 under an init), which reads as a failure.
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    uvicorn.run(create_app(settings, embedded_worker=not no_worker), host=host, port=port, log_level="info")


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(0)

