"""The Python client (``app.client``) and the CLI's remote mode against the real server: ``save-search serve`` in a
subprocess (uvicorn, embedded worker, speech mode, API keys on), real speech clips uploaded through the API.

Where a failure has to be made on purpose (a busy server, an upload that fails once) a small ASGI stub sits in
front of the real server and answers the first matching requests itself; everything else goes through to it."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from app.client import (
    AsyncClient,
    AuthenticationRequired,
    Client,
    ConnectionFailed,
    NotFound,
    PermissionDenied,
    RateLimited,
    RetryPolicy,
    ServiceBusy,
)
from tests.media_fixtures import MEDIA, speech_video

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not MEDIA.exists(), reason=f"no test media at {MEDIA}")]

ROOT = Path(__file__).resolve().parents[1]
KEY = "client-test-key"
COLLECTION = ("LJ001-0002", "LJ001-0011", "LJ001-0004")  # uploaded by the fixture
CLI_UPLOAD, TO_DELETE, ON_SERVER = "LJ001-0013", "LJ001-0008", "LJ001-0020"  # one test each
HEAVY = ("torch", "transformers", "faiss", "sqlalchemy", "ctranslate2", "faster_whisper", "onnxruntime", "av",
         "fastapi")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    url: str
    home: Path
    clips: Path
    env: dict[str, str]  # the server's settings: an in-process command with them sees the same collection

    def cli(self, *args: str, remote: bool = True, key: str | None = KEY, url: str | None = None,
            timeout: float = 600, python_args: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
        """``save-search ARGS`` as a new process from this checkout; ``remote``: against this server (or ``url``)
        through ``SAVE_SEARCH_SERVER``, else in-process on the server's home."""
        env = {**self.env, "COLUMNS": "200"}
        env.pop("SAVE_SEARCH_API_KEYS")  # a client knows its own key only
        if remote:
            env["SAVE_SEARCH_SERVER"] = url or self.url
        if key is not None:
            env["SAVE_SEARCH_API_KEY"] = key
        return subprocess.run([sys.executable, *python_args, "-m", "app.cli", *args], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=timeout)

    def client(self, **kwargs) -> Client:
        return Client(self.url, KEY, **kwargs)


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("client")
    clips = root / "clips"
    clips.mkdir()
    for name in (*COLLECTION, CLI_UPLOAD, TO_DELETE, ON_SERVER):
        speech_video(MEDIA / "speech" / "ljspeech" / f"{name}.wav", clips / f"{name}.mp4")
    home = root / "home"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SAVE_SEARCH_")}
    env.update(SAVE_SEARCH_HOME=str(home), SAVE_SEARCH_MODEL=str(root / "no-visual-model"), SAVE_SEARCH_OCR="0",
               SAVE_SEARCH_EXPECTED_LANGUAGES="en", SAVE_SEARCH_API_KEYS=KEY, SAVE_SEARCH_ALLOWED_ROOTS=str(clips),
               HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    port = _free_port()
    log = root / "server.log"
    with log.open("ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "app.cli", "serve", "--port", str(port)], cwd=ROOT, env=env,
                                stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            assert proc.poll() is None, log.read_text()[-3000:]
            try:
                if httpx.get(f"{url}/readyz", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, f"server not ready: {log.read_text()[-3000:]}"
            time.sleep(0.5)
        yield Server(url, home, clips, env)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()


@dataclass
class Collection:
    video_ids: dict[str, int]
    progress: dict[str, list[tuple[int, int | None]]]


@pytest.fixture(scope="module")
def collection(server) -> Collection:
    """The three fixture clips uploaded with the client (streamed, with a progress callback) and indexed."""
    progress: dict[str, list[tuple[int, int | None]]] = {}
    ids = {}
    with server.client() as c:
        jobs = []
        for name in COLLECTION:
            events = progress.setdefault(name, [])
            accepted = c.upload(server.clips / f"{name}.mp4", progress=lambda s, t, e=events: e.append((s, t)))
            jobs.append((name, accepted))
        for name, accepted in jobs:
            job = c.wait_for_job(accepted.job_id, poll_s=0.5, timeout=600)
            assert job.status == "done", job
            ids[name] = accepted.video_id
    return Collection(ids, progress)


# ------------------------------------------------------------------------------------------------------- client
def test_upload_streams_with_progress_and_is_indexed(server, collection):
    for name, events in collection.progress.items():
        size = (server.clips / f"{name}.mp4").stat().st_size
        assert events[0] == (0, size) and events[-1] == (size, size)
        assert [s for s, _ in events] == sorted(s for s, _ in events)  # only forwards: no retry was needed
    with server.client() as c:
        video = c.get_video(collection.video_ids["LJ001-0002"])
        assert video.status == "indexed" and "comparatively modern" in video.transcript.lower()
        assert c.media_url(video) == f"{server.url}/v1/videos/{video.video_id}/media"
        assert c.thumbnail_url(video.video_id) == f"{server.url}/v1/videos/{video.video_id}/thumbnail"
        assert httpx.get(c.media_url(video)).content == (server.clips / "LJ001-0002.mp4").read_bytes()
        again = c.upload(server.clips / "LJ001-0002.mp4")  # the same bytes: recognised, not indexed twice
        assert again.duplicate and again.video_id == video.video_id and again.status == "done"
        assert c.health().status == "ok"
        ready = c.ready()
        assert ready.mode == "speech" and ready.videos >= len(COLLECTION) and "required for writes" in ready.auth


def test_search_and_pagination(server, collection):
    with server.client() as c:
        page = c.search("a letter fine in form", k=3)
        assert page.results[0].video_id == collection.video_ids["LJ001-0011"]
        assert page.results[0].segment is not None and page.results[0].segment.highlights
        pages = list(c.search_pages("printed book letters modern", k=1))
        assert len(pages) >= 2 and all(len(p.results) == 1 for p in pages)
        assert [p.next_page_token is None for p in pages] == [False] * (len(pages) - 1) + [True]
        ids = [p.results[0].video_id for p in pages]
        assert len(set(ids)) == len(ids)  # no video twice across pages
        assert [r.video_id for r in c.search_results("printed book letters modern", page_size=1)] == ids
        assert len(list(c.search_results("printed book letters modern", page_size=1, limit=2))) == 2
        assert list(c.search_pages("printed book letters modern", k=1, max_pages=1)) == pages[:1]


def test_async_client_uploads_a_file_object_and_searches(server, collection):
    async def main() -> None:
        async with AsyncClient(server.url, KEY) as c:
            with (server.clips / "LJ001-0002.mp4").open("rb") as f:
                events: list[tuple[int, int | None]] = []
                accepted = await c.upload(f, progress=lambda s, t: events.append((s, t)))
            assert accepted.duplicate and accepted.video_id == collection.video_ids["LJ001-0002"]
            assert events[-1][0] == events[-1][1] == (server.clips / "LJ001-0002.mp4").stat().st_size
            pages = [p async for p in c.search_pages("printed book letters modern", k=1)]
            assert len(pages) >= 2
            job = await c.wait_for_job(accepted.job_id)
            assert job.status == "done"
            found = await asyncio.gather(*(c.search(q) for q in ("comparatively modern", "block books")))
            assert [p.results[0].filename for p in found] == ["LJ001-0002.mp4", "LJ001-0004.mp4"]

    asyncio.run(main())


def test_wrong_or_missing_key_is_a_clear_typed_error(server, collection):
    before = len(server.client().list_videos(limit=500))
    with Client(server.url, "not-the-key") as c, pytest.raises(PermissionDenied) as denied:
        c.upload(server.clips / f"{CLI_UPLOAD}.mp4")
    assert denied.value.status == 403 and denied.value.detail == "this API key is not valid"
    with Client(server.url, api_key="") as c, pytest.raises(AuthenticationRequired) as missing:
        c.delete_video(collection.video_ids["LJ001-0002"])
    assert missing.value.status == 401 and "API key is required" in missing.value.detail
    out = server.cli("ingest", str(server.clips / f"{CLI_UPLOAD}.mp4"), key="not-the-key")
    assert out.returncode == 4, out
    assert "403" in out.stderr and "this API key is not valid" in out.stderr and "Traceback" not in out.stderr
    out = server.cli("videos", "delete", str(collection.video_ids["LJ001-0002"]), key=None)
    assert out.returncode == 4 and "needs an API key" in out.stderr and "SAVE_SEARCH_API_KEY" in out.stderr, out
    assert len(server.client().list_videos(limit=500)) == before  # nothing was uploaded or deleted


# --------------------------------------------------------------------------------------------------- CLI remote
def test_cli_search_json_is_the_same_with_and_without_server(server, collection):
    query = "the first importance of the letter"
    remote = server.cli("search", query, "--k", "3", "--json", python_args=("-X", "importtime"))
    assert remote.returncode == 0, remote.stderr[-3000:]
    local = server.cli("search", query, "--k", "3", "--json", remote=False)
    assert local.returncode == 0, local.stderr[-3000:]
    assert remote.stdout == local.stdout
    data = json.loads(remote.stdout)
    assert data["results"][0]["filename"] == "LJ001-0011.mp4" and data["mode"] == "speech"
    # The remote path loads the client only: no model, index, database or server code.
    imported = {line.split("|")[-1].strip().split(".")[0] for line in remote.stderr.splitlines()
                if line.startswith("import time:")}
    assert "httpx" in imported and not imported & set(HEAVY), sorted(imported & set(HEAVY))
    text = server.cli("search", query, "--k", "3")
    assert text.returncode == 0 and text.stdout.startswith(" 1. LJ001-0011.mp4 (video ")


def test_cli_ingest_uploads_with_a_progress_bar_and_waits(server, collection):
    out = server.cli("ingest", str(server.clips / f"{CLI_UPLOAD}.mp4"), str(server.clips / "LJ001-0002.mp4"),
                     "--wait", "--json", "-j", "2")
    assert out.returncode == 0, out.stderr[-3000:]
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    assert [(Path(r["path"]).name, r["status"]) for r in rows] == [(f"{CLI_UPLOAD}.mp4", "done"),
                                                                   ("LJ001-0002.mp4", "done")]
    assert rows[1]["video_id"] == collection.video_ids["LJ001-0002"] and all(r["error"] is None for r in rows)
    with server.client() as c:
        assert "ugly ones" in c.get_video(rows[0]["video_id"]).transcript.lower()
    out = server.cli("ingest", str(server.clips / f"{CLI_UPLOAD}.mp4"), "--wait")  # text mode: the bars on stderr
    assert out.returncode == 0 and "upload: 100%" in out.stderr and "ingest: 100%" in out.stderr, out.stderr
    assert out.stdout.splitlines()[-1] == "1 file(s): 1 indexed, 0 failed"
    # A file the server refuses and one that is not there are failed inputs, as in-process; the others go on.
    (server.home.parent / "notes.mp4").write_bytes(b"not a video at all")
    out = server.cli("ingest", str(server.home.parent / "notes.mp4"), str(server.home.parent / "missing.mp4"),
                     str(server.clips / f"{CLI_UPLOAD}.mp4"), "--json")
    assert out.returncode == 0, out.stderr[-3000:]
    rows = {Path(r["path"]).name: r for r in map(json.loads, out.stdout.splitlines())}
    assert rows["notes.mp4"]["status"] == "failed" and rows["notes.mp4"]["error"]
    assert rows["missing.mp4"]["status"] == "failed" and "No such file" in rows["missing.mp4"]["error"]
    assert rows[f"{CLI_UPLOAD}.mp4"]["status"] == "done"  # already indexed: recognised by its content


def test_cli_ingest_server_paths_and_jobs(server, collection):
    path = str(server.clips / f"{ON_SERVER}.mp4")
    out = server.cli("ingest", path, "--remote", "--json")
    assert out.returncode == 0, out.stderr[-3000:]
    (row,) = [json.loads(line) for line in out.stdout.splitlines()]
    assert row["path"] == path and row["status"] == "queued"
    done = server.cli("jobs", str(row["job_id"]), "--wait", "--json")
    assert done.returncode == 0, done.stderr
    job = json.loads(done.stdout)
    assert job["status"] == "done" and job["items"][0]["video_id"]
    in_process = server.cli("jobs", str(row["job_id"]), "--json", remote=False)  # the same JSON from the database
    assert in_process.returncode == 0 and in_process.stdout == done.stdout, in_process.stderr
    text = server.cli("jobs", str(row["job_id"]))
    assert text.stdout.startswith(f"job {row['job_id']} (bulk): done, 100%")
    refused = server.cli("ingest", "relative/path.mp4", "--remote")
    assert refused.returncode == 4 and "absolute" in refused.stderr, refused.stderr
    missing = server.cli("jobs", "999999")
    assert missing.returncode == 4 and "no job with id 999999" in missing.stderr


def test_cli_videos_get_and_delete(server, collection):
    with server.client() as c:
        accepted = c.upload(server.clips / f"{TO_DELETE}.mp4")
        c.wait_for_job(accepted.job_id, poll_s=0.5, timeout=600)
    vid = str(accepted.video_id)
    got = server.cli("videos", "get", vid, "--json")
    assert got.returncode == 0 and "never been surpassed" in json.loads(got.stdout)["transcript"].lower(), got
    text = server.cli("videos", "get", vid)
    assert text.stdout.startswith(f"video {vid}: {TO_DELETE}.mp4 (indexed") and "media: http" in text.stdout
    deleted = server.cli("videos", "delete", vid)
    assert deleted.returncode == 0 and deleted.stdout.strip() == f"deleted video {vid}"
    with server.client() as c, pytest.raises(NotFound) as gone:
        c.get_video(accepted.video_id)
    assert gone.value.detail == f"no video with id {vid}"
    again = server.cli("videos", "get", vid)
    assert again.returncode == 4 and f"404 Not Found: no video with id {vid}" in again.stderr
    local = server.cli("videos", "get", vid, remote=False)
    assert local.returncode == 2 and "--server" in local.stderr


def test_server_down_is_a_clear_error_and_nothing_is_done(server, tmp_path):
    down = f"http://127.0.0.1:{_free_port()}"
    with Client(down, retry=RetryPolicy(retries=1, backoff_s=0.1)) as c, pytest.raises(ConnectionFailed) as exc:
        c.search("anything")
    assert down in str(exc.value)
    start = time.monotonic()
    out = server.cli("search", "anything", "--json", url=down)
    assert out.returncode == 3 and "cannot reach the save-search server" in out.stderr and out.stdout == ""
    assert time.monotonic() - start < 60
    out = server.cli("ingest", str(server.clips / f"{CLI_UPLOAD}.mp4"), "--wait", "--json", url=down)
    assert out.returncode == 3 and out.stdout == "" and "Traceback" not in out.stderr, out
    out = server.cli("evaluate-search", str(tmp_path / "q.tsv"))  # no endpoint: refused, never run locally
    assert out.returncode == 2 and "in-process only" in out.stderr


# -------------------------------------------------------------------------------- busy server and transient fails
class Stub:
    """ASGI app in front of the real server: the first ``times`` requests to ``path`` (method ``method``) are read
    whole and answered ``status`` with ``headers``; every other request is forwarded."""

    def __init__(self, upstream: str, method: str, path: str, times: int, status: int,
                 headers: dict[str, str]) -> None:
        self.upstream, self.method, self.path, self.times = upstream, method, path, times
        self.status, self.headers = status, headers
        self.answered: list[float] = []
        self.forwarded: list[float] = []

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "lifespan":
            while (message := await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        if scope["method"] == self.method and scope["path"] == self.path and len(self.answered) < self.times:
            self.answered.append(time.monotonic())
            payload = json.dumps({"detail": "the service is busy (stub); retry shortly"}).encode()
            headers = [(b"content-type", b"application/json"), *((k.encode(), v.encode())
                                                                  for k, v in self.headers.items())]
            await send({"type": "http.response.start", "status": self.status, "headers": headers})
            await send({"type": "http.response.body", "body": payload})
            return
        self.forwarded.append(time.monotonic())
        headers = [(k.decode(), v.decode()) for k, v in scope["headers"] if k.lower() not in (b"host",)]
        url = self.upstream + scope["path"] + (f"?{scope['query_string'].decode()}" if scope["query_string"] else "")
        async with httpx.AsyncClient(timeout=120) as c:
            r = await c.request(scope["method"], url, headers=headers, content=body)
        out = [(k.encode(), v.encode()) for k, v in r.headers.items()
               if k.lower() not in ("content-length", "transfer-encoding", "content-encoding", "connection")]
        await send({"type": "http.response.start", "status": r.status_code, "headers": out})
        await send({"type": "http.response.body", "body": r.content})


@pytest.fixture
def stub(server):
    """Start a ``Stub`` (by calling the fixture with its arguments) under uvicorn in a thread; its URL is
    ``stub.url``."""
    import uvicorn

    running: list[tuple[uvicorn.Server, threading.Thread]] = []

    def start(method: str, path: str, times: int, status: int, headers: dict[str, str]) -> Stub:
        app = Stub(server.url, method, path, times, status, headers)
        port = _free_port()
        srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
        thread = threading.Thread(target=srv.run, daemon=True)
        thread.start()
        running.append((srv, thread))
        deadline = time.monotonic() + 30
        while not srv.started:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        app.url = f"http://127.0.0.1:{port}"  # type: ignore[attr-defined]
        return app

    yield start
    for srv, thread in running:
        srv.should_exit = True
        thread.join(timeout=10)


def test_503_with_retry_after_is_waited_out(server, collection, stub):
    busy = stub("GET", "/v1/search", times=2, status=503, headers={"Retry-After": "1"})
    with Client(busy.url, KEY) as c:
        start = time.monotonic()
        page = c.search("comparatively modern")
        waited = time.monotonic() - start
    assert page.results[0].filename == "LJ001-0002.mp4"
    assert len(busy.answered) == 2 and len(busy.forwarded) == 1
    assert busy.answered[1] - busy.answered[0] >= 0.95 and busy.forwarded[0] - busy.answered[1] >= 0.95
    assert waited >= 1.9
    # The CLI waits the same way, and its JSON is the server's.
    busy.answered.clear()
    out = server.cli("search", "comparatively modern", "--json", url=busy.url)
    assert out.returncode == 0 and len(busy.answered) == 2, out.stderr
    assert json.loads(out.stdout)["results"][0]["filename"] == "LJ001-0002.mp4"


def test_a_busy_server_that_asks_too_much_or_stays_busy_is_an_error(server, collection, stub):
    far = stub("GET", "/v1/search", times=1, status=503, headers={"Retry-After": "3600"})
    with Client(far.url, KEY) as c, pytest.raises(ServiceBusy) as exc:
        c.search("comparatively modern")
    assert exc.value.retry_after == 3600 and exc.value.detail.startswith("the service is busy")
    assert len(far.answered) == 1 and not far.forwarded  # not waited out for an hour: raised at once
    limited = stub("GET", "/v1/search", times=10, status=429, headers={"Retry-After": "0"})
    with Client(limited.url, KEY, retry=RetryPolicy(retries=2)) as c, pytest.raises(RateLimited) as limited_exc:
        c.search("comparatively modern")
    assert limited_exc.value.status == 429 and len(limited.answered) == 3  # bounded: 1 + 2 retries


def test_an_upload_that_fails_transiently_is_sent_again_whole(server, collection, stub):
    flaky = stub("POST", "/v1/videos", times=1, status=502, headers={})
    path = server.clips / "LJ001-0011.mp4"
    events: list[tuple[int, int | None]] = []
    with Client(flaky.url, KEY, retry=RetryPolicy(backoff_s=0.1)) as c:
        accepted = c.upload(path, progress=lambda s, t: events.append((s, t)))
    assert accepted.duplicate and accepted.video_id == collection.video_ids["LJ001-0011"]
    size = path.stat().st_size
    assert [e for e in events if e[0] in (0, size)] == [(0, size), (size, size)] * 2  # twice, from the start
    assert len(flaky.answered) == 1 and len(flaky.forwarded) == 1


# ------------------------------------------------------------------------------------------------ README examples
def _readme_blocks(title: str, lang: str) -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    start = text.index(f"\n## {title}\n")
    section = text[start:text.find("\n## ", start + 1)]
    return re.findall(rf"```{lang}\n(.*?)```", section, re.S)


def test_readme_examples_run(server, collection, tmp_path):
    """The code blocks of "Use from Python" and "Command line against a server", run as written against the test
    server (its URL and key in the environment, as the examples say). In the shell block the server-side folder
    is the server's allowed root, and the job and video ids are the ones the block's own commands created."""
    (tmp_path / "videos").mkdir()
    speech_video(MEDIA / "speech" / "ljspeech" / "LJ001-0016.wav", tmp_path / "videos" / "bread.mp4")
    env = {**{k: v for k, v in server.env.items() if k != "SAVE_SEARCH_API_KEYS"},
           "SAVE_SEARCH_SERVER": server.url, "SAVE_SEARCH_API_KEY": KEY, "PYTHONPATH": str(ROOT), "COLUMNS": "200"}
    python_blocks = _readme_blocks("Use from Python", "python")
    assert len(python_blocks) == 2
    for block in python_blocks:
        out = subprocess.run([sys.executable, "-c", block], cwd=tmp_path, env=env, capture_output=True, text=True,
                             timeout=600)
        assert out.returncode == 0, f"{block}\n{out.stderr[-3000:]}"
    assert "404 no video with id 1000000000000" in subprocess.run(
        [sys.executable, "-c", python_blocks[0]], cwd=tmp_path, env=env, capture_output=True, text=True).stdout
    (shell,) = _readme_blocks("Command line against a server", "bash")
    with server.client() as c:
        video_id = str(c.upload(tmp_path / "videos" / "bread.mp4").video_id)  # indexed by the Python example
    job_id = None
    for line in shell.splitlines():
        command = line.split("  #")[0].strip()
        if command.startswith("export "):
            assert "SAVE_SEARCH_SERVER=" in command and "SAVE_SEARCH_API_KEY=" in command
            continue
        argv = shlex.split(command)
        assert argv[0] == "save-search", command
        argv = [str(server.clips) if a == "/srv/media/talks" else a for a in argv[1:]]
        if argv[0] == "jobs":
            argv[1] = job_id
        if argv[0] == "videos":
            argv[2] = video_id
        out = subprocess.run([sys.executable, "-m", "app.cli", *argv], cwd=tmp_path, env=env, capture_output=True,
                             text=True, timeout=600)
        assert out.returncode == 0, f"{command}\n{out.stderr[-3000:]}"
        if "--remote" in argv:
            job_id = re.match(r"job (\d+):", out.stdout).group(1)
        if argv[:2] == ["videos", "delete"]:
            assert out.stdout.strip() == f"deleted video {video_id}"


# ---------------------------------------------------------------------------------------------- no server needed
def test_local_media_suffixes_match_the_servers():
    from app.cli.remote import MEDIA_SUFFIXES
    from indexer.ingest.jobs import MEDIA_SUFFIXES as SERVER_SUFFIXES

    assert MEDIA_SUFFIXES == SERVER_SUFFIXES
