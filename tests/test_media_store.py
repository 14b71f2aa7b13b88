"""Media in object storage (issue 17), against a real S3 endpoint (moto's standalone server on a free port): the
store itself (multipart puts, presigned URLs with ranges, ownership, the orphan sweep, a store that is down), and
the service on it in one process: uploads kept in the bucket and nothing on the API's disk, refused uploads storing
nothing, presigned and proxied media with HTTP ranges, a worker reading its item from the bucket and writing the
thumbnail there, a store that is down failing the item as transient (retried, the upload kept), deletion removing
the objects. The three-process proof is tests/test_s3_multiprocess.py."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from app.main import create_app
from app.media import byte_range
from indexer.errors import AccessError, StoreUnavailableError
from indexer.ingest.runtimes import IngestRuntimes
from indexer.ingest.worker import Worker
from indexer.services import Services
from indexer.settings import Settings, SettingsError
from indexer.storage import media as media_module
from indexer.storage.db import JobItem, Video
from indexer.storage.media import THUMBNAILS, UPLOADS, LocalMediaStore, S3MediaStore, make_media_store
from tests.helpers import Silent, dead_endpoint, objects
from tests.media_fixtures import MEDIA, speech_video

pytestmark = pytest.mark.skipif(not MEDIA.exists(), reason=f"no test media at {MEDIA}")


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    return speech_video(MEDIA / "speech" / "ljspeech" / "LJ001-0014.wav",
                        tmp_path_factory.mktemp("s3-clips") / "LJ001-0014.mp4")


def s3_settings(home: Path, bucket: str, **more) -> Settings:
    return Settings(home=home, model=str(home / "no-visual-model"), ocr=False, media_uri=f"s3://{bucket}/media",
                    **more)


# ------------------------------------------------------------------------------------------------ settings
@pytest.mark.parametrize(("name", "value"), [("media_uri", "s3://Not_A_Bucket/x"), ("media_uri", "ftp://host/x"),
                                             ("allowed_buckets", "/local/folder"),
                                             ("url_allowed_networks", "10.0.0.0/33"),
                                             ("media_delivery", "sometimes"),
                                             ("media_public_endpoint", "media.example.com")])
def test_wrong_media_settings_name_their_variable(name, value, tmp_path):
    with pytest.raises(SettingsError, match=f"SAVE_SEARCH_{name.upper()}"):
        Settings(home=tmp_path, **{name: value})


def test_the_default_media_store_is_the_home_folder(tmp_path):
    store = make_media_store(Settings(home=tmp_path))
    assert isinstance(store, LocalMediaStore) and not store.remote
    assert store.ref(UPLOADS, "a.mp4") == str(tmp_path / "media" / "uploads" / "a.mp4")
    s3 = make_media_store(Settings(home=tmp_path, media_uri="s3://media-bucket/some/prefix/"))
    assert isinstance(s3, S3MediaStore) and s3.remote
    assert s3.ref(THUMBNAILS, "h.jpg") == "s3://media-bucket/some/prefix/thumbnails/h.jpg"


# ---------------------------------------------------------------------------------------------- the store
def test_multipart_put_presigned_ranges_ownership_and_delete(bucket, tmp_path, monkeypatch):
    monkeypatch.setattr(media_module, "MULTIPART_THRESHOLD", 5 * 1024**2)  # S3's smallest part
    store = make_media_store(s3_settings(tmp_path, bucket))
    payload = os.urandom(11 * 1024**2)  # three parts
    local = tmp_path / "big.mp4"
    local.write_bytes(payload)
    ref = store.ref(UPLOADS, "big.mp4")
    store.put(local, ref, "video/mp4")
    assert objects(bucket) == {"media/uploads/big.mp4": len(payload)}
    info = store.s3().head(ref)
    assert info.size == len(payload) and "-3" in info.etag  # a multipart object's ETag counts its parts
    url = store.s3().presign(ref, 60, "video/mp4")
    assert url.startswith(os.environ["AWS_ENDPOINT_URL"]) and "X-Amz-Expires=60" in url
    r = httpx.get(url, headers={"Range": "bytes=1000-1999"})
    assert r.status_code == 206 and r.content == payload[1000:2000]
    assert r.headers["content-type"] == "video/mp4"
    assert b"".join(store.s3().read_range(ref, 5, 9)) == payload[5:10]
    assert store.owns(ref) and store.owns(store.ref(THUMBNAILS, "x.jpg"))
    assert not store.owns(f"s3://{bucket}/media/elsewhere/x.mp4") and not store.owns("s3://users-bucket/a.mp4")
    assert not store.owns("/home/someone/video.mp4")
    store.delete(ref)
    assert objects(bucket) == {} and not store.exists(ref)
    with pytest.raises(AccessError) as missing:
        store.s3().download(ref, tmp_path / "copy.mp4", 10**9)
    assert missing.value.kind == "not_found" and missing.value.permanent


def test_downloads_are_bounded(bucket, tmp_path):
    store = make_media_store(s3_settings(tmp_path, bucket))
    (tmp_path / "a.mp4").write_bytes(b"x" * 5000)
    store.put(tmp_path / "a.mp4", store.ref(UPLOADS, "a.mp4"))
    with pytest.raises(Exception, match="over the maximum") as too_large:
        store.s3().download(store.ref(UPLOADS, "a.mp4"), tmp_path / "copy.mp4", 4999)
    assert too_large.value.kind == "too_large"
    assert store.s3().download(store.ref(UPLOADS, "a.mp4"), tmp_path / "copy.mp4", 5000) == 5000


@pytest.mark.parametrize("kind", ["local", "s3"])
def test_the_sweep_removes_only_old_unreferenced_files(kind, tmp_path, request):
    settings = (s3_settings(tmp_path, request.getfixturevalue("bucket")) if kind == "s3"
                else Settings(home=tmp_path))
    store = make_media_store(settings)
    refs = []
    for name in ("kept.jpg", "orphan.jpg"):
        (tmp_path / name).write_bytes(b"jpeg")
        refs.append(store.ref(THUMBNAILS, name))
        store.put(tmp_path / name, refs[-1], "image/jpeg")
    assert store.sweep(THUMBNAILS, {"kept"}, grace_s=3600) == 0  # too recent: a commit may be under way
    assert store.sweep(THUMBNAILS, {"kept"}, grace_s=0) == 1  # files are named by their video's content hash
    assert store.exists(refs[0]) and not store.exists(refs[1])


def test_a_store_that_is_down_is_transient(tmp_path, s3_env, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", dead_endpoint())
    store = make_media_store(s3_settings(tmp_path, "media-bucket"))
    (tmp_path / "a.mp4").write_bytes(b"x")
    for call in (lambda: store.put(tmp_path / "a.mp4", store.ref(UPLOADS, "a.mp4")),
                 lambda: store.s3().download("s3://media-bucket/media/uploads/a.mp4", tmp_path / "b.mp4", 10),
                 lambda: list(store.s3().listing("s3://media-bucket/media"))):
        with pytest.raises(StoreUnavailableError) as down:
            call()
        assert not down.value.permanent and down.value.kind == "store_unavailable"


@pytest.mark.parametrize(("header", "expected"), [
    (None, None), ("bytes=0-9", (0, 9)), ("bytes=10-", (10, 99)), ("bytes=-5", (95, 99)), ("bytes=90-500", (90, 99)),
    ("bytes=0-1,5-9", None), ("items=0-9", None), ("bytes=9-1", None), ("bytes=-", None)])
def test_byte_ranges(header, expected):
    assert byte_range(header, 100) == expected


@pytest.mark.parametrize("header", ["bytes=100-", "bytes=100-200", "bytes=-0"])
def test_unsatisfiable_ranges_are_416(header):
    from fastapi import HTTPException

    with pytest.raises(HTTPException) as exc:
        byte_range(header, 100)
    assert exc.value.status_code == 416 and exc.value.headers == {"Content-Range": "bytes */100"}


# ------------------------------------------------------------------------------- the service on a bucket
@pytest.fixture
def services(tmp_path, bucket) -> Iterator[Services]:
    yield Services(s3_settings(tmp_path / "home", bucket))


def client_for(services: Services, **more) -> TestClient:
    home = services.settings.home
    settings = s3_settings(home, services.settings.media.uri.removeprefix("s3://").split("/")[0], **more)
    return TestClient(create_app(settings, embedded_worker=False, services=services))


def run_worker(services: Services, owner: str = "w") -> Worker:
    worker = Worker(services, owner=owner, runtimes=IngestRuntimes(services.settings, transcriber=Silent()))
    worker.startup()
    try:
        while worker.run_once():
            pass
    finally:
        worker.shutdown()
    return worker


def local_media_files(home: Path) -> list[Path]:
    return [p for p in (home / "media").rglob("*") if p.is_file()] if (home / "media").exists() else []


def test_upload_index_serve_and_delete_on_a_bucket(services, bucket, clip):
    home = services.settings.home
    payload = clip.read_bytes()
    with client_for(services) as c:
        r = c.post("/v1/videos", files={"file": ("talk.mp4", payload, "video/mp4")})
        assert r.status_code == 202, r.text
        video_id = r.json()["video_id"]
        [(key, size)] = objects(bucket).items()
        assert key.startswith("media/uploads/") and key.endswith(".mp4") and size == len(payload)
        assert local_media_files(home) == [] and not any((home / "staging").iterdir())

        worker = run_worker(services)
        assert worker.stats["videos"] == 1
        with services.sessions() as s:
            video = s.get(Video, video_id)
            item = s.scalar(select(JobItem).where(JobItem.video_id == video_id))
        assert video.status == "indexed" and item.status == "done" and item.attempts == 1
        assert video.source_path == f"s3://{bucket}/{key}"
        assert video.thumbnail_path == f"s3://{bucket}/media/thumbnails/{video.content_hash}.jpg"
        assert set(objects(bucket)) == {key, f"media/thumbnails/{video.content_hash}.jpg"}
        assert local_media_files(home) == [] and not any((home / "work").iterdir())  # scratch copy gone

        detail = c.get(f"/v1/videos/{video_id}").json()
        for url, kind in ((detail["thumbnail_url"], "image/jpeg"), (detail["video_url"], "video/mp4")):
            assert url.startswith(os.environ["AWS_ENDPOINT_URL"]), url  # presigned: clients go to the store
            ranged = httpx.get(url, headers={"Range": "bytes=0-99"})
            assert ranged.status_code == 206 and ranged.headers["content-type"] == kind
        assert httpx.get(detail["video_url"], headers={"Range": "bytes=0-99"}).content == payload[:100]
        assert httpx.get(detail["thumbnail_url"]).content[:2] == b"\xff\xd8"  # a JPEG
        redirect = c.get(f"/v1/videos/{video_id}/media", follow_redirects=False)
        assert redirect.status_code == 307 and redirect.headers["location"].startswith(os.environ["AWS_ENDPOINT_URL"])

        assert c.delete(f"/v1/videos/{video_id}").status_code == 204
        assert objects(bucket) == {}


def test_proxied_media_answers_ranges(services, bucket, clip):
    payload = clip.read_bytes()
    with client_for(services, media_delivery="proxy") as c:
        video_id = c.post("/v1/videos", files={"file": ("talk.mp4", payload, "video/mp4")}).json()["video_id"]
        run_worker(services)
        detail = c.get(f"/v1/videos/{video_id}").json()
        assert detail["video_url"] == f"/v1/videos/{video_id}/media"  # the API's own: clients need not reach S3
        whole = c.get(detail["video_url"])
        assert whole.status_code == 200 and whole.content == payload and whole.headers["accept-ranges"] == "bytes"
        part = c.get(detail["video_url"], headers={"Range": "bytes=100-199"})
        assert part.status_code == 206 and part.content == payload[100:200]
        assert part.headers["content-range"] == f"bytes 100-199/{len(payload)}"
        tail = c.get(detail["video_url"], headers={"Range": "bytes=-10"})
        assert tail.status_code == 206 and tail.content == payload[-10:]
        head = c.head(detail["video_url"], headers={"Range": "bytes=0-0"})
        assert head.status_code == 206 and head.headers["content-length"] == "1" and head.content == b""
        stale = c.get(detail["video_url"], headers={"Range": "bytes=0-9", "If-Range": '"another-version"'})
        assert stale.status_code == 200 and stale.content == payload
        assert c.get(detail["video_url"], headers={"Range": f"bytes={len(payload)}-"}).status_code == 416
        thumb = c.get(detail["thumbnail_url"])
        assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
        assert thumb.content[:2] == b"\xff\xd8"


def test_refused_uploads_store_nothing(services, bucket, clip):
    with client_for(services, max_size_bytes=200_000) as c:
        r = c.post("/v1/videos", files={"file": ("notes.mp4", b"not a video at all" * 100, "video/mp4")})
        assert r.status_code == 415
        r = c.post("/v1/videos", content=b"x" * 10, headers={"content-type": "multipart/form-data; boundary=b",
                                                             "content-length": "999999999"})
        assert r.status_code == 413
        big = c.post("/v1/videos", files={"file": ("big.mp4", b"\x00" * 300_000, "video/mp4")})
        assert big.status_code == 413
    assert objects(bucket) == {}
    assert not any((services.settings.home / "staging").iterdir())


def test_a_store_that_is_down_never_loses_an_upload(services, bucket, clip, monkeypatch):
    """Down while uploading: 503 with Retry-After, nothing recorded. Down while the worker reads the item: the
    item is retried (transient) and the upload stays where it is; once the store is back it is indexed."""
    endpoint = os.environ["AWS_ENDPOINT_URL"]
    monkeypatch.setenv("AWS_ENDPOINT_URL", dead_endpoint())
    down = Services(services.settings)  # a process started while the store is down
    with client_for(down) as c:
        r = c.post("/v1/videos", files={"file": ("talk.mp4", clip.read_bytes(), "video/mp4")})
        assert r.status_code == 503 and r.headers["retry-after"]
    with services.sessions() as s:
        assert s.scalars(select(Video)).all() == [] and s.scalars(select(JobItem)).all() == []
    assert not any((services.settings.home / "staging").iterdir())

    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    with client_for(services) as c:
        video_id = c.post("/v1/videos", files={"file": ("talk.mp4", clip.read_bytes(), "video/mp4")}).json()[
            "video_id"]
    monkeypatch.setenv("AWS_ENDPOINT_URL", dead_endpoint())
    run_worker(Services(services.settings), owner="while-down")
    with services.sessions() as s:
        item = s.scalar(select(JobItem).where(JobItem.video_id == video_id))
        video = s.get(Video, video_id)
    assert (item.status, item.error_kind, item.attempts) == ("queued", "store_unavailable", 1), item.error
    assert video.status == "pending"
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    assert len(objects(bucket)) == 1  # the upload is still there
    with services.sessions.begin() as s:  # skip the backoff
        s.get(JobItem, item.id).next_attempt_at = item.created_at
    run_worker(Services(services.settings), owner="after")
    with services.sessions() as s:
        item = s.get(JobItem, item.id)
        assert item.status == "done" and item.attempts == 2
        assert s.get(Video, video_id).status == "indexed"


def test_reindex_reads_media_from_the_bucket(services, bucket, clip):
    """``save-search reindex --ocr`` decodes a video again: from a copy of its object, like the worker."""
    from types import SimpleNamespace

    from indexer.ingest.reindex import reindex_ocr

    seen = []

    class Reader:  # stands in for the OCR model: what matters is the file it is given
        def read(self, path, duration_s):
            seen.append(Path(path).read_bytes())
            return [SimpleNamespace(start_s=0.0, end_s=1.0, text="CHAPTER ONE")]

    with client_for(services) as c:
        video_id = c.post("/v1/videos", files={"file": ("talk.mp4", clip.read_bytes(), "video/mp4")}).json()[
            "video_id"]
    run_worker(services)
    read, failed = reindex_ocr(services, runtimes=IngestRuntimes(services.settings, screen_reader=Reader()))
    assert (read, failed) == (1, 0) and seen == [clip.read_bytes()]
    with services.sessions() as s:
        video = s.get(Video, video_id)
        assert video.ocr_status == "read" and [g.text for g in video.segments if g.source == "screen"] == [
            "CHAPTER ONE"]
