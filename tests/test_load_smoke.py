"""A 5-second, 10-client run of ``bench/load_test.py``: concurrent searches on a real server never fail.

Timing is not asserted (CI machines vary; the numbers belong in BENCHMARKS.md); errors are. It catches what
only concurrency shows: threads sharing the SQLite connection pool, the FAISS index lock, the query batcher.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.media_fixtures import MEDIA

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not MEDIA.exists(), reason=f"no test media at {MEDIA}")]


def test_ten_clients_for_five_seconds_without_errors(tmp_path: Path) -> None:
    from bench.load_test import drive, error_report, ingest, make_clips, running_server, server_problems, warm_up

    clips = make_clips(tmp_path / "clips", count=3)
    home = tmp_path / "home"
    with running_server(home) as base_url:
        video_ids = ingest(base_url, clips)
        asyncio.run(warm_up(base_url, video_ids))
        result = asyncio.run(drive(base_url, clients=10, seconds=5.0, video_ids=video_ids, max_requests=20_000))
    assert result.requests > 0
    assert set(result.latencies) >= {"search-repeat", "search-new"}, result.latencies.keys()
    log = home / "server.log"
    assert result.error_count == 0, f"{error_report([result])}\n--- server log ---\n{log.read_text()[-5000:]}"
    assert not server_problems(log), log.read_text()[-5000:]
