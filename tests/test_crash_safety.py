"""kill -9 during a bulk ingest: after restarts every accepted video is indexed exactly once and the FAISS
indexes agree with the database."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import func, select

from indexer.storage.db import JobItem, Passage, Video, make_engine, session_factory
from indexer.storage.shards import FeatureRef, FeatureStore
from indexer.storage.snapshots import load_snapshot
from tests.media_fixtures import MEDIA, speech_video

pytestmark = pytest.mark.skipif(not MEDIA.exists(), reason=f"real test media not found at {MEDIA}")

CLIPS = ["LJ001-0008", "LJ001-0009", "LJ001-0010", "LJ001-0011", "LJ001-0012", "LJ001-0013"]


def _env(home: Path, clip: Path, ast: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(SAVE_SEARCH_HOME=str(home), SAVE_SEARCH_MODEL="tiny", SAVE_SEARCH_CLIP_SOURCE=str(clip),
               SAVE_SEARCH_AUDIO_SOURCE=str(ast), SAVE_SEARCH_ENCODE_BATCH_SIZE="1", PYTHONUNBUFFERED="1",
               OMP_NUM_THREADS="1")
    return env


def _start_worker(env: dict[str, str], log: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "app.cli", "worker", "--worker-id", "crashy", "--exit-when-idle"],
                            env=env, stdout=log.open("a"), stderr=subprocess.STDOUT, cwd=Path(__file__).parents[1])


def _count(sessions, model) -> int:
    with sessions() as s:
        return s.scalar(select(func.count()).select_from(model)) or 0


@pytest.mark.slow
def test_kill_9_during_bulk_ingest_loses_nothing_and_duplicates_nothing(tmp_path, tiny_weights):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    for clip in CLIPS:
        speech_video(MEDIA / "speech" / "ljspeech" / f"{clip}.wav", inputs / f"{clip}.mp4")
    home = tmp_path / "home"
    env = _env(home, *tiny_weights)
    log = tmp_path / "worker.log"
    enqueue = subprocess.run([sys.executable, "-m", "app.cli", "ingest", str(inputs)], env=env, capture_output=True,
                             text=True, cwd=Path(__file__).parents[1])
    assert enqueue.returncode == 0, enqueue.stderr
    sessions = session_factory(make_engine(f"sqlite:///{home / 'save_search.db'}"))
    assert _count(sessions, JobItem) == len(CLIPS)

    kills = 0
    # Kill at different moments: while the first item is in flight, then just after a commit.
    for wait_for_videos in (0, 1, 3):
        proc = _start_worker(env, log)
        deadline = time.time() + 240
        while time.time() < deadline:
            with sessions() as s:
                running = s.scalar(select(func.count()).select_from(JobItem).where(JobItem.status == "running"))
            if _count(sessions, Video) > wait_for_videos or (wait_for_videos == 0 and running):
                break
            if proc.poll() is not None:
                break
            time.sleep(0.05)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait(timeout=30)
    assert kills >= 2, log.read_text()[-3000:]
    assert "requeued" in log.read_text()  # a restarted worker took back the item it held when killed

    proc = _start_worker(env, log)  # the survivor finishes the job
    assert proc.wait(timeout=600) == 0, log.read_text()[-3000:]

    with sessions() as s:
        items = list(s.scalars(select(JobItem)))
        videos = list(s.scalars(select(Video)))
        passage_ids = set(s.scalars(select(Passage.id)))
    assert [i.status for i in items] == ["done"] * len(CLIPS), [(i.status, i.error) for i in items]
    assert len(videos) == len(CLIPS) and len({v.content_hash for v in videos}) == len(CLIPS)
    assert {i.video_id for i in items} == {v.id for v in videos}
    video_index, manifest = load_snapshot(home / "index" / "videos")
    assert sorted(video_index.ids().tolist()) == sorted(v.id for v in videos)
    passage_index, _ = load_snapshot(home / "index" / "passages")
    assert set(passage_index.ids().tolist()) == passage_ids
    store = FeatureStore(home / "features", 12, 32, owner="check")
    frames, masks = store.read_many([FeatureRef(v.feature_shard, v.feature_offset) for v in videos])
    assert frames.shape == (len(CLIPS), 12, 32) and masks.sum() > 0
