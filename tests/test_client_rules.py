"""The client's rules without a server (httpx's mock transport): what is retried and how long it waits, the upload
body on the wire, and the errors. The same behaviour against the real server is in tests/test_client.py."""

from __future__ import annotations

import asyncio
import email.utils
import io
import time

import httpx
import pytest
from python_multipart.multipart import MultipartParser, parse_options_header

from app.client import (
    APIError,
    AsyncClient,
    Client,
    ConnectionFailed,
    InvalidRequest,
    RetryPolicy,
    ServerError,
    ServiceBusy,
    UploadTooSlow,
)
from app.client._common import UploadBody, open_upload, retry_after_s

SEARCH_OK = {"query": "q", "mode": "speech", "results": [], "next_page_token": None}


def _client(handler, **kwargs) -> tuple[Client, list[float]]:
    client = Client("http://save.test", "k", transport=httpx.MockTransport(handler), **kwargs)
    slept: list[float] = []
    client._sleep = slept.append  # no real waiting in these tests
    return client, slept


def test_503_is_retried_after_retry_after_and_the_key_is_sent():
    seen = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("authorization"))
        if len(seen) < 3:
            return httpx.Response(503, json={"detail": "busy"}, headers={"Retry-After": "2"})
        return httpx.Response(200, json=SEARCH_OK)

    client, slept = _client(handler)
    assert client.search("q").mode == "speech"
    assert slept == [2.0, 2.0] and seen == ["Bearer k"] * 3


def test_retry_after_as_an_http_date_and_the_bounds():
    when = email.utils.format_datetime(email.utils.localtime().fromtimestamp(time.time() + 5), usegmt=False)
    assert 3.5 <= retry_after_s(httpx.Response(503, headers={"Retry-After": when})) <= 5.5
    assert retry_after_s(httpx.Response(503, headers={"Retry-After": "soon"})) is None

    client, slept = _client(lambda r: httpx.Response(429, json={"detail": "slow down"}),
                            retry=RetryPolicy(retries=2, backoff_s=0.5))
    with pytest.raises(APIError) as exc:  # no Retry-After: the doubling backoff, then the error
        client.search("q")
    assert exc.value.status == 429 and exc.value.detail == "slow down" and slept == [0.5, 1.0]

    client, slept = _client(lambda r: httpx.Response(503, json={"detail": "busy"}, headers={"Retry-After": "120"}))
    with pytest.raises(ServiceBusy) as busy:  # longer than max_wait_s: raised at once
        client.search("q")
    assert busy.value.retry_after == 120 and slept == []


def test_a_refused_connection_is_retried_then_a_clear_error():
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request.url.path)
        raise httpx.ConnectError("[Errno 111] Connection refused")

    client, slept = _client(handler, retry=RetryPolicy(retries=3, backoff_s=0.25))
    with pytest.raises(ConnectionFailed) as exc:
        client.health()
    assert len(calls) == 4 and slept == [0.25, 0.5, 1.0]
    assert str(exc.value) == "cannot reach the save-search server at http://save.test: [Errno 111] Connection refused"


def test_a_read_timeout_or_a_dropped_write_is_not_retried():
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request.method)
        raise httpx.ReadTimeout("slow") if request.method == "GET" else httpx.RemoteProtocolError("dropped")

    client, _ = _client(handler)
    with pytest.raises(Exception, match="did not answer in time"):
        client.search("q")
    with pytest.raises(ConnectionFailed):
        client.create_ingest_job(["/media/a.mp4"])  # not idempotent: the job may exist
    assert calls == ["GET", "POST"]


def test_errors_carry_the_api_detail_or_the_text_body():
    client, _ = _client(lambda r: httpx.Response(422, json={"detail": "k: Input should be less than or equal to 100"}))
    with pytest.raises(InvalidRequest) as exc:
        client.search("q", k=1000)
    assert str(exc.value) == "422 Unprocessable Entity: k: Input should be less than or equal to 100"
    client, _ = _client(lambda r: httpx.Response(502, text="<html>bad gateway</html>"))
    with pytest.raises(ServerError) as bad:
        client.get_video(1)
    assert bad.value.status == 502 and bad.value.body == "<html>bad gateway</html>"


def _parse_upload(request: httpx.Request) -> tuple[str, bytes]:
    _, options = parse_options_header(request.headers["content-type"])
    parts: dict[str, bytes] = {"data": b"", "headers": b""}
    parser = MultipartParser(options[b"boundary"], {
        "on_part_data": lambda d, s, e: parts.__setitem__("data", parts["data"] + d[s:e]),
        "on_header_value": lambda d, s, e: parts.__setitem__("headers", parts["headers"] + d[s:e])})
    body = request.read()
    assert int(request.headers["content-length"]) == len(body)
    parser.write(body)
    parser.finalize()
    return parts["headers"].decode(), parts["data"]


