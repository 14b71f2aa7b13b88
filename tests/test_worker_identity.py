"""Workers as real processes (issue 12): two started the same way on one host never interfere, and a worker
killed between moving a thumbnail into place and its commit leaves no orphan once a later worker starts."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from sqlalchemy import select

from indexer.ingest.jobs import JobQueue, default_owner
from indexer.storage.db import JobItem, make_engine, session_factory
from indexer.storage.migrate import init_db
from tests.media_fixtures import MEDIA, speech_video

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not MEDIA.exists(), reason=f"no test media at {MEDIA}")]

ROOT = Path(__file__).resolve().parents[1]

# A worker process built the way `save-search worker` builds one (no --worker-id), in speech mode with a silent
# transcriber (no Whisper needed). HOLD: claim one item, make its scratch folder and keep it (a long video).
# CRASH: run normally but die by SIGKILL right after the thumbnail is moved into place, before the commit.
WORKER_SCRIPT = textwrap.dedent("""
    import os, signal, sys, time
    from indexer import services as s
    from indexer.ingest import runtimes as r
    from indexer.ingest import worker as w
    from indexer.inference.asr import Transcript
    from indexer.settings import Settings

    class Silent:
        def transcribe_pcm_file(self, path, **kwargs):
            return Transcript("", None, 0.0, os.path.getsize(path) / 32000, [])

    settings = Settings.from_env()
    worker = w.Worker(s.Services(settings), runtimes=r.IngestRuntimes(settings, transcriber=Silent()))
    if sys.argv[1] == "hold":
        worker.startup()
        [item] = worker.queue.claim(worker.owner)
        (worker.work_dir / str(item)).mkdir()
        print(worker.owner, worker.work_dir, flush=True)
        time.sleep(600)
    else:
        publish = w.publish_thumbnail
        def publish_then_die(*args):
            publish(*args)
            os.kill(os.getpid(), signal.SIGKILL)
        w.publish_thumbnail = publish_then_die
        worker.run(exit_when_idle=True)
""")


def _env(home: Path, lease_s: float = 600) -> dict[str, str]:
    env = dict(os.environ)
    env.update(SAVE_SEARCH_HOME=str(home), SAVE_SEARCH_MODEL=str(home / "no-visual-model"), PYTHONUNBUFFERED="1",
               SAVE_SEARCH_LEASE_SECONDS=str(lease_s), OMP_NUM_THREADS="1")
    return env


def _queue(home: Path) -> JobQueue:
    url = f"sqlite:///{home / 'save_search.db'}"
    init_db(url)
    return JobQueue(session_factory(make_engine(url)))


def test_default_worker_ids_are_unique_per_process():
    assert default_owner() != default_owner()
    assert default_owner("fixed") == "fixed"


def test_two_workers_started_the_same_way_do_not_interfere(tmp_path):
    home = tmp_path / "home"
    clip = speech_video(MEDIA / "speech" / "ljspeech" / "LJ001-0014.wav", tmp_path / "a.mp4")
    queue = _queue(home)
    queue.enqueue("bulk", [clip])
    holder = subprocess.Popen([sys.executable, "-c", WORKER_SCRIPT, "hold"], env=_env(home), cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        owner, work_dir = holder.stdout.readline().split()
        # The second one, started exactly like the first, runs its start-up and polls for a while.
        second = subprocess.Popen([sys.executable, "-m", "app.cli", "worker"], env=_env(home), cwd=ROOT,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        time.sleep(12)  # model loading, start-up recovery and several polls
        second.send_signal(signal.SIGTERM)
        assert second.wait(timeout=60) == 0
        with queue.sessions() as s:
            [item] = s.scalars(select(JobItem))
        assert (item.status, item.lease_owner, item.attempts) == ("running", owner, 1)  # not requeued, not redone
        assert Path(work_dir, str(item.id)).is_dir()  # its scratch folder survived the other's start-up
        assert holder.poll() is None
    finally:
        holder.kill()
        holder.wait()


def test_a_worker_id_alive_on_this_host_is_refused(tmp_path):
    from indexer.ingest.workdir import WorkerIdInUse, claim_work_dir, sweep_abandoned_work_dirs

    work, fd = claim_work_dir(tmp_path / "work", "same-id")
    try:
        (work / "7").mkdir()
        with pytest.raises(WorkerIdInUse):
            claim_work_dir(tmp_path / "work", "same-id")
        assert sweep_abandoned_work_dirs(tmp_path / "work") == 0 and (work / "7").is_dir()
    finally:
        os.close(fd)
    assert sweep_abandoned_work_dirs(tmp_path / "work") == 1 and not work.exists()


def test_kill_between_thumbnail_and_commit_leaves_no_orphan(tmp_path):
    from indexer.ingest.worker import Worker
    from indexer.services import Services
    from indexer.settings import Settings

    home = tmp_path / "home"
    clip = speech_video(MEDIA / "speech" / "ljspeech" / "LJ001-0015.wav", tmp_path / "b.mp4")
    queue = _queue(home)
    job_id = queue.enqueue("bulk", [clip])
    crashed = subprocess.run([sys.executable, "-c", WORKER_SCRIPT, "crash"], env=_env(home, lease_s=1), cwd=ROOT,
                             capture_output=True, text=True, timeout=300)
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr[-3000:]
    thumbs = home / "media" / "thumbnails"
    assert len(list(thumbs.iterdir())) == 1  # moved into place, never committed: an orphan for now
    assert len(list((home / "work").iterdir())) == 2  # the dead worker's scratch folder and lock
    clip.unlink()  # the retry fails: nothing will ever refer to that thumbnail

    time.sleep(1.5)  # the dead worker's lease (1 s) runs out
    services = Services(Settings(home=home, model=str(home / "no-visual-model"), lease_seconds=1))
    worker = Worker(services)
    worker.orphan_grace_s = 0.0  # the default waits minutes, in case a live worker is between move and commit
    worker.run(exit_when_idle=True)
    summary = worker.queue.summary(job_id)
    assert summary.status == "failed" and summary.items[0].error_kind == "not_found", summary
    assert list(thumbs.iterdir()) == []
    assert list((home / "work").iterdir()) == []  # the dead worker's folder swept, this one's removed at exit
