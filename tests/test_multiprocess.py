"""Several processes on one PostgreSQL database, for real: two workers share a bulk job without processing an
item twice; a worker killed mid-job has its item reclaimed by another after the lease; two API processes both
serve a newly indexed video without a restart."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from indexer.storage.db import JobItem, Video, make_engine, session_factory
from indexer.storage.snapshots import load_snapshot
from tests.media_fixtures import MEDIA, speech_video

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not MEDIA.exists(), reason=f"no test media at {MEDIA}"),
              pytest.mark.parametrize("fresh_db_url", ["postgres"], indirect=True)]

ROOT = Path(__file__).resolve().parents[1]
CLIPS = ["LJ001-0014", "LJ001-0015", "LJ001-0016", "LJ001-0017", "LJ001-0018", "LJ001-0019"]


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("clips")
    for clip in CLIPS:
        speech_video(MEDIA / "speech" / "ljspeech" / f"{clip}.wav", root / f"{clip}.mp4")
    return root


def _env(db_url: str, home: Path, weights: tuple[Path, Path], lease: float = 60) -> dict[str, str]:
    env = dict(os.environ)
    env.update(SAVE_SEARCH_DATABASE_URL=db_url, SAVE_SEARCH_HOME=str(home), SAVE_SEARCH_MODEL="tiny",
               SAVE_SEARCH_CLIP_SOURCE=str(weights[0]), SAVE_SEARCH_AUDIO_SOURCE=str(weights[1]),
               SAVE_SEARCH_ENCODE_BATCH_SIZE="1", SAVE_SEARCH_LEASE_SECONDS=str(lease), OMP_NUM_THREADS="1",
               PYTHONUNBUFFERED="1")
    return env


def _cli(env: dict[str, str], *args: str, log: Path | None = None) -> subprocess.Popen:
    out = log.open("a") if log else subprocess.DEVNULL
    return subprocess.Popen([sys.executable, "-m", "app.cli", *args], env=env, cwd=ROOT, stdout=out,
                            stderr=subprocess.STDOUT)


def _enqueue(env: dict[str, str], *paths: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "app.cli", "ingest", *map(str, paths)], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def _items(db_url: str) -> list[JobItem]:
    with session_factory(make_engine(db_url))() as s:
        return list(s.scalars(select(JobItem).order_by(JobItem.id)))


def _videos(db_url: str) -> list[Video]:
    with session_factory(make_engine(db_url))() as s:
        return list(s.scalars(select(Video).order_by(Video.id)))


def test_two_workers_share_one_bulk_job_without_doing_anything_twice(fresh_db_url, tmp_path, tiny_weights, clips):
    home = tmp_path / "home"
    env = _env(fresh_db_url, home, tiny_weights)
    _enqueue(env, clips)
    log = tmp_path / "workers.log"
    workers = [_cli(env, "worker", "--worker-id", name, "--exit-when-idle", log=log) for name in ("alpha", "beta")]
    for w in workers:
        assert w.wait(timeout=900) == 0, log.read_text()[-3000:]
    items = _items(fresh_db_url)
    assert [i.status for i in items] == ["done"] * len(CLIPS)
    assert all(i.attempts == 1 for i in items), [(i.id, i.attempts, i.lease_owner) for i in items]
    assert {i.lease_owner for i in items} == {"alpha", "beta"}  # both really worked on the job
    videos = _videos(fresh_db_url)
    assert len(videos) == len(CLIPS) and len({v.content_hash for v in videos}) == len(CLIPS)
    index, _ = load_snapshot(home / "index" / "videos")
    assert sorted(index.ids().tolist()) == [v.id for v in videos]  # the last publisher synced everything


def test_a_killed_workers_item_is_finished_by_another(fresh_db_url, tmp_path, tiny_weights, clips):
    home = tmp_path / "home"
    env = _env(fresh_db_url, home, tiny_weights, lease=4)
    _enqueue(env, *sorted(clips.iterdir())[:3])
    log = tmp_path / "workers.log"
    doomed = _cli(env, "worker", "--worker-id", "doomed", log=log)
    deadline = time.time() + 180
    while time.time() < deadline and not any(i.status == "running" for i in _items(fresh_db_url)):
        time.sleep(0.1)
    held = [i.id for i in _items(fresh_db_url) if i.status == "running"]
    assert held, log.read_text()[-3000:]
    doomed.send_signal(signal.SIGKILL)
    doomed.wait(timeout=30)
    survivor = _cli(env, "worker", "--worker-id", "survivor", "--exit-when-idle", log=log)
    assert survivor.wait(timeout=900) == 0, log.read_text()[-3000:]
    items = {i.id: i for i in _items(fresh_db_url)}
    assert all(i.status == "done" for i in items.values())
    assert all(items[i].lease_owner == "survivor" and items[i].attempts == 2 for i in held)
    assert len(_videos(fresh_db_url)) == 3


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_ready(url: str, proc: subprocess.Popen, log: Path, timeout: float = 180) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, log.read_text()[-3000:]
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise AssertionError(f"{url} never became ready: {log.read_text()[-2000:]}")


def test_two_api_processes_serve_a_new_video_without_restart(fresh_db_url, tmp_path, tiny_weights, clips):
    home = tmp_path / "home"
    env = _env(fresh_db_url, home, tiny_weights)
    log = tmp_path / "api.log"
    ports = [_free_port(), _free_port()]
    apis = [_cli(env, "serve", "--no-worker", "--port", str(p), log=log) for p in ports]
    try:
        urls = [f"http://127.0.0.1:{p}" for p in ports]
        for url, proc in zip(urls, apis, strict=True):
            _wait_ready(url, proc, log)
        query = {"q": "printing", "k": 5}
        assert all(httpx.get(f"{u}/v1/search", params=query).json()["results"] == [] for u in urls)
        _enqueue(env, clips / "LJ001-0014.mp4")
        worker = _cli(env, "worker", "--worker-id", "w", "--exit-when-idle", log=log)
        assert worker.wait(timeout=600) == 0, log.read_text()[-3000:]
        published = time.time()
        for url in urls:
            while True:
                results = httpx.get(f"{url}/v1/search", params=query, timeout=30).json()["results"]
                if results:
                    break
                assert time.time() - published < 10, f"{url} did not pick up the new video"
                time.sleep(0.2)
            assert results[0]["filename"] == "LJ001-0014.mp4" and results[0]["visual_score"] is not None
    finally:
        for proc in apis:
            proc.send_signal(signal.SIGTERM)
        for proc in apis:
            proc.wait(timeout=30)