def test_an_upload_body_is_exact_multipart_and_a_transient_failure_sends_it_again_whole(tmp_path):
    video = tmp_path / 'clip "one".mp4'
    video.write_bytes(bytes(range(256)) * 9000)  # 2.3 MB: three blocks
    received = []

    def handler(request: httpx.Request) -> httpx.Response:
        received.append(_parse_upload(request))
        if len(received) == 1:
            return httpx.Response(408, json={"detail": "the upload was too slow: no data arrived in time"})
        return httpx.Response(202, json={"video_id": 7, "job_id": 3, "status": "queued", "duplicate": False})

    client, slept = _client(handler)
    events: list[tuple[int, int | None]] = []
    accepted = client.upload(video, progress=lambda s, t: events.append((s, t)))
    assert accepted.video_id == 7 and len(received) == 2 and slept == [0.5]
    size = video.stat().st_size
    for headers, data in received:
        assert data == video.read_bytes() and 'filename="clip %22one%22.mp4"' in headers
    assert [s for s, _ in events] == [0, 1 << 20, 2 << 20, size] * 2 and {t for _, t in events} == {size}


def test_a_file_object_that_cannot_seek_is_sent_once_without_a_length(tmp_path):
    class Pipe(io.RawIOBase):
        def __init__(self) -> None:
            self.left = b"x" * 5000

        def readable(self) -> bool:
            return True

        def readinto(self, b) -> int:
            n = min(len(b), len(self.left))
            b[:n], self.left = self.left[:n], self.left[n:]
            return n

    body, owned = open_upload(io.BufferedReader(Pipe()), "live.mp4")
    assert not owned and body.size is None and not body.can_retry and "Content-Length" not in body.headers
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request.read())
        return httpx.Response(408, json={"detail": "the upload was too slow"})

    client, slept = _client(handler)
    with pytest.raises(UploadTooSlow):
        client.upload(io.BufferedReader(Pipe()), "live.mp4")
    assert len(calls) == 1 and slept == [] and b"x" * 5000 in calls[0]


def test_upload_body_starts_where_the_file_object_stands():
    f = io.BytesIO(b"headerVIDEO")
    f.seek(6)
    body, _ = open_upload(f, None)
    assert isinstance(body, UploadBody) and body.size == 5 and body.filename == "upload"
    assert b"".join(body.chunks(None)).split(b"\r\n\r\n", 1)[1].startswith(b"VIDEO\r\n--")


def test_async_client_waits_and_pages():
    result = {"video_id": 1, "filename": "a.mp4", "score": 0.9, "visual_score": None, "speech_score": 0.9,
              "duration": 3.0, "thumbnail_url": "/v1/videos/1/thumbnail", "video_url": "/v1/videos/1/media",
              "transcript": "a", "segment": None}
    pages = {None: {**SEARCH_OK, "results": [result], "next_page_token": "t1"},
             "t1": {**SEARCH_OK, "results": [{**result, "video_id": 2}], "next_page_token": None}}
    seen = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.params.get("page_token"))
        if len(seen) == 1:
            return httpx.Response(503, json={"detail": "busy"}, headers={"Retry-After": "1"})
        return httpx.Response(200, json=pages[request.url.params.get("page_token")])

    async def main() -> tuple[list[int], list[float]]:
        client = AsyncClient("http://save.test", transport=httpx.MockTransport(handler))
        slept: list[float] = []

        async def sleep(s: float) -> None:
            slept.append(s)

        client._sleep = sleep
        async with client:
            ids = [r.video_id async for r in client.search_results("q", page_size=1)]
        return ids, slept

    ids, slept = asyncio.run(main())
    assert ids == [1, 2] and slept == [1.0] and seen == [None, None, "t1"]


def test_base_url_and_key_from_the_environment(monkeypatch):
    monkeypatch.setenv("SAVE_SEARCH_SERVER", "search.example:8000/")
    monkeypatch.setenv("SAVE_SEARCH_API_KEY", "from-env")
    seen = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append((str(request.url), request.headers.get("authorization")))
        return httpx.Response(200, json={"status": "ok"})

    client = Client(transport=httpx.MockTransport(handler))
    assert client.base_url == "http://search.example:8000" and client.health().status == "ok"
    assert seen == [("http://search.example:8000/healthz", "Bearer from-env")]
    assert client.media_url(5) == "http://search.example:8000/v1/videos/5/media"
    monkeypatch.delenv("SAVE_SEARCH_SERVER")
    assert Client(api_key="explicit").base_url == "http://127.0.0.1:8000"


def test_tls_only_for_https_servers():
    import ssl

    from app.client._common import tls_verify

    assert tls_verify("https://search.example") is True  # httpx's default: certifi's CAs, certificates checked
    bare = tls_verify("http://127.0.0.1:8000")  # never used for plain http; would trust nothing if it were
    assert isinstance(bare, ssl.SSLContext) and bare.verify_mode == ssl.CERT_REQUIRED and bare.check_hostname
    assert bare.cert_store_stats()["x509_ca"] == 0
