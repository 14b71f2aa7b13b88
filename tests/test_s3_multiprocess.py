"""Nothing shared but services (issue 17), for real: API A, API B and worker C are separate processes with separate
``SAVE_SEARCH_HOME`` folders that share only PostgreSQL, Milvus (Milvus Lite 2.5 over gRPC) and an S3 endpoint
(moto's standalone server on a free port, media in ``s3://bucket/media``). A video uploaded through A is indexed
by C, which reads it from the bucket and writes its thumbnail there, and is found through B with a working
thumbnail and a playable media file (a Range request answers 206): B proxies the objects
(``SAVE_SEARCH_MEDIA_DELIVERY=proxy``), A hands out presigned URLs of the store. A delete through B removes the
rows, the vectors and the objects; no home folder ever holds a media file."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from pymilvus import MilvusClient
from sqlalchemy import func, select

from indexer.storage.db import Passage, Segment, Video, make_engine, session_factory
from tests.helpers import objects
from tests.media_fixtures import MEDIA, speech_video
from tests.test_multiprocess import ROOT, _free_port, _videos, _wait_ready

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not MEDIA.exists(), reason=f"no test media at {MEDIA}"),
              pytest.mark.parametrize("fresh_db_url", ["postgres"], indirect=True)]


def _passages_in_milvus(client: MilvusClient, prefix: str, video_id: int) -> int:
    (name,) = [n for n in client.list_collections() if n.startswith(f"{prefix}_passages_")]
    return len(client.query(name, filter=f"video_id == {video_id}", output_fields=["id"], limit=10_000,
                            consistency_level="Strong"))


def _rows(db_url: str, video_id: int) -> tuple[int, int, int]:
    with session_factory(make_engine(db_url))() as s:
        return tuple(s.scalar(select(func.count()).select_from(t).where(col == video_id))  # type: ignore[return-value]
                     for t, col in ((Video, Video.id), (Segment, Segment.video_id), (Passage, Passage.video_id)))


def _files(home: Path) -> list[Path]:
    """Media files a home folder holds (its scratch and staging folders are allowed to exist, empty)."""
    return [p for p in home.rglob("*") if p.is_file() and p.suffix.lower() in (".mp4", ".jpg")]


def _wait_job(url: str, job_id: int, log: Path, timeout: float = 900) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        job = httpx.get(f"{url}/v1/jobs/{job_id}", timeout=30).json()
        if job["status"] in ("done", "failed", "cancelled"):
            return job
        time.sleep(1)
    raise AssertionError(f"job {job_id} did not finish: {log.read_text()[-3000:]}")


def test_two_apis_and_a_worker_share_only_postgres_milvus_and_s3(fresh_db_url, tmp_path, milvus_uri, bucket, s3_env):
    started = time.monotonic()
    clip = speech_video(MEDIA / "speech" / "ljspeech" / "LJ001-0014.wav", tmp_path / "printing.mp4")
    payload = clip.read_bytes()
    prefix = f"s3mp_{secrets.token_hex(4)}"

    def env(home: str, **more: str) -> dict[str, str]:
        out = dict(os.environ)  # the AWS_* variables of s3_env point every process at the test endpoint
        out.update(SAVE_SEARCH_DATABASE_URL=fresh_db_url, SAVE_SEARCH_HOME=str(tmp_path / home),
                   SAVE_SEARCH_MODEL=str(tmp_path / "no-visual-model"), SAVE_SEARCH_OCR="0",
                   SAVE_SEARCH_EXPECTED_LANGUAGES="en", SAVE_SEARCH_VECTOR_STORE="milvus",
                   SAVE_SEARCH_MILVUS_URI=milvus_uri, SAVE_SEARCH_MILVUS_COLLECTION_PREFIX=prefix,
                   SAVE_SEARCH_MILVUS_INDEX="FLAT", SAVE_SEARCH_MEDIA_URI=f"s3://{bucket}/media",
                   SAVE_SEARCH_ENCODE_BATCH_SIZE="1", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", **more)
        return out

    log = tmp_path / "processes.log"

    def start(home: str, *args: str, **more: str) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "app.cli", *args], env=env(home, **more), cwd=ROOT,
                                stdout=log.open("a"), stderr=subprocess.STDOUT)

    port_a, port_b = _free_port(), _free_port()
    a_url, b_url = f"http://127.0.0.1:{port_a}", f"http://127.0.0.1:{port_b}"
    processes = [start("api-a", "serve", "--no-worker", "--port", str(port_a)),
                 start("api-b", "serve", "--no-worker", "--port", str(port_b), SAVE_SEARCH_MEDIA_DELIVERY="proxy"),
                 start("worker-c", "worker", "--worker-id", "c")]
    client = MilvusClient(uri=milvus_uri)
    try:
        _wait_ready(a_url, processes[0], log, timeout=600)
        _wait_ready(b_url, processes[1], log, timeout=600)

        # Upload through A: kept in the bucket, nothing on A's disk.
        r = httpx.post(f"{a_url}/v1/videos", files={"file": ("printing.mp4", payload, "video/mp4")}, timeout=120)
        assert r.status_code == 202, r.text
        video_id, job_id = r.json()["video_id"], r.json()["job_id"]
        [upload_key] = objects(bucket)
        assert upload_key.startswith("media/uploads/")

        # Indexed by C (status seen through B).
        job = _wait_job(b_url, job_id, log)
        assert job["status"] == "done", job
        [video] = _videos(fresh_db_url)
        assert video.id == video_id and video.transcript
        thumb_key = f"media/thumbnails/{video.content_hash}.jpg"
        assert set(objects(bucket)) == {upload_key, thumb_key}
        assert video.source_path == f"s3://{bucket}/{upload_key}"
        assert video.thumbnail_path == f"s3://{bucket}/{thumb_key}"
        assert _passages_in_milvus(client, prefix, video_id) > 0

        # Found through B, with a working thumbnail and a playable media file (proxied by B).
        query = " ".join(video.transcript.split()[:8])
        found = httpx.get(f"{b_url}/v1/search", params={"q": query, "k": 5}, timeout=120).json()["results"]
        assert found and found[0]["video_id"] == video_id, found
        top = found[0]
        assert top["video_url"] == f"/v1/videos/{video_id}/media"
        thumb = httpx.get(b_url + top["thumbnail_url"], timeout=60)
        assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
        assert thumb.content[:2] == b"\xff\xd8"
        ranged = httpx.get(b_url + top["video_url"], headers={"Range": "bytes=0-1023"}, timeout=60)
        assert ranged.status_code == 206 and ranged.content == payload[:1024]
        assert ranged.headers["content-range"] == f"bytes 0-1023/{len(payload)}"

        # Through A the same video plays from the store itself (presigned URLs).
        detail = httpx.get(f"{a_url}/v1/videos/{video_id}", timeout=60).json()
        assert detail["video_url"].startswith(s3_env["AWS_ENDPOINT_URL"])
        presigned = httpx.get(detail["video_url"], headers={"Range": "bytes=1024-2047"}, timeout=60)
        assert presigned.status_code == 206 and presigned.content == payload[1024:2048]
        assert httpx.get(detail["thumbnail_url"], timeout=60).content == thumb.content

        for home in ("api-a", "api-b", "worker-c"):
            assert _files(tmp_path / home) == [], home

        # Delete through B: rows, vectors and objects.
        assert httpx.delete(f"{b_url}/v1/videos/{video_id}", timeout=60).status_code == 204
        assert _rows(fresh_db_url, video_id) == (0, 0, 0)
        assert _passages_in_milvus(client, prefix, video_id) == 0
        assert objects(bucket) == {}
        assert httpx.get(f"{a_url}/v1/videos/{video_id}", timeout=30).status_code == 404
        after = httpx.get(f"{a_url}/v1/search", params={"q": query, "k": 5}, timeout=120).json()["results"]
        assert all(r["video_id"] != video_id for r in after)
        print(f"three processes on S3, Milvus and PostgreSQL: {time.monotonic() - started:.0f} s")
    finally:
        for proc in processes:
            proc.send_signal(signal.SIGTERM)
        codes = [proc.wait(timeout=120) for proc in processes]
        for name in client.list_collections():
            if name.startswith(prefix):
                client.drop_collection(name)
        client.close()
    assert codes == [0, 0, 0], log.read_text()[-3000:]
