"""The job queue on SQLite and PostgreSQL: claims, leases, retries with backoff, outcomes, concurrency."""

from __future__ import annotations

import datetime as dt
import threading
from pathlib import Path

import pytest
from sqlalchemy import update

from indexer.errors import BadInputError, TransientError
from indexer.ingest.jobs import JobQueue, expand_paths
from indexer.storage.db import Job, JobItem, Video, make_engine, session_factory, utcnow


@pytest.fixture
def queue(db_url) -> JobQueue:
    return JobQueue(session_factory(make_engine(db_url)), max_attempts=3, lease_seconds=60, backoff_s=0.0)


def _files(tmp_path: Path, n: int) -> list[Path]:
    out = []
    for i in range(n):
        p = tmp_path / f"v{i}.mp4"
        p.write_bytes(b"x" * (i + 1))
        out.append(p)
    return out


def _video(s, item_id: int) -> int:
    v = Video(content_hash=f"h{item_id}", filename="f", source_path="p", size_bytes=1, duration_s=1.0,
              has_audio=False, model_mode="speech")
    s.add(v)
    s.flush()
    return v.id


def test_enqueue_claim_done_and_summary(queue, tmp_path):
    files = _files(tmp_path, 3)
    job = queue.enqueue("bulk", files + [tmp_path / "missing.mp4"])
    summary = queue.summary(job)
    assert summary.total == 4 and summary.failed == 1 and summary.status == "queued"
    assert summary.items[-1].error_kind == "not_found"
    ids = queue.claim("w1", limit=2)
    assert len(ids) == 2 and queue.summary(job).status == "running"
    for item_id in ids:
        with queue.sessions.begin() as s:
            assert queue.mark_done(s, item_id, "w1", _video(s, item_id), None)
    last = queue.claim("w1", limit=5)
    assert len(last) == 1
    with queue.sessions.begin() as s:
        queue.mark_done(s, last[0], "w1", _video(s, last[0]), None)
    summary = queue.summary(job)
    assert summary.status == "done" and summary.done == 3 and summary.failed == 1 and summary.progress == 1.0
    assert queue.claim("w1") == [] and queue.pending() == 0


def test_permanent_errors_fail_at_once_transient_ones_retry_then_give_up(queue, tmp_path):
    job = queue.enqueue("bulk", _files(tmp_path, 2))
    bad, flaky = queue.claim("w", limit=2)
    assert queue.mark_failed(bad, "w", BadInputError("empty", kind="empty_file")) == "failed"
    for attempt in range(1, 4):
        assert queue.mark_failed(flaky, "w", TransientError("db hiccup")) == ("queued" if attempt < 3 else "failed")
        if attempt < 3:
            assert queue.claim("w") == [flaky]
    summary = queue.summary(job)
    assert summary.status == "failed"
    by_id = {i.item_id: i for i in summary.items}
    assert by_id[bad].attempts == 1 and by_id[bad].error_kind == "empty_file"
    assert by_id[flaky].attempts == 3 and "gave up after 3 attempts" in by_id[flaky].error


def test_backoff_delays_the_retry(db_url, tmp_path):
    q = JobQueue(session_factory(make_engine(db_url)), backoff_s=30.0)
    q.enqueue("bulk", _files(tmp_path, 1))
    (item,) = q.claim("w")
    q.mark_failed(item, "w", TransientError("busy"))
    assert q.claim("w") == []  # not due for 30 s
    with q.sessions.begin() as s:
        s.execute(update(JobItem).values(next_attempt_at=utcnow() - dt.timedelta(seconds=1)))
    assert q.claim("w") == [item]


def test_expired_lease_is_reclaimed_and_the_old_owner_loses_it(queue, tmp_path):
    queue.enqueue("bulk", _files(tmp_path, 1))
    (item,) = queue.claim("dead-worker")
    assert queue.claim("other") == []
    with queue.sessions.begin() as s:
        s.execute(update(JobItem).values(lease_until=utcnow() - dt.timedelta(seconds=1)))
    assert queue.claim("other") == [item]
    assert not queue.heartbeat(item, "dead-worker")
    with queue.sessions.begin() as s:
        assert not queue.mark_done(s, item, "dead-worker", _video(s, item), None)
    assert queue.mark_failed(item, "dead-worker", TransientError("x")) == "lost"
    assert queue.heartbeat(item, "other", stage="decode", progress=0.5)


