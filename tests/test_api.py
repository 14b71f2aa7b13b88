"""The HTTP API through httpx against the real app: real SQLite, real FAISS, the bundled Whisper, the embedded
worker. Every endpoint, the auth rules and every error code."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from indexer.settings import Settings
from tests.helpers import wait_for_job
from tests.media_fixtures import MEDIA, speech_video

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not MEDIA.exists(), reason=f"no test media at {MEDIA}")]


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("media")
    speech_video(MEDIA / "speech" / "jfk.flac", root / "jfk.mp4")
    speech_video(MEDIA / "speech" / "ljspeech" / "LJ001-0005.wav", root / "printing.mp4", color=(10, 200, 10))
    (root / "bulk").mkdir()
    shutil.copy(MEDIA / "video" / "silence_girl.mp4", root / "bulk" / "silence_girl.mp4")
    (root / "bulk" / "broken.mp4").write_bytes(b"\x00\x01" * 64)
    (root / "notes.txt").write_text("not a video\n" * 50)
    return root


@pytest.fixture(scope="module")
def client(tmp_path_factory, media):
    home = tmp_path_factory.mktemp("home")
    settings = Settings(home=home, model=str(home / "no-visual-model"), expected_languages=["en"],
                        allowed_roots=[media / "bulk"], max_size_bytes=5_000_000)
    with TestClient(create_app(settings)) as c:
        yield c


def wait_job(client: TestClient, job_id: int, timeout: float = 180) -> dict:
    return wait_for_job(lambda path: client.get(path).json(), job_id, timeout)


def upload(client: TestClient, path: Path, name: str | None = None, **kw):
    with path.open("rb") as f:
        return client.post("/v1/videos", files={"file": (name or path.name, f, "video/mp4")}, **kw)


@pytest.fixture(scope="module")
def indexed(client, media) -> dict[str, int]:
    ids = {}
    for name in ("jfk.mp4", "printing.mp4"):
        r = upload(client, media / name)
        assert r.status_code == 202, r.text
        body = r.json()
        assert body["status"] == "queued" and body["video_id"] and body["job_id"]
        pending = client.get(f"/v1/videos/{body['video_id']}").json()
        assert pending["status"] in ("pending", "indexed")
        job = wait_job(client, body["job_id"])
        assert job["status"] == "done", job
        ids[name] = body["video_id"]
    return ids


def test_health_ready_and_metrics(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz").json()
    assert ready["ready"] and ready["mode"] == "speech" and "could not be loaded" in ready["reason"]
    assert ready["worker"] == "embedded" and "loopback" in ready["auth"]
    client.get("/v1/search", params={"q": "warm up"})
    text = client.get("/metrics").text
    assert "save_http_request_duration_seconds_bucket" in text and 'route="/v1/search"' in text
    assert "save_ingest_queue_depth" in text


def test_upload_then_search_returns_transcript_and_moment(client, indexed):
    r = client.get("/v1/search", params={"q": "ask what you can do for your country", "k": 5})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["mode"] == "speech"
    top = body["results"][0]
    assert top["video_id"] == indexed["jfk.mp4"] and top["filename"] == "jfk.mp4"
    assert top["visual_score"] is None and 0 < top["speech_score"] <= 1 and top["score"] == top["speech_score"]
    assert "country" in top["transcript"].lower() and top["duration"] > 10
    seg = top["segment"]
    assert seg["end"] > seg["start"] >= 0 and seg["highlights"]
    assert any(seg["text"][a:b].lower().startswith("countr") for a, b in seg["highlights"])
    assert top["thumbnail_url"] == f"/v1/videos/{top['video_id']}/thumbnail"


def test_pagination_is_stable(client, indexed):
    first = client.get("/v1/search", params={"q": "printing country", "k": 1}).json()
    assert len(first["results"]) == 1 and first["next_page_token"]
    second = client.get("/v1/search", params={"q": "printing country", "k": 1,
                                              "page_token": first["next_page_token"]}).json()
    both = client.get("/v1/search", params={"q": "printing country", "k": 2}).json()
    assert [r["video_id"] for r in first["results"] + second["results"]] == [r["video_id"] for r in both["results"]]
    bad = client.get("/v1/search", params={"q": "other query", "k": 1, "page_token": first["next_page_token"]})
    assert bad.status_code == 422 and "another query" in bad.json()["detail"]
    assert client.get("/v1/search", params={"q": "x", "page_token": "%%%garbage"}).status_code == 422


def test_pages_end_with_the_candidate_pool(client, indexed, monkeypatch):
    """A query ranks one pool (set by q and k, never by the page): paging ends there, with no repeats."""
    search = client.app.state.save.search
    monkeypatch.setattr(search, "pool_size", lambda k: 1)  # a pool of one video per source
    q = "printing country"  # both videos match (k=2 below finds two without the patch), the pool holds one
    ids, token = [], None
    for _ in range(5):
        page = client.get("/v1/search", params={"q": q, "k": 1, **({"page_token": token} if token else {})}).json()
        ids += [r["video_id"] for r in page["results"]]
        token = page["next_page_token"]
        if token is None:
            break
    assert token is None and len(ids) == 1  # speech mode: the transcript source only
    assert ids == [r["video_id"] for r in client.get("/v1/search", params={"q": q, "k": 2}).json()["results"]]


def test_min_score_filters(client, indexed):
    results = client.get("/v1/search", params={"q": "printing", "min_score": 0.99}).json()["results"]
    assert all(r["score"] >= 0.99 for r in results)


@pytest.mark.parametrize("params", [{"q": ""}, {"q": "   "}, {"q": "x" * 501}, {"q": "ok", "k": 0},
                                    {"q": "ok", "k": 101}, {}, {"q": "ok", "min_score": 3}])
def test_bad_search_parameters_are_422(client, params):
    r = client.get("/v1/search", params=params)
    assert r.status_code == 422 and r.json()["detail"]


def test_video_metadata_thumbnail_and_range_playback(client, indexed):
    vid = indexed["jfk.mp4"]
    meta = client.get(f"/v1/videos/{vid}").json()
    assert meta["status"] == "indexed" and meta["filename"] == "jfk.mp4" and meta["segments"]
    assert all({"start", "end", "text"} <= set(s) for s in meta["segments"])
    # How much of the speech made it into the transcript: all of JFK's 11 s, nothing decoded again or left empty.
    assert 9 < meta["speech_seconds"] <= 12 and meta["coverage"] >= 0.98
    assert meta["coverage"] == round(meta["transcribed_seconds"] / meta["speech_seconds"], 4)
    assert meta["redecoded_regions"] == meta["empty_regions"] == 0
    thumb = client.get(f"/v1/videos/{vid}/thumbnail")
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
    assert thumb.content[:2] == b"\xff\xd8"
    full = client.get(f"/v1/videos/{vid}/media")
    assert full.status_code == 200 and full.headers["accept-ranges"] == "bytes"
    part = client.get(f"/v1/videos/{vid}/media", headers={"Range": "bytes=100-199"})
    assert part.status_code == 206 and part.content == full.content[100:200]
    assert part.headers["content-range"].startswith("bytes 100-199/")
    listing = client.get("/v1/videos").json()
    assert {v["video_id"] for v in listing} >= set(indexed.values())


def test_not_found_is_404(client):
    for url in ("/v1/videos/999999", "/v1/videos/999999/thumbnail", "/v1/videos/999999/media", "/v1/jobs/999999"):
        r = client.get(url)
        assert r.status_code == 404 and r.json()["detail"], url
    assert client.delete("/v1/videos/999999").status_code == 404


def test_same_upload_twice_is_one_video(client, media, indexed):
    r = upload(client, media / "jfk.mp4", name="again.mp4")
    assert r.status_code == 202
    body = r.json()
    assert body["duplicate"] and body["video_id"] == indexed["jfk.mp4"] and body["status"] == "done"
    assert client.get(f"/v1/jobs/{body['job_id']}").json()["status"] == "done"


def test_non_video_is_415_and_too_large_is_413(client, media, tmp_path):
    r = upload(client, media / "notes.txt", name="notes.mp4")
    assert r.status_code == 415 and "notes.mp4" in r.json()["detail"]
    assert ".tmp-" not in r.json()["detail"] and "/uploads" not in r.json()["detail"]  # no server paths leak
    audio = tmp_path / "speech.flac"
    shutil.copy(MEDIA / "speech" / "jfk.flac", audio)
    r = upload(client, audio)
    assert r.status_code == 415 and "video" in r.json()["detail"].lower()
    big = tmp_path / "big.mp4"
    big.write_bytes(b"\x00" * 6_000_000)
    r = upload(client, big)
    assert r.status_code == 413 and "maximum" in r.json()["detail"]
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    assert upload(client, empty).status_code == 422
    assert client.post("/v1/videos").status_code == 422  # no file field


def test_bulk_ingest_job_with_per_item_outcomes(client, media, tmp_path):
    outside = tmp_path / "outside.mp4"
    shutil.copy(media / "printing.mp4", outside)
    r = client.post("/v1/ingest-jobs", json={"paths": [str(media / "bulk"), str(outside)], "recursive": True})
    assert r.status_code == 202, r.text
    job = wait_job(client, r.json()["job_id"])
    items = {Path(i["path"]).name: i for i in job["items"]}
    assert job["status"] == "done" and job["total"] == 3
    assert items["silence_girl.mp4"]["status"] == "done" and items["silence_girl.mp4"]["video_id"]
    assert items["broken.mp4"]["status"] == "failed" and items["broken.mp4"]["error"]
    assert items["outside.mp4"]["error_kind"] == "outside_allowed_roots"
    assert client.post("/v1/ingest-jobs", json={"paths": []}).status_code == 422
    assert client.post("/v1/ingest-jobs", json={"paths": [str(tmp_path / "nothing-here")]}).status_code == 202


def test_delete_removes_everything_we_own(client, media, tmp_path):
    copy = tmp_path / "to-delete.mp4"
    speech_video(MEDIA / "speech" / "ljspeech" / "LJ001-0002.wav", copy, color=(5, 5, 250))
    body = upload(client, copy).json()
    assert wait_job(client, body["job_id"])["status"] == "done"
    vid = body["video_id"]
    meta = client.get(f"/v1/videos/{vid}").json()
    assert meta["status"] == "indexed"
    state = client.app.state.save
    with state.services.sessions() as s:
        from indexer.storage.db import Video

        v = s.get(Video, vid)
        files = [Path(v.source_path), Path(v.thumbnail_path)]
    assert all(f.exists() for f in files)
    assert client.delete(f"/v1/videos/{vid}").status_code == 204
    assert client.get(f"/v1/videos/{vid}").status_code == 404
    assert not any(f.exists() for f in files)
    results = client.get("/v1/search", params={"q": "comparatively modern", "k": 10}).json()["results"]
    assert vid not in {r["video_id"] for r in results}


def test_openapi_documents_the_versioned_api(client):
    spec = client.get("/openapi.json").json()
    for path in ("/v1/search", "/v1/videos", "/v1/videos/{video_id}", "/v1/videos/{video_id}/thumbnail",
                 "/v1/videos/{video_id}/media", "/v1/ingest-jobs", "/v1/jobs/{job_id}", "/healthz", "/readyz"):
        assert path in spec["paths"], path


# ---------------------------------------------------------------------------------------------------- auth
@pytest.fixture(scope="module")
def keyed(tmp_path_factory):
    home = tmp_path_factory.mktemp("home-keys")
    settings = Settings(home=home, model=str(home / "none"), api_keys=["secret-key"], allowed_roots=[home])
    with TestClient(create_app(settings, embedded_worker=False)) as c:
        yield c


def test_keys_required_for_writes_not_reads(keyed, media):
    assert keyed.get("/v1/search", params={"q": "anything"}).status_code == 200
    r = upload(keyed, media / "jfk.mp4")
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    assert upload(keyed, media / "jfk.mp4", headers={"Authorization": "Bearer wrong"}).status_code == 403
    assert upload(keyed, media / "jfk.mp4", headers={"X-API-Key": "secret-key"}).status_code == 202
    assert keyed.delete("/v1/videos/1").status_code == 401
    assert keyed.post("/v1/ingest-jobs", json={"paths": ["/x"]}).status_code == 401
    assert "required for writes" in keyed.get("/readyz").json()["auth"]


def test_database_keys_and_reads_requiring_keys(tmp_path):
    from app.security import hash_key
    from indexer.storage.db import ApiKey

    home = tmp_path / "home"
    settings = Settings(home=home, model=str(home / "none"), read_requires_key=True)
    with TestClient(create_app(settings, embedded_worker=False)) as c:
        with c.app.state.save.services.sessions.begin() as s:
            s.add(ApiKey(name="ci", key_hash=hash_key("db-key")))
        c.app.state.save.guard.invalidate_keys()
        assert c.get("/v1/search", params={"q": "x"}).status_code == 401
        assert c.get("/v1/search", params={"q": "x"}, headers={"Authorization": "Bearer db-key"}).status_code == 200
        assert c.get("/healthz").status_code == 200  # probes never need a key


def test_without_keys_writes_only_from_loopback(tmp_path, media):
    home = tmp_path / "home"
    settings = Settings(home=home, model=str(home / "none"))
    app = create_app(settings, embedded_worker=False)
    with TestClient(app, client=("203.0.113.7", 40000)) as remote:
        r = upload(remote, media / "jfk.mp4")
        assert r.status_code == 403 and "only accepted from this machine" in r.json()["detail"]
        assert remote.get("/v1/search", params={"q": "x"}).status_code == 200
    with TestClient(app, client=("127.0.0.1", 40000)) as local:
        assert upload(local, media / "jfk.mp4").status_code == 202


def test_signed_media_urls_when_reads_need_a_key(client, indexed):
    """<img> and <video> cannot send a key: behind read keys the handed-out media URLs carry a signature that
    opens that one video's thumbnail and file, until it expires; anything else still needs the key."""
    import urllib.parse

    home = client.app.state.save.settings.home  # the same database and files as `client`, now behind read keys
    settings = Settings(home=home, model=str(home / "no-visual-model"), api_keys=["read-key"],
                        read_requires_key=True)
    auth = {"Authorization": "Bearer read-key"}
    with TestClient(create_app(settings, embedded_worker=False)) as c:
        state = c.app.state.save
        top = c.get("/v1/search", params={"q": "ask what you can do for your country"}, headers=auth).json()
        top = top["results"][0]
        vid = top["video_id"]
        assert top["video_url"].startswith(f"/v1/videos/{vid}/media?exp=") and "&sig=" in top["video_url"]
        again = c.get(f"/v1/videos/{vid}", headers=auth).json()["video_url"]
        assert again.split("?")[0] == top["video_url"].split("?")[0] and c.get(again).status_code == 200
        thumb = c.get(top["thumbnail_url"])  # no key
        assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
        assert thumb.headers["cache-control"].startswith("private")
        part = c.get(top["video_url"], headers={"Range": "bytes=0-99"})
        assert part.status_code == 206 and len(part.content) == 100
        # Without the signature, with a forged one, for another video, or expired: the key rule applies.
        params = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(top["video_url"]).query))
        other = next(v for v in indexed.values() if v != vid)
        assert c.get(f"/v1/videos/{vid}/media").status_code == 401
        assert c.get(f"/v1/videos/{vid}/media", params={**params, "sig": "0" * 64}).status_code == 401
        assert c.get(f"/v1/videos/{other}/media", params=params).status_code == 401
        past = int(time.time()) - 1
        content_hash = state.guard.content_hashes([vid])[vid]
        expired = {"exp": past, "sig": state.guard._signature(vid, content_hash, past)}
        assert c.get(f"/v1/videos/{vid}/thumbnail", params=expired).status_code == 401
        assert c.get(f"/v1/videos/{vid}/media", params=params, headers=auth).status_code == 200
        assert c.get(f"/v1/videos/{vid}", params=params).status_code == 401  # metadata is not media
        # Every API process on the database signs with the same secret.
        with TestClient(create_app(settings, embedded_worker=False)) as c2:
            assert c2.get(top["thumbnail_url"]).status_code == 200
    # Without read keys the URLs stay plain.
    plain = client.get("/v1/search", params={"q": "country"}).json()["results"][0]
    assert plain["video_url"] == f"/v1/videos/{plain['video_id']}/media"
