"""Bulk ingest from URLs and buckets (issue 17). URLs: a real HTTP server of the test's own on 127.0.0.1 (no
internet here), so the SSRF rules are exercised for real: loopback is refused unless an allowed network lists it,
a redirect to a metadata or private address is refused at its hop, the address checked is the one connected to (one
DNS resolution per request), and the upload limits hold (size, type). Buckets: moto's standalone S3 server,
listed page by page, through the command line and the API. The worker runs in this process with a silent
transcriber: these tests are about where bytes come from and go."""

from __future__ import annotations

import ipaddress
import json
import socket
import threading
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import boto3
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from typer.testing import CliRunner

from app.cli import app as cli
from app.main import create_app
from indexer.errors import AccessError, BadInputError, TransientError
from indexer.ingest import jobs as jobs_module
from indexer.ingest.remote import address_problem, fetch_url
from indexer.ingest.runtimes import IngestRuntimes
from indexer.ingest.worker import Worker
from indexer.services import Services
from indexer.settings import Settings
from indexer.storage.db import Video
from indexer.videos import delete_video
from tests.helpers import Silent, dead_endpoint, objects
from tests.media_fixtures import MEDIA, speech_video

pytestmark = pytest.mark.skipif(not MEDIA.exists(), reason=f"no test media at {MEDIA}")

LOOPBACK = ["127.0.0.0/8"]


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict[str, bytes]:
    root = tmp_path_factory.mktemp("url-clips")
    out = {}
    for name, color in (("LJ001-0014", (40, 90, 160)), ("LJ001-0015", (160, 40, 90))):
        out[name] = speech_video(MEDIA / "speech" / "ljspeech" / f"{name}.wav", root / f"{name}.mp4",
                                 color=color).read_bytes()
    return out


class Site:
    """The test's own web server: what it serves, and every request it saw (path, Host header)."""

    def __init__(self, clips: dict[str, bytes]) -> None:
        self.clips = clips
        self.seen: list[tuple[str, str]] = []
        site = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                site.seen.append((self.path, self.headers.get("Host", "")))
                site.answer(self)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"

    def hits(self) -> Counter:
        return Counter(path for path, _ in self.seen)

    def answer(self, h: BaseHTTPRequestHandler) -> None:
        path = h.path.split("?")[0]
        redirects = {"/to-metadata": "http://169.254.169.254/latest/meta-data/iam/",
                     "/to-private": "http://10.0.0.1/clip.mp4",
                     "/to-ipv6-loopback": f"http://[::1]:{self.port}/a.mp4",
                     "/to-clip": "/a.mp4", "/loop": "/loop",
                     "/to-name": self.url("/a.mp4", host="videos.example")}
        if path in redirects:
            h.send_response(302)
            h.send_header("Location", redirects[path])
            h.send_header("Content-Length", "0")
            h.end_headers()
            return
        bodies = {"/a.mp4": self.clips["LJ001-0014"], "/same-as-a": self.clips["LJ001-0014"],
                  "/b.mp4": self.clips["LJ001-0015"]}
        if path in bodies:
            h.send_response(200)
            h.send_header("Content-Type", "video/mp4" if path.endswith(".mp4") else "application/octet-stream")
            h.send_header("Content-Length", str(len(bodies[path])))
            h.end_headers()
            h.wfile.write(bodies[path])
        elif path == "/unsized.mp4":  # no Content-Length: only counting the bytes can stop it
            h.send_response(200)
            h.send_header("Content-Type", "video/mp4")
            h.send_header("Connection", "close")
            h.end_headers()
            h.wfile.write(self.clips["LJ001-0015"])
        elif path == "/page":
            body = b"<html><body>a video page</body></html>"
            h.send_response(200)
            h.send_header("Content-Type", "text/html; charset=utf-8")
            h.send_header("Content-Length", str(len(body)))
            h.end_headers()
            h.wfile.write(body)
        elif path == "/busy.mp4":
            h.send_response(503)
            h.send_header("Content-Length", "0")
            h.end_headers()
        else:
            h.send_response(404)
            h.send_header("Content-Length", "0")
            h.end_headers()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def site(clips) -> Iterator[Site]:
    s = Site(clips)
    yield s
    s.close()


# ------------------------------------------------------------------------------------------ the SSRF rules
@pytest.mark.parametrize(("address", "why"), [
    ("127.0.0.1", "loopback"), ("::1", "loopback"), ("10.1.2.3", "private"), ("172.16.0.1", "private"),
    ("192.168.1.1", "private"), ("169.254.169.254", "metadata"), ("fd00:ec2::254", "metadata"),
    ("100.100.100.200", "metadata"), ("169.254.10.1", "link-local"), ("fe80::1", "link-local"),
    ("fc00::1", "private"), ("0.0.0.0", "unspecified"), ("224.0.0.1", "multicast"), ("100.64.0.1", "public"),
    ("::ffff:127.0.0.1", "loopback"), ("::ffff:10.0.0.1", "private"), ("64:ff9b::a9fe:a9fe", "metadata"),
    ("2002:a00:1::", "private"), ("240.0.0.1", "private")])
