"""Issue 12, each defect reproduced through the real app with httpx (TestClient): no 500 from any input, no
resource use before the key rules, signed URLs that cannot open another video, bounded metrics, jobs that
finish. Speech mode (no visual weights), real SQLite or PostgreSQL; no worker runs unless a test starts one."""

from __future__ import annotations

import base64
import json
import os
import time
import urllib.parse
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from indexer.services import Services
from indexer.settings import Settings
from indexer.storage.db import Job, JobItem, Video

KEY = {"Authorization": "Bearer read-key"}


@pytest.fixture(scope="module")
def services(tmp_path_factory) -> Services:
    """Models and the database loaded once; each test builds its app (its own settings) around them."""
    home = tmp_path_factory.mktemp("hardening-home")
    return Services(Settings(home=home, model=str(home / "no-visual-model")))


def app_client(services: Services, **settings) -> TestClient:
    home = services.settings.home
    return TestClient(create_app(Settings(home=home, model=str(home / "no-visual-model"), **settings),
                                 embedded_worker=False, services=services))


@pytest.fixture
def client(services) -> Iterator[TestClient]:
    with app_client(services, allowed_roots=[services.settings.home / "roots"]) as c:
        yield c


def add_video(services: Services, payload: bytes, name: str = "clip.mp4", status: str = "indexed") -> int:
    """A video row with a real media file (as a committed ingest leaves it), without running the worker."""
    folder = services.settings.media_dir / "uploads"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{uuid.uuid4().hex}.mp4"
    path.write_bytes(payload)
    with services.sessions.begin() as s:
        video = Video(content_hash=uuid.uuid4().hex + uuid.uuid4().hex, filename=name, source_path=str(path),
                      size_bytes=len(payload), duration_s=1.0, has_audio=False, transcript="", model_mode="speech",
                      status=status)
        s.add(video)
        s.flush()
        return video.id


# ---------------------------------------------------------------------------------------------- 3, 5, 11: URLs
def test_signed_url_does_not_open_a_video_that_reuses_the_id(services):
    """SQLite hands a deleted video's id to the next one: the old URL must not open the new, different video."""
    with app_client(services, api_keys=["read-key"], read_requires_key=True) as c:
        old = add_video(services, b"old video bytes")
        url = c.get(f"/v1/videos/{old}", headers=KEY).json()["video_url"]
        assert c.get(url).content == b"old video bytes"
        assert c.delete(f"/v1/videos/{old}", headers=KEY).status_code == 204
        new = add_video(services, b"another user's video")
        assert new == old  # the id really is reused
        assert c.get(url).status_code == 401


def test_signed_url_lifetime_is_the_ttl_to_the_second(services):
    with app_client(services, api_keys=["read-key"], read_requires_key=True, media_url_ttl_s=1) as c:
        vid = add_video(services, b"short-lived")
        before = int(time.time())
        url = c.get(f"/v1/videos/{vid}", headers=KEY).json()["thumbnail_url"]
        exp = int(dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(url).query))["exp"])
        assert before + 1 <= exp <= int(time.time()) + 1  # not rounded up to minutes
        media = url.replace("/thumbnail", "/media")
        assert c.get(media).status_code == 200
        time.sleep(max(0.0, exp + 1.05 - time.time()))
        assert c.get(media).status_code == 401


@pytest.mark.parametrize("sig", ["é" * 64, "\u00ff", "０" * 64])
def test_non_ascii_signature_is_401_not_500(services, sig):
    with app_client(services, api_keys=["read-key"], read_requires_key=True) as c:
        vid = add_video(services, b"x")
        r = c.get(f"/v1/videos/{vid}/media", params={"exp": int(time.time()) + 60, "sig": sig})
        assert r.status_code == 401, r.text


def test_readyz_and_metrics_need_a_key_when_reads_do(services):
    with app_client(services, api_keys=["read-key"], read_requires_key=True) as c:
        assert c.get("/readyz").status_code == 401 and c.get("/metrics").status_code == 401
        assert c.get("/readyz", headers=KEY).status_code == 200 and c.get("/metrics", headers=KEY).status_code == 200
        assert c.get("/healthz").status_code == 200


def test_head_on_media_and_thumbnail(client, services):
    vid = add_video(services, b"0123456789")
    r = client.head(f"/v1/videos/{vid}/media")
    assert r.status_code == 200 and r.headers["content-length"] == "10" and r.content == b""
    assert client.head(f"/v1/videos/{vid}/thumbnail").status_code == 404  # no thumbnail: a reason, not a 405


