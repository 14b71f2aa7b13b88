"""Past one machine, for real: two workers and two API processes with different ``SAVE_SEARCH_HOME`` folders
share nothing but one PostgreSQL database and one Milvus server (Milvus Lite 2.5 over gRPC). Every video is
ingested once and searchable from both APIs (visual re-scoring reads frame features from the database, not from a
disk); a delete through one API is gone from the other; a worker killed between its commit and its Milvus write
leaves a difference that the next worker start-up, or ``save-search reindex --verify``, repairs."""

from __future__ import annotations

import secrets
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from pymilvus import MilvusClient

from tests.media_fixtures import MEDIA, speech_video
from tests.test_multiprocess import ROOT, _cli, _enqueue, _env, _free_port, _items, _videos, _wait_ready

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not MEDIA.exists(), reason=f"no test media at {MEDIA}"),
              pytest.mark.parametrize("fresh_db_url", ["postgres"], indirect=True)]

CLIPS = ["LJ001-0014", "LJ001-0015", "LJ001-0016"]
# The worker dies exactly at the point the issue names: its database commit is done, its Milvus write is not.
KILLED_AFTER_COMMIT = ("import os, signal; from indexer.storage.milvus import MilvusCatalog; "
                       "MilvusCatalog.index_videos = lambda self, ids: os.kill(os.getpid(), signal.SIGKILL); "
                       "from app.cli import main; main()")


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("milvus-clips")
    for clip in CLIPS:
        speech_video(MEDIA / "speech" / "ljspeech" / f"{clip}.wav", root / f"{clip}.mp4")
    return root


def _milvus_ids(client: MilvusClient, prefix: str, kind: str) -> set[int]:
    (name,) = [n for n in client.list_collections() if n.startswith(f"{prefix}_{kind}_")]
    return {int(r["id"]) for r in client.query(name, filter="id >= 0", output_fields=["id"], limit=1000,
                                                consistency_level="Strong")}


def _frame_ids(url: str) -> set[int]:
    """Videos with a row in the database's ``video_frames`` (where the Milvus backend keeps frame features)."""
    from sqlalchemy import select

    from indexer.storage.db import VideoFrames, make_engine, session_factory

    engine = make_engine(url)
    try:
        with session_factory(engine)() as s:
            return set(s.scalars(select(VideoFrames.video_id)))
    finally:
        engine.dispose()


def _words(transcript: str) -> str:
    """A query made of what a video says (its first eight words)."""
    return " ".join(transcript.split()[:8])


def _search(url: str, query: str) -> list[dict]:
    response = httpx.get(f"{url}/v1/search", params={"q": query, "k": 5}, timeout=60)
    assert response.status_code == 200, response.text
    return response.json()["results"]