def test_non_public_addresses_are_refused(address, why):
    assert why in (address_problem(ipaddress.ip_address(address)) or "")


@pytest.mark.parametrize("address", ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "151.101.1.69"])
def test_public_addresses_are_allowed(address):
    assert address_problem(ipaddress.ip_address(address)) is None


def test_an_allowed_network_opens_only_itself():
    allowed = [ipaddress.ip_network("10.2.0.0/16")]
    assert address_problem(ipaddress.ip_address("10.2.3.4"), allowed) is None
    assert address_problem(ipaddress.ip_address("10.3.0.1"), allowed) == "a private address"
    assert address_problem(ipaddress.ip_address("169.254.169.254"), allowed) == "a cloud metadata address"


def test_loopback_is_refused_without_the_setting_and_never_contacted(site, tmp_path):
    with pytest.raises(AccessError) as refused:
        fetch_url(site.url("/a.mp4"), tmp_path / "a.mp4", max_bytes=10**8)
    assert refused.value.kind == "forbidden_address" and refused.value.permanent
    assert "loopback" in refused.value.reason and "SAVE_SEARCH_URL_ALLOWED_NETWORKS" in refused.value.reason
    assert site.seen == [] and not (tmp_path / "a.mp4").exists()


def test_an_allowed_network_is_fetched(site, clips, tmp_path):
    got = fetch_url(site.url("/a.mp4"), tmp_path / "a.mp4", max_bytes=10**8, allowed=LOOPBACK)
    assert got.path.read_bytes() == clips["LJ001-0014"] and got.content_type == "video/mp4"
    got = fetch_url(site.url("/to-clip"), tmp_path / "b.mp4", max_bytes=10**8, allowed=LOOPBACK)
    assert got.url == site.url("/a.mp4") and got.size == len(clips["LJ001-0014"])


@pytest.mark.parametrize(("path", "why"), [("/to-metadata", "metadata"), ("/to-private", "private"),
                                           ("/to-ipv6-loopback", "loopback")])
def test_every_redirect_is_checked_again(site, tmp_path, path, why):
    """The first hop is allowed (127.0.0.0/8), its redirect is not: refused before any connection to it."""
    with pytest.raises(AccessError) as refused:
        fetch_url(site.url(path), tmp_path / "x.mp4", max_bytes=10**8, allowed=LOOPBACK, timeout_s=5)
    assert refused.value.kind == "forbidden_address" and why in refused.value.reason
    assert site.hits() == Counter({path: 1}) and not (tmp_path / "x.mp4").exists()


def test_redirect_loops_end(site, tmp_path):
    with pytest.raises(AccessError) as loop:
        fetch_url(site.url("/loop"), tmp_path / "x.mp4", max_bytes=10**8, allowed=LOOPBACK)
    assert loop.value.kind == "too_many_redirects" and site.hits()["/loop"] == 6


def test_dns_is_resolved_once_and_the_checked_address_is_connected(site, clips, tmp_path, monkeypatch):
    """``videos.example`` answers 127.0.0.1 (allowed) to the first lookup and 10.0.0.1 to any later one (DNS
    rebinding): one lookup per request, and the connection goes to the address that was checked."""
    real = socket.getaddrinfo
    lookups = []

    def rebinding(host, port, *args, **kwargs):
        if host != "videos.example":
            return real(host, port, *args, **kwargs)
        lookups.append(host)
        address = "127.0.0.1" if len(lookups) == 1 else "10.0.0.1"
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, port))]

    monkeypatch.setattr(socket, "getaddrinfo", rebinding)
    got = fetch_url(site.url("/to-name"), tmp_path / "a.mp4", max_bytes=10**8, allowed=LOOPBACK, timeout_s=5)
    assert got.path.read_bytes() == clips["LJ001-0014"]
    assert lookups == ["videos.example"]  # the redirect's host, looked up once
    assert site.seen[-1] == ("/a.mp4", f"videos.example:{site.port}")  # its name, our checked address
    with pytest.raises(AccessError) as rebound:  # a new request looks up again, and checks again
        fetch_url(site.url("/a.mp4", host="videos.example"), tmp_path / "b.mp4", max_bytes=10**8, allowed=LOOPBACK)
    assert "private" in rebound.value.reason and len(lookups) == 2