# ------------------------------------------------------------------------------------------------ 6: page token
@pytest.mark.parametrize("data", [{"o": 1e400, "a": 1, "q": "x"}, {"o": 1, "a": 1e400, "q": "x"},
                                  {"o": 10**30, "a": 1, "q": "x"}, {"o": 1, "a": 2**64, "q": "x"}])
def test_page_token_with_huge_numbers_is_422(client, data):
    raw = json.dumps(data).replace("1e+400", "1e400").encode()
    token = base64.urlsafe_b64encode(raw).decode().rstrip("=")
    r = client.get("/v1/search", params={"q": "anything", "page_token": token})
    assert r.status_code == 422 and "page_token" in r.json()["detail"]


# ----------------------------------------------------------------------------------------- 2: metrics series
def test_metrics_series_do_not_grow_with_random_ids(client):
    def series() -> int:
        text = client.get("/metrics").text
        return sum(1 for line in text.splitlines() if line.startswith("save_http_request_duration_seconds_count"))

    def hit_random_ids(count: int) -> None:
        for _ in range(count):
            n = uuid.uuid4().int % 10**12 + 10**9
            client.get(f"/v1/videos/{n}")
            client.get(f"/v1/jobs/{n}")
            client.get(f"/no/such/route/{n}")

    hit_random_ids(1)  # every route/status pair of the loop below, and the scrape itself, seen once
    series()
    start = series()
    hit_random_ids(1000)
    assert series() == start
    text = client.get("/metrics").text
    assert 'route="/v1/videos/{video_id}"' in text and 'route="unmatched"' in text


def test_metrics_report_index_vectors_by_model_version(client):
    text = client.get("/metrics").text
    assert 'save_index_vectors{index="passages",model_version="all-MiniLM-L6-v2/passages"}' in text


# ---------------------------------------------------------------------------------------- 11: 500 keep-alive
def test_unexpected_error_is_a_json_500_that_keeps_the_connection(client, monkeypatch):
    """Starlette re-raises after its 500, and the server then drops the keep-alive connection: nothing may
    escape the app (TestClient raises whatever escapes)."""
    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(client.app.state.save.search, "search", broken)
    r = client.get("/v1/search", params={"q": "anything"})
    assert r.status_code == 500 and r.json() == {"detail": "internal server error (logged)"}
    assert "boom" not in r.text
    assert 'route="/v1/search",status="500"' in client.get("/metrics").text


# ------------------------------------------------------------------------------------- 4: bulk job inputs
@pytest.fixture
def roots(services) -> Path:
    root = services.settings.home / "roots"
    root.mkdir(exist_ok=True)
    return root


@pytest.mark.parametrize(("path", "reason"), [
    ("/tmp/\x00evil.mp4", "NUL"),
    ("/" + "a" * 4096, "longer than"),
    ("/tmp/" + "b" * 256 + ".mp4", "longer than"),
    ("relative/clip.mp4", "absolute"),
])
def test_unusable_ingest_paths_are_422_with_a_reason(client, path, reason):
    r = client.post("/v1/ingest-jobs", json={"paths": [path]})
    assert r.status_code == 422 and reason in r.json()["detail"], r.text


