"""Ranking on real recordings, through the real worker (bundled Whisper base, default settings) and search:
the orderings that the retrieval benchmark (bench/retrieval_bench.py) showed matter, so they cannot regress.

- adversarial: a rare query word said in an unrelated clip must not beat the clip that says the same thing in
  other words (the previous fusion let one shared word replace the meaning score);
- numbers: "fourteen sixty two" meets "1462", "the 10 of clubs" meets "ten of clubs", in both directions;
- moments: a paraphrase of a sonnet line plays from that line (within 1.5 s);
- scores: calibrated into [0, 1], the right clip clearly above an unrelated one.
The queries are the benchmark's own (bench/data/retrieval_queries.tsv), on a subset of its clips.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from indexer.evaluation import MOMENT_TOLERANCE_S, evaluate, read_queries
from indexer.search import SearchService
from indexer.settings import Settings
from indexer.worker import Services, Worker
from tests.media_fixtures import MEDIA, speech_video

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not MEDIA.exists(), reason=f"real test media not found at {MEDIA}")]

QUERIES = Path(__file__).resolve().parents[1] / "bench" / "data" / "retrieval_queries.tsv"
LJ = ("LJ001-0003", "LJ001-0007", "LJ001-0018", "LJ001-0022", "LJ001-0023", "LJ001-0024", "LJ001-0031")
CARDS = ("001", "003", "005")


@pytest.fixture(scope="module")
def search(tmp_path_factory) -> SearchService:
    root = tmp_path_factory.mktemp("quality-corpus")
    speech = MEDIA / "speech"
    for lj in LJ:
        speech_video(speech / "ljspeech" / f"{lj}.wav", root / f"{lj}.mp4")
    for card in CARDS:
        speech_video(speech / "cards" / f"{card}.wav", root / f"cards-{card}.mp4")
    speech_video(speech / "sonnet" / "audio.mp3", root / "sonnet.mp4")
    speech_video(speech / "jfk.flac", root / "jfk.mp4")
    shutil.copy(MEDIA / "video" / "Megamind.avi", root / "Megamind.avi")
    home = tmp_path_factory.mktemp("quality-home")
    services = Services(Settings(home=home, model=str(home / "no-such-model")))
    worker = Worker(services, owner="quality")
    job = worker.queue.enqueue("bulk", sorted(root.iterdir()))
    worker.startup()
    while worker.queue.summary(job).status not in ("done", "failed"):
        assert worker.run_once() > 0 or worker.queue.pending() > 0
    return SearchService(services)


def _queries(kinds: set[str]) -> list:
    names = {f"{lj}.mp4" for lj in LJ} | {f"cards-{c}.mp4" for c in CARDS} | {"sonnet.mp4", "jfk.mp4", "Megamind.avi"}
    return [q for q in read_queries(QUERIES) if q.kind in kinds and q.expected in names]


def test_one_shared_rare_word_does_not_beat_the_meaning(search: SearchService) -> None:
    queries = _queries({"adversarial"})
    assert len(queries) >= 4
    report = evaluate(search, queries)
    assert [(o.query, o.rank) for o in report.outcomes] == [(o.query, 1) for o in report.outcomes]


def test_numbers_meet_however_they_are_written(search: SearchService) -> None:
    queries = _queries({"number"})
    assert len(queries) >= 5
    report = evaluate(search, queries)
    assert [(o.query, o.rank) for o in report.outcomes] == [(o.query, 1) for o in report.outcomes]
    for query, expected in [("fourteen sixty two, first dated bible", "LJ001-0024.mp4"),
                            ("ten of clubs", "cards-001.mp4"), ("the 7 of clubs", "cards-003.mp4")]:
        assert search.search(query, k=1).results[0].filename == expected, query


def test_sonnet_paraphrases_play_from_their_line(search: SearchService) -> None:
    report = evaluate(search, _queries({"moment"}))
    assert report.r1 == 1.0
    # Whisper base cuts the 53 s reading into a few long segments, so not every line can be reached within
    # the tolerance; the benchmark measured the rate, this keeps it from falling.
    assert report.moment_accuracy is not None and report.moment_accuracy >= 0.5, [
        (o.query, o.moment_start) for o in report.outcomes]
    assert MOMENT_TOLERANCE_S == 1.5


def test_scores_are_calibrated_probabilities(search: SearchService) -> None:
    page = search.search("don't ask what the nation can do for you but what you can do for it", k=5)
    top, rest = page.results[0], page.results[1:]
    assert top.filename == "jfk.mp4" and top.score == top.speech_score and top.visual_score is None
    assert top.score > 0.8 and all(0.0 <= r.score < 0.5 for r in rest), [(r.filename, r.score) for r in page.results]