def test_the_upload_limits_hold(site, tmp_path):
    for path in ("/a.mp4", "/unsized.mp4"):  # declared too large, and counted while it arrives
        with pytest.raises(BadInputError) as too_large:
            fetch_url(site.url(path), tmp_path / "x.mp4", max_bytes=1000, allowed=LOOPBACK)
        assert too_large.value.kind == "too_large"
    with pytest.raises(BadInputError) as page:
        fetch_url(site.url("/page"), tmp_path / "x.mp4", max_bytes=10**8, allowed=LOOPBACK)
    assert page.value.kind == "not_media"
    with pytest.raises(AccessError) as missing:
        fetch_url(site.url("/nothing.mp4"), tmp_path / "x.mp4", max_bytes=10**8, allowed=LOOPBACK)
    assert missing.value.kind == "not_found" and missing.value.permanent
    with pytest.raises(TransientError):
        fetch_url(site.url("/busy.mp4"), tmp_path / "x.mp4", max_bytes=10**8, allowed=LOOPBACK)
    with pytest.raises(AccessError, match="only http"):
        fetch_url("file:///etc/passwd", tmp_path / "x.mp4", max_bytes=10**8)


# ------------------------------------------------------------------------------------- URL ingest, end to end
def ingest(services: Services, sources: list[str], owner: str = "url-worker") -> list:
    worker = Worker(services, owner=owner, runtimes=IngestRuntimes(services.settings, transcriber=Silent()))
    job_id = worker.queue.enqueue("bulk", sources)
    worker.startup()
    try:
        while worker.run_once():
            pass
    finally:
        worker.shutdown()
    return worker.queue.summary(job_id).items


def test_url_ingest_into_object_storage(site, bucket, tmp_path):
    home = tmp_path / "home"
    services = Services(Settings(home=home, model=str(home / "none"), ocr=False, media_uri=f"s3://{bucket}/m",
                                 url_allowed_networks=LOOPBACK))
    items = ingest(services, [site.url("/a.mp4"), site.url("/same-as-a"), site.url("/page"),
                              site.url("/to-metadata"), site.url("/b.mp4?token=1")])
    outcome = [(i.filename, i.status, i.error_kind) for i in items]
    assert outcome == [("a.mp4", "done", None), ("same-as-a", "done", None), ("page", "failed", "not_media"),
                       ("to-metadata", "failed", "forbidden_address"), ("b.mp4", "done", None)], outcome
    assert items[0].video_id == items[1].video_id != items[4].video_id  # deduplicated by content hash
    with services.sessions() as s:
        videos = {v.id: v for v in s.scalars(select(Video))}
    assert len(videos) == 2
    for v in videos.values():  # a copy in the media store, named by content hash: a URL can change or expire
        assert v.source_path == f"s3://{bucket}/m/uploads/{v.content_hash}.mp4", v.source_path
    assert set(objects(bucket)) == {f"m/{kind}/{v.content_hash}.{ext}" for v in videos.values()
                                    for kind, ext in (("uploads", "mp4"), ("thumbnails", "jpg"))}
    assert not (home / "media").exists() and not any((home / "work").iterdir())
    assert delete_video(services, items[0].video_id)
    assert len(objects(bucket)) == 2  # the other video's copy and thumbnail


def test_url_ingest_refuses_loopback_without_the_setting(site, tmp_path):
    home = tmp_path / "home"
    services = Services(Settings(home=home, model=str(home / "none"), ocr=False))
    [item] = ingest(services, [site.url("/a.mp4")])
    assert (item.status, item.error_kind, item.attempts) == ("failed", "forbidden_address", 1)
    assert "loopback" in item.error and site.seen == []


# ----------------------------------------------------------------------------------------- bucket ingest
@pytest.fixture
def user_bucket(bucket, clips) -> str:
    s3 = boto3.client("s3")
    for key, clip in (("clips/a.mp4", "LJ001-0014"), ("clips/sub/b.MP4", "LJ001-0015"),
                      ("clips/sub/c.mov", "LJ001-0014")):
        s3.put_object(Bucket=bucket, Key=key, Body=clips[clip])
    s3.put_object(Bucket=bucket, Key="clips/notes.txt", Body=b"not a video")
    s3.put_object(Bucket=bucket, Key="clipsX/d.mp4", Body=b"x")
    s3.put_object(Bucket=bucket, Key="other/e.mp4", Body=b"x")
    return bucket