def test_apis_and_workers_on_different_hosts_share_only_postgres_and_milvus(fresh_db_url, tmp_path, tiny_weights,
                                                                            media, milvus_uri):
    prefix = f"mp_{secrets.token_hex(4)}"

    def env(home: str) -> dict[str, str]:
        return {**_env(fresh_db_url, tmp_path / home, tiny_weights), "SAVE_SEARCH_VECTOR_STORE": "milvus",
                "SAVE_SEARCH_MILVUS_URI": milvus_uri, "SAVE_SEARCH_MILVUS_COLLECTION_PREFIX": prefix,
                "SAVE_SEARCH_MILVUS_INDEX": "FLAT"}

    log = tmp_path / "processes.log"
    ports = [_free_port(), _free_port()]
    apis = [_cli(env(f"api{i}"), "serve", "--no-worker", "--port", str(p), log=log) for i, p in enumerate(ports)]
    client = MilvusClient(uri=milvus_uri)
    try:
        urls = [f"http://127.0.0.1:{p}" for p in ports]
        for url, proc in zip(urls, apis, strict=True):
            _wait_ready(url, proc, log, timeout=600)  # two model loads at once on a busy CI machine
        _enqueue(env("cli"), media / "LJ001-0014.mp4", media / "LJ001-0015.mp4")
        workers = [_cli(env(f"worker-{name}"), "worker", "--worker-id", name, "--exit-when-idle", log=log)
                   for name in ("alpha", "beta")]
        for w in workers:
            assert w.wait(timeout=600) == 0, log.read_text()[-3000:]
        assert all(i.status == "done" and i.attempts == 1 for i in _items(fresh_db_url))
        said = {v.id: v.transcript for v in _videos(fresh_db_url)}
        videos = {v.filename: v.id for v in _videos(fresh_db_url)}
        assert len(videos) == 2
        assert _milvus_ids(client, prefix, "videos") == set(videos.values())
        for url in urls:  # right after the workers' commits, with no file of theirs in reach
            for video_id, transcript in said.items():
                top = _search(url, _words(transcript))[0]
                assert top["video_id"] == video_id and top["visual_score"] is not None, top
                assert top["transcript"] == transcript and top["segment"]["text"]
                detail = httpx.get(f"{url}/v1/videos/{video_id}", timeout=30).json()
                assert detail["segments"] and detail["transcript"] == transcript
        assert not any(p.exists() for p in (tmp_path / "api0" / "features", tmp_path / "api1" / "index"))

        gone = videos["LJ001-0014.mp4"]
        assert httpx.delete(f"{urls[0]}/v1/videos/{gone}", timeout=30).status_code == 204
        assert all(r["video_id"] != gone for r in _search(urls[1], _words(said[gone])))
        assert _milvus_ids(client, prefix, "videos") == {videos["LJ001-0015.mp4"]}
        assert _frame_ids(fresh_db_url) == {videos["LJ001-0015.mp4"]}  # the row went with the video

        # kill -9 between the commit and the Milvus write: the database has the video, the index does not.
        _enqueue(env("cli"), media / "LJ001-0016.mp4")
        doomed = subprocess.Popen([sys.executable, "-c", KILLED_AFTER_COMMIT, "worker", "--worker-id", "doomed",
                                   "--exit-when-idle"], env=env("worker-doomed"), cwd=ROOT, stdout=log.open("a"),
                                  stderr=subprocess.STDOUT)
        assert doomed.wait(timeout=600) == -signal.SIGKILL, log.read_text()[-3000:]
        killed = {v.filename: v.id for v in _videos(fresh_db_url)}["LJ001-0016.mp4"]
        assert killed not in _milvus_ids(client, prefix, "videos")
        assert killed in _frame_ids(fresh_db_url)  # the frames were committed with the video (video_frames)
        assert not [n for n in client.list_collections() if n.startswith(f"{prefix}_frames_")]
        repairer = _cli(env("worker-gamma"), "worker", "--worker-id", "gamma", "--exit-when-idle", log=log)
        assert repairer.wait(timeout=300) == 0, log.read_text()[-3000:]
        assert _milvus_ids(client, prefix, "videos") == {videos["LJ001-0015.mp4"], killed}  # the start-up repair

        # The same difference again, repaired by `reindex --verify` this time.
        (name,) = [n for n in client.list_collections() if n.startswith(f"{prefix}_videos_")]
        client.delete(name, ids=[killed])
        verify = subprocess.run([sys.executable, "-m", "app.cli", "reindex", "--verify"], env=env("ops"), cwd=ROOT,
                                capture_output=True, text=True, timeout=300)
        assert verify.returncode == 0, verify.stderr[-3000:]
        assert "videos: 2 in the database, 1 added, 0 removed" in verify.stdout, verify.stdout
        assert "passages:" in verify.stdout and "frames: 2 in the database" in verify.stdout
        top = _search(urls[1], _words(next(v.transcript for v in _videos(fresh_db_url) if v.id == killed)))[0]
        assert top["video_id"] == killed and top["visual_score"] is not None, top
    finally:
        for proc in apis:
            proc.send_signal(signal.SIGTERM)
        for proc in apis:
            proc.wait(timeout=30)
        for name in client.list_collections():
            if name.startswith(prefix):
                client.drop_collection(name)
        client.close()