def test_lone_surrogate_in_raw_json_is_422(client):
    body = b'{"paths": ["/tmp/\\udcff.mp4"]}'
    r = client.post("/v1/ingest-jobs", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 422, r.text


def test_symlink_loop_is_a_failed_item_not_a_500(client, roots):
    loop = roots / f"loop-{uuid.uuid4().hex[:6]}.mp4"
    loop.symlink_to(loop)
    r = client.post("/v1/ingest-jobs", json={"paths": [str(loop)], "recursive": True})
    assert r.status_code == 202, r.text
    item = r.json()["items"][0]
    assert item["status"] == "failed" and item["error"]


def test_link_out_of_the_roots_does_not_reveal_its_target(client, roots, tmp_path):
    secret = tmp_path / "secret-place" / "private.mp4"
    secret.parent.mkdir()
    secret.write_bytes(b"x")
    link = roots / f"innocent-{uuid.uuid4().hex[:6]}.mp4"
    link.symlink_to(secret)
    item = client.post("/v1/ingest-jobs", json={"paths": [str(link)]}).json()["items"][0]
    assert item["error_kind"] == "outside_allowed_roots" and "secret-place" not in item["error"]
    assert os.getcwd() not in item["error"]


def test_non_utf8_name_in_a_folder_is_one_item_shown_safely(client, roots, services):
    folder = roots / f"mixed-{uuid.uuid4().hex[:6]}"
    folder.mkdir()
    (folder / "fine.mp4").write_bytes(b"not really a video")
    odd = os.fsencode(folder) + b"/caf\xe9.mp4"
    with open(odd, "wb") as f:
        f.write(b"not really a video either")
    r = client.post("/v1/ingest-jobs", json={"paths": [str(folder)], "recursive": True})
    assert r.status_code == 202, r.text
    items = {i["filename"]: i for i in r.json()["items"]}
    assert set(items) == {"fine.mp4", "caf\\xe9.mp4"} and all(i["status"] == "queued" for i in items.values())
    assert items["caf\\xe9.mp4"]["path"].endswith("/caf\\xe9.mp4")
    from indexer.names import path_from_db

    with services.sessions() as s:
        stored = s.get(JobItem, items["caf\\xe9.mp4"]["item_id"]).path
    assert os.fsencode(path_from_db(stored)) == odd  # the worker opens the very file


# --------------------------------------------------------------------------------------- 8, 11: uploads
def multipart(name: str, payload: bytes) -> dict:
    return {"files": {"file": (name, payload, "video/mp4")}}


def uploads_folder_files(services: Services) -> set[str]:
    folder = services.settings.media_dir / "uploads"
    return {p.name for p in folder.iterdir()} if folder.exists() else set()


MULTIPART = {"content-type": "multipart/form-data; boundary=b0undary"}


def raw_multipart(filename: bytes, payload: bytes, end: bool = True) -> bytes:
    """A multipart body written byte by byte (httpx would escape the odd file names these tests need)."""
    head = b'--b0undary\r\nContent-Disposition: form-data; name="file"; filename="' + filename + b'"\r\n\r\n'
    return head + payload + (b"\r\n--b0undary--\r\n" if end else b"")


def test_malformed_multipart_is_422(client):
    body = b'--b0undary\r\nContent-[Disposition: form-data; name="file"\r\n\r\nxx\r\n--b0undary--\r\n'
    r = client.post("/v1/videos", content=body, headers=MULTIPART)
    assert r.status_code == 422 and "malformed" in r.json()["detail"]


@pytest.mark.parametrize(("name", "reason"), [(b"bad\x00name.mp4", "NUL"), (b"caf\xe9.mp4", "Unicode")])
def test_odd_upload_names_are_422_and_leave_no_file(client, services, name, reason):
    before = uploads_folder_files(services)
    r = client.post("/v1/videos", content=raw_multipart(name, b"\x00" * 100), headers=MULTIPART)
    assert r.status_code == 422 and reason in r.json()["detail"], r.text
    assert uploads_folder_files(services) == before


def test_long_upload_name_keeps_its_extension():
    from app.uploads import _upload_filename

    name = _upload_filename("x" * 300 + ".mp4")
    assert len(name.encode()) == 255 and name.endswith(".mp4")
    assert _upload_filename("C:\\Users\\me\\clip.mov") == "clip.mov"


class BodyCounter:
    """Wraps an ASGI app and counts the request body bytes the app pulled from the connection."""

    def __init__(self, app) -> None:
        self.app, self.received = app, 0

    async def __call__(self, scope, receive, send) -> None:
        async def counting_receive():
            message = await receive()
            if message["type"] == "http.request":
                self.received += len(message.get("body", b""))
            return message

        await self.app(scope, counting_receive, send)


def rejecting_client(services: Services, client_addr: tuple[str, int] = ("testclient", 50000),
                     **settings) -> tuple[TestClient, BodyCounter]:
    home = services.settings.home
    app = create_app(Settings(home=home, model=str(home / "no-visual-model"), **settings), embedded_worker=False,
                     services=services)
    counter = BodyCounter(app)
    return TestClient(counter, client=client_addr), counter


@pytest.mark.parametrize(("settings", "addr", "headers", "status"), [
    ({"api_keys": ["k"]}, "testclient", {}, 401),
    ({"api_keys": ["k"]}, "testclient", {"X-API-Key": "wrong"}, 403),
    ({}, "203.0.113.7", {}, 403),  # no keys: writes from this machine only
    ({"max_size_bytes": 1_000_000}, "testclient", {}, 413),  # the declared length is over the limit
])
def test_rejected_uploads_are_not_read(services, settings, addr, headers, status):
    """The key rules and the declared length are checked before a single body byte is read (or stored)."""
    before = uploads_folder_files(services)
    client, counter = rejecting_client(services, (addr, 50000), **settings)
    with client:
        r = client.post("/v1/videos", **multipart("big.mp4", b"\x00" * 3_000_000), headers=headers)
    assert r.status_code == status, r.text
    assert counter.received == 0
    assert uploads_folder_files(services) == before


def test_body_larger_than_declared_is_cut_at_the_limit(services):
    """A chunked body (no Content-Length) or one that lies is counted as it arrives."""
    def chunks() -> Iterator[bytes]:
        boundary = b"--b0undary"
        yield boundary + b"\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.mp4\"\r\n\r\n"
        for _ in range(40):
            yield b"\x00" * 100_000

    with app_client(services, max_size_bytes=1_000_000) as small:
        before = uploads_folder_files(services)
        r = small.post("/v1/videos", content=chunks(),
                       headers={"content-type": "multipart/form-data; boundary=b0undary"})
        assert r.status_code == 413
        assert uploads_folder_files(services) == before


@pytest.mark.parametrize(("idle", "total", "gap"), [(0.3, 60.0, 1.0), (60.0, 0.5, 0.2)])
def test_slow_uploads_are_cut_off(services, idle, total, gap):
    """A client that stops sending (idle timeout) or drips (body timeout) gets a 408 and keeps nothing.
    TestClient sends a body at once, so the connection is simulated at the ASGI level."""
    import asyncio

    from fastapi import HTTPException
    from starlette.requests import Request

    from app.uploads import receive_upload

    async def dripping_receive() -> dict:
        await asyncio.sleep(gap)
        return {"type": "http.request", "body": raw_multipart(b"a.mp4", b"x", end=False), "more_body": True}

    scope = {"type": "http", "method": "POST", "path": "/v1/videos", "headers": [
        (b"content-type", MULTIPART["content-type"].encode())]}
    settings = Settings(home=services.settings.home, model="none", upload_idle_timeout_s=idle,
                        upload_body_timeout_s=total)
    before = uploads_folder_files(services)
    with pytest.raises(HTTPException) as caught:
        asyncio.run(receive_upload(Request(scope, dripping_receive), settings))
    assert caught.value.status_code == 408
    assert uploads_folder_files(services) == before


# ------------------------------------------------------------------------------------------- 9: job state
def test_deleting_the_video_being_ingested_finishes_its_job(client, services):
    vid = add_video(services, b"pending upload", status="pending")
    with services.sessions.begin() as s:
        job = Job(kind="upload", status="running")
        job.items.append(JobItem(path="/x.mp4", filename="x.mp4", status="running", video_id=vid,
                                 lease_owner="someone"))
        s.add(job)
        s.flush()
        job_id = job.id
    assert client.delete(f"/v1/videos/{vid}").status_code == 204
    job = client.get(f"/v1/jobs/{job_id}").json()
    assert job["status"] == "cancelled", job
    assert job["items"][0]["status"] == "cancelled" and job["cancelled"] == 1


# ------------------------------------------------------------------------ 8: measured on a real server process
def _process_io(pid: int) -> dict[str, int]:
    lines = Path(f"/proc/{pid}/io").read_text().splitlines()
    return {k: int(v) for k, v in (line.split(": ") for line in lines)}


def _post_declaring(base_url: str, total: int, headers: dict[str, str]) -> tuple[int, int]:
    """POST an upload that declares ``total`` bytes and keeps sending until the server answers; returns the
    status and how many body bytes went out before the answer."""
    import select
    import socket

    host, port = urllib.parse.urlsplit(base_url).netloc.split(":")
    sock = socket.create_connection((host, int(port)), timeout=10)
    extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    sock.sendall((f"POST /v1/videos HTTP/1.1\r\nHost: {host}\r\nContent-Length: {total}\r\n"
                  f"Content-Type: multipart/form-data; boundary=b0undary\r\n{extra}\r\n").encode())
    sent, block = 0, b"\x00" * (1 << 20)
    try:
        while sent < total and not select.select([sock], [], [], 0)[0]:
            sent += sock.send(block[: total - sent])
    except OSError:  # the server closed the connection: it will not read the rest
        pass
    answer = sock.recv(4096)
    sock.close()
    return int(answer.split(b" ", 2)[1]), sent


def test_rejected_200mb_upload_writes_nothing_on_a_real_server(tmp_path, monkeypatch):
    """uvicorn + the app in its own process; /proc/PID/io counts what the process wrote (files, log, sockets)."""
    from bench.load_test import running_server

    monkeypatch.setenv("SAVE_SEARCH_API_KEYS", "k")
    monkeypatch.setenv("SAVE_SEARCH_MAX_SIZE_BYTES", str(2_000_000))
    home = tmp_path / "home"
    with running_server(home) as base_url:
        pid = int((home / "pid").read_text())
        for headers, expected in (({}, 401), ({"X-API-Key": "wrong"}, 403), ({"X-API-Key": "k"}, 413)):
            before = _process_io(pid)
            status, sent = _post_declaring(base_url, 200_000_000, headers)
            after = _process_io(pid)
            written = after["wchar"] - before["wchar"]
            print(f"{expected}: body bytes sent before the answer {sent}, server wrote {written} bytes "
                  f"(to disk: {after['write_bytes'] - before['write_bytes']})")
            assert status == expected
            assert written < 16_384  # the answer and perhaps a log line; the 200 MB body would be 200 MB
    uploads = home / "media" / "uploads"
    assert not uploads.exists() or not any(uploads.iterdir())


# ------------------------------------------------------------------------------------ 7: PostgreSQL's NUL
@pytest.mark.parametrize("fresh_db_url", ["postgres"], indirect=True)
def test_postgres_nul_inputs_are_422_and_leave_no_file(db_url, tmp_path):
    """PostgreSQL text cannot hold NUL: an upload name or a query with one is refused before the database."""
    import numpy as np

    from tests.media_fixtures import speech_video

    video = speech_video(np.zeros(16000, np.float32), tmp_path / "one-second.mp4").read_bytes()  # a real video
    home = tmp_path / "pg-home"
    settings = Settings(home=home, model=str(home / "no-visual-model"), database_url=db_url)
    with TestClient(create_app(settings, embedded_worker=False)) as c:
        r = c.post("/v1/videos", content=raw_multipart(b"a\x00b.mp4", video), headers=MULTIPART)
        assert r.status_code == 422 and "NUL" in r.json()["detail"]
        uploads = home / "media" / "uploads"
        assert not uploads.exists() or not any(uploads.iterdir())
        r = c.get("/v1/search", params={"q": "bread\x00"})
        assert r.status_code == 422 and "NUL" in r.json()["detail"]
        token = base64.urlsafe_b64encode(json.dumps({"o": 1, "a": 2**64, "q": "x"}).encode()).decode()
        assert c.get("/v1/search", params={"q": "bread", "page_token": token}).status_code == 422


# ---------------------------------------------------------------------------------- search admission control
def test_searches_over_the_bound_queue_then_get_503_with_retry_after(services, monkeypatch):
    """One slot, one waiting place: of three simultaneous searches one runs, one waits and runs, one is told
    to come back (instead of all three sharing the CPU and ingest getting none)."""
    from concurrent.futures import ThreadPoolExecutor

    with app_client(services, search_concurrency=1, search_queue=1, search_queue_timeout_s=10) as c:
        state = c.app.state.save
        real_search = state.search.search
        running, peak = [0], [0]

        def slow_search(*args, **kwargs):
            running[0] += 1
            peak[0] = max(peak[0], running[0])
            time.sleep(0.6)
            running[0] -= 1
            return real_search(*args, **kwargs)

        monkeypatch.setattr(state.search, "search", slow_search)
        with ThreadPoolExecutor(3) as pool:
            futures = [pool.submit(c.get, "/v1/search", params={"q": f"query {i}"}) for i in range(3)]
            time.sleep(0.2)
            assert state.admission.waiting == 1
            responses = [f.result() for f in futures]
        statuses = sorted(r.status_code for r in responses)
        assert statuses == [200, 200, 503] and peak[0] == 1
        busy = next(r for r in responses if r.status_code == 503)
        assert int(busy.headers["retry-after"]) >= 1 and "busy" in busy.json()["detail"]
        assert "save_search_rejected_total 1.0" in c.get("/metrics").text


def test_a_search_waits_no_longer_than_the_queue_timeout(services, monkeypatch):
    from app.admission import SearchAdmission

    admission = SearchAdmission(concurrency=1, queue=4, wait_s=0.2)
    with admission.admit():
        start = time.monotonic()
        with pytest.raises(Exception) as caught, admission.admit():
            pass
        assert 0.2 <= time.monotonic() - start < 1.0
    assert caught.value.status_code == 503 and admission.waiting == 0
    with admission.admit():  # the slot is free again
        pass