def cli_ingest(home: Path, monkeypatch, *args: str) -> list[dict]:
    monkeypatch.setenv("SAVE_SEARCH_HOME", str(home))
    result = CliRunner().invoke(cli, ["ingest", *args, "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return [json.loads(line) for line in result.output.splitlines() if line.startswith("{")]


def test_bucket_ingest_from_the_command_line(user_bucket, tmp_path, monkeypatch):
    monkeypatch.setattr(jobs_module, "LIST_PAGE_SIZE", 1)  # one object per listing request: pagination for real
    home = tmp_path / "home"
    rows = cli_ingest(home, monkeypatch, f"s3://{user_bucket}/clips", "--recursive")
    assert [r["path"] for r in rows] == [f"s3://{user_bucket}/clips/{k}" for k in ("a.mp4", "sub/b.MP4",
                                                                                     "sub/c.mov")]
    assert {r["status"] for r in rows} == {"queued"}
    rows = cli_ingest(home, monkeypatch, f"s3://{user_bucket}/clips/")  # not recursive: what is directly in it
    assert [r["path"] for r in rows] == [f"s3://{user_bucket}/clips/a.mp4"]
    rows = cli_ingest(home, monkeypatch, f"s3://{user_bucket}/other/e.mp4")  # one object
    assert [r["path"] for r in rows] == [f"s3://{user_bucket}/other/e.mp4"]

    services = Services(Settings(home=home, model=str(home / "none"), ocr=False))  # media stay local
    worker = Worker(services, owner="bucket-worker", runtimes=IngestRuntimes(services.settings, transcriber=Silent()))
    worker.startup()
    try:
        while worker.run_once():
            pass
    finally:
        worker.shutdown()
    with services.sessions() as s:
        videos = list(s.scalars(select(Video).order_by(Video.id)))
    # a.mp4 and c.mov are the same bytes: one video; e.mp4 is not a video
    assert sorted(v.source_path for v in videos) == [f"s3://{user_bucket}/clips/a.mp4",
                                                     f"s3://{user_bucket}/clips/sub/b.MP4"]
    for v in videos:  # users' objects are referenced, never copied, and never deleted with the video
        assert delete_video(services, v.id)
    assert {"clips/a.mp4", "clips/sub/b.MP4"} <= set(objects(user_bucket))


def test_bucket_and_url_sources_through_the_api(user_bucket, site, tmp_path):
    home = tmp_path / "home"
    settings = Settings(home=home, model=str(home / "none"), ocr=False)
    with TestClient(create_app(settings, embedded_worker=False)) as c:
        r = c.post("/v1/ingest-jobs", json={"paths": [f"s3://{user_bucket}/clips"]})
        assert r.status_code == 403 and "SAVE_SEARCH_ALLOWED_BUCKETS" in r.json()["detail"]
        r = c.post("/v1/ingest-jobs", json={"paths": ["/srv/videos"]})
        assert r.status_code == 403 and "SAVE_SEARCH_ALLOWED_ROOTS" in r.json()["detail"]
        for bad, why in (("ftp://example.com/a.mp4", "http"), ("http:///a.mp4", "no host"),
                         ("https://example.com/a b.mp4", "space"), ("s3://No_Such/x", "bucket name")):
            r = c.post("/v1/ingest-jobs", json={"paths": [bad]})
            assert r.status_code == 422 and why in r.json()["detail"], (bad, r.json())
        r = c.post("/v1/ingest-jobs", json={"paths": [site.url("/a.mp4"), "https://videos.example.com/talk.webm"]})
        assert r.status_code == 202, r.text
        assert [(i["path"], i["filename"], i["status"]) for i in r.json()["items"]] == [
            (site.url("/a.mp4"), "a.mp4", "queued"), ("https://videos.example.com/talk.webm", "talk.webm", "queued")]
    allowed = Settings(home=home, model=str(home / "none"), ocr=False,
                       allowed_buckets=[f"s3://{user_bucket}/clips"])
    with TestClient(create_app(allowed, embedded_worker=False)) as c:
        r = c.post("/v1/ingest-jobs", json={"paths": [f"s3://{user_bucket}/clips", f"s3://{user_bucket}/clipsX",
                                                      f"s3://{user_bucket}/other/e.mp4"], "recursive": True})
        assert r.status_code == 202, r.text
        items = [(i["path"].removeprefix(f"s3://{user_bucket}/"), i["status"], i["error_kind"])
                 for i in r.json()["items"]]
        assert items == [("clips/a.mp4", "queued", None), ("clips/sub/b.MP4", "queued", None),
                         ("clips/sub/c.mov", "queued", None), ("clipsX", "failed", "outside_allowed_buckets"),
                         ("other/e.mp4", "failed", "outside_allowed_buckets")]


def test_a_bucket_that_cannot_be_listed(tmp_path, s3_env, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", dead_endpoint())
    settings = Settings(home=tmp_path, model=str(tmp_path / "none"), allowed_buckets=["s3://videos"])
    with TestClient(create_app(settings, embedded_worker=False)) as c:
        r = c.post("/v1/ingest-jobs", json={"paths": ["s3://videos/clips"]})
        assert r.status_code == 503 and r.headers["retry-after"]
        assert c.get("/readyz").json()["queue_depth"] == 0  # no job was made
