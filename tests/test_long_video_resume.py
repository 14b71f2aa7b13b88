"""A worker killed (kill -9) in the middle of a long video's speech recognition: the next worker to claim the item
continues from the last finished chunk (its checkpoint in the database), not from zero, and the job shows the
fraction of audio transcribed while it runs."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import select

from indexer.enums import JobStatus, Stage
from indexer.storage.db import AsrCheckpoint, JobItem, Video, make_engine, session_factory
from tests.media_fixtures import MEDIA, read_mono_16k, speech_video

pytestmark = pytest.mark.skipif(not MEDIA.exists(), reason=f"real test media not found at {MEDIA}")
ROOT = Path(__file__).resolve().parents[1]
CHUNK_S = 30  # several checkpoints in a few minutes of speech


def _long_speech(out: Path) -> tuple[Path, list[str]]:
    """About 3.5 minutes: every LJSpeech sentence, 0.7 s apart, in one video; the longest word of each."""
    folder = MEDIA / "speech" / "ljspeech"
    texts = dict(line.split("|")[:2] for line in (folder / "transcripts.psv").read_text().splitlines())
    parts, firsts = [], []
    for wav in sorted(folder.glob("*.wav")):
        parts += [read_mono_16k(wav), np.zeros(int(0.7 * 16000), np.float32)]
        firsts.append(max(re.findall(r"[a-z]+", texts[wav.stem].lower()), key=len))
    return speech_video(np.concatenate(parts), out), firsts


def _worker(env: dict[str, str], log: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "app.cli", "worker", "--worker-id", "resumer", "--exit-when-idle"],
                            env=env, stdout=log.open("a"), stderr=subprocess.STDOUT, cwd=ROOT)


@pytest.mark.slow
def test_kill_9_mid_transcription_resumes_from_the_last_chunk(tmp_path, save_search_home) -> None:
    video, firsts = _long_speech(tmp_path / "lecture.mp4")
    home = tmp_path / "home"
    env = {**os.environ, "SAVE_SEARCH_HOME": str(home), "SAVE_SEARCH_MODEL": str(tmp_path / "no-visual-model"),
           "SAVE_SEARCH_OCR": "0", "SAVE_SEARCH_ASR_CHUNK_SECONDS": str(CHUNK_S), "PYTHONUNBUFFERED": "1",
           "HF_HUB_OFFLINE": "1"}
    queued = subprocess.run([sys.executable, "-m", "app.cli", "ingest", str(video)], env=env, cwd=ROOT,
                            capture_output=True, text=True)
    assert queued.returncode == 0, queued.stderr
    sessions = session_factory(make_engine(f"sqlite:///{home / 'save_search.db'}"))
    log = tmp_path / "worker.log"

    proc = _worker(env, log)
    seen_progress: set[float] = set()
    killed_at = None
    deadline = time.time() + 900
    try:
        while time.time() < deadline and proc.poll() is None:
            with sessions() as s:
                item = s.scalars(select(JobItem)).one()
                if item.stage == Stage.TRANSCRIBE and item.stage_progress is not None:
                    seen_progress.add(item.stage_progress)
                checkpoint = s.get(AsrCheckpoint, item.id)
                if checkpoint is not None and json.loads(checkpoint.state)["chunks"] >= 2:
                    proc.send_signal(signal.SIGKILL)
                    killed_at = json.loads(checkpoint.state)["offset"] / 16000
                    break
            time.sleep(0.2)
    finally:
        if proc.poll() is None and killed_at is None:
            proc.kill()
        proc.wait(timeout=60)
    assert killed_at is not None, log.read_text()[-3000:]
    assert any(0 < p < 1 for p in seen_progress), seen_progress  # the job showed how much audio was done
    with sessions() as s:
        assert s.scalars(select(JobItem)).one().status == JobStatus.RUNNING  # claimed by the dead worker

    proc = _worker(env, log)  # the same worker id takes its item back at once
    assert proc.wait(timeout=900) == 0, log.read_text()[-3000:]
    text = log.read_text()
    resumed = re.search(r"resuming speech recognition at (\d+) s", text)
    assert resumed and int(resumed.group(1)) == pytest.approx(killed_at, abs=1), text[-3000:]
    with sessions() as s:
        item = s.scalars(select(JobItem)).one()
        assert item.status == JobStatus.DONE and s.get(AsrCheckpoint, item.id) is None
        video_row = s.get(Video, item.video_id)
        transcript = video_row.transcript.lower()
        assert video_row.transcribed_seconds >= 0.9 * video_row.speech_seconds
    said = sum(word in transcript for word in firsts)
    assert said >= 0.8 * len(firsts)  # sentences from before and after the kill are there (ASR misspells a few)