def test_restarted_worker_releases_its_own_items(queue, tmp_path):
    queue.enqueue("bulk", _files(tmp_path, 2))
    queue.claim("w1", limit=2)
    assert queue.release_own("w1") == 2
    assert len(queue.claim("w2", limit=5)) == 2


def test_concurrent_claims_never_share_an_item(db_url, tmp_path):
    engine = make_engine(db_url)
    q = JobQueue(session_factory(engine), lease_seconds=600)
    q.enqueue("bulk", _files(tmp_path, 40))
    taken: dict[str, list[int]] = {}

    def run(owner: str) -> None:
        mine = taken.setdefault(owner, [])
        while ids := q.claim(owner, limit=3):
            mine += ids

    threads = [threading.Thread(target=run, args=(f"w{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    all_ids = [i for ids in taken.values() for i in ids]
    assert len(all_ids) == 40 and len(set(all_ids)) == 40


def test_expand_paths(tmp_path):
    (tmp_path / "a.mp4").write_bytes(b"1")
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.MKV").write_bytes(b"2")
    assert [p.name for p in expand_paths([tmp_path], recursive=False)] == ["a.mp4"]
    assert [p.name for p in expand_paths([tmp_path], recursive=True)] == ["a.mp4", "b.MKV"]
    assert expand_paths([tmp_path / "nope.mp4"], recursive=True) == [tmp_path / "nope.mp4"]


def test_allowed_roots_are_enforced_per_item(queue, tmp_path):
    inside = tmp_path / "root"
    inside.mkdir()
    ok = inside / "ok.mp4"
    ok.write_bytes(b"1")
    outside = tmp_path / "elsewhere.mp4"
    outside.write_bytes(b"1")
    (inside / "link.mp4").symlink_to(outside)
    job = queue.enqueue("bulk", [ok, outside, inside / "link.mp4"], allowed_roots=[inside])
    items = {Path(i.path).name: i for i in queue.summary(job).items}
    assert items["ok.mp4"].status == "queued"
    assert items["elsewhere.mp4"].error_kind == "outside_allowed_roots"
    assert items["link.mp4"].error_kind == "outside_allowed_roots"
    with queue.sessions() as s:
        assert s.get(Job, job).status == "queued"


def test_folders_outside_the_allowed_roots_are_never_listed(queue, tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    (root / "ok.mp4").write_bytes(b"1")
    secret = tmp_path / "secret" / "deep"
    secret.mkdir(parents=True)
    (secret / "private-interview.mp4").write_bytes(b"1")
    files = expand_paths([root, tmp_path / "secret", ""], recursive=True, allowed_roots=[root])
    assert root / "ok.mp4" in files
    assert not any("private-interview" in str(f) for f in files)  # the folder was not walked
    job = queue.enqueue("bulk", files, allowed_roots=[root])
    items = queue.summary(job).items
    assert sum(i.status == "queued" for i in items) == 1
    assert all(i.error_kind == "outside_allowed_roots" for i in items if i.status == "failed")


def test_a_root_named_through_a_symlink_lists_and_admits_its_files(queue, tmp_path):
    """Listing a folder and admitting its files use the same containment rule (``within_roots``): a root given
    as a link to the real folder is the real folder."""
    real = tmp_path / "real"
    real.mkdir()
    (real / "a.mp4").write_bytes(b"1")
    link = tmp_path / "media"
    link.symlink_to(real, target_is_directory=True)
    files = expand_paths([real], recursive=True, allowed_roots=[link])
    assert files == [real / "a.mp4"]
    job = queue.enqueue("bulk", files, allowed_roots=[link])
    assert [i.status for i in queue.summary(job).items] == ["queued"]
