"""On-screen text as stored and searched text: the contract between the OCR stage (``indexer.inference.ocr``) and
storage, scoring, re-indexing and the API, with a stand-in reader that returns known spans (the real OCR end to end:
``test_screen_text_e2e.py``). Real SQLite and PostgreSQL for the migration, the real MiniLM, FAISS and worker."""

from __future__ import annotations

import shutil
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, text

from indexer.enums import Source
from indexer.ingest.runtimes import IngestRuntimes
from indexer.ingest.worker import Worker
from indexer.passages import MAX_WINDOW, embed_transcript
from indexer.search.ranking import Ranking
from indexer.search.service import SearchService
from indexer.services import Services
from indexer.settings import Settings
from indexer.storage.db import Passage, Segment, Video, make_engine, session_factory
from tests.helpers import migrate_to
from tests.media_fixtures import MEDIA, needs_media

SPEECH, SCREEN = Source.SPEECH, Source.SCREEN

SILENT_CLIP = MEDIA / "video" / "silence_girl.mp4"  # no audio track: ingest never loads Whisper

REVENUE = (2.0, 7.0, "Quarterly results: revenue up 12 percent")
THANKS = (8.0, 10.0, "Thank you for watching")
PRINTING = [(0.0, 4.0, "Printing, in the only sense with which we are at present concerned,"),
            (4.0, 9.0, "differs from most if not from all the arts and crafts represented in the Exhibition.")]
RECIPE_SPEECH = [(0.0, 5.0, "Today we are going to bake a loaf of sourdough bread at home.")]
RECIPE_SCREEN = [(1.0, 6.0, "Step 1: mix 500 g flour with 350 ml water"), (6.0, 11.0, "Step 2: rest for one hour")]


class FakeReader:
    """Returns fixed spans (or raises), and counts its calls: the storage contract without the OCR model."""

    def __init__(self, spans: Iterable[tuple[float, float, str]] = (), error: Exception | None = None) -> None:
        from indexer.inference.ocr import ScreenSpan

        self.spans = [ScreenSpan(a, b, t, 0.95) for a, b, t in spans]
        self.error = error
        self.calls = 0

    def read(self, video_path: Path, duration_s: float | None = None) -> list:
        self.calls += 1
        if self.error is not None:
            raise self.error
        return list(self.spans)


class UnitSentences:
    """A sentence encoder stand-in for pure passage-cutting tests (every text the same unit vector)."""

    dim = 4

    def encode(self, texts):
        return np.tile(np.array([1.0, 0.0, 0.0, 0.0], np.float32), (len(texts), 1))


def test_screen_spans_follow_speech_and_are_never_windowed_with_it() -> None:
    screen = [THANKS, REVENUE, (9.0, 9.5, "   ")]  # out of order and a blank one: sorted, blank dropped
    text = embed_transcript(UnitSentences(), PRINTING, normalized=False, screen=screen)
    segments, passages = text.rows()
    assert [(g.idx, g.source, g.text) for g in segments] == [
        (0, SPEECH, PRINTING[0][2]), (1, SPEECH, PRINTING[1][2]), (2, SCREEN, REVENUE[2]), (3, SCREEN, THANKS[2])]
    by_source = {g.idx: g.source for g in segments}
    for p in passages:
        assert {by_source[i] for i in range(p.first_idx, p.last_idx + 1)} == {p.source}
    screen_passages = sorted((p.first_idx, p.last_idx, p.start_s, p.end_s) for p in passages if p.source == SCREEN)
    assert screen_passages == [(2, 2, 2.0, 7.0), (2, 3, 2.0, 10.0), (3, 3, 8.0, 10.0)]
    assert all(p.last_idx - p.first_idx < MAX_WINDOW for p in passages)
    assert len(passages) == len(text.embeddings)


def test_migration_0004_marks_existing_rows_speech_and_downgrades_without_screen_text(fresh_db_url: str) -> None:
    from indexer.search.fulltext import search_segments

    def migrate(target: str, down: bool = False) -> None:
        migrate_to(fresh_db_url, target, down)

    migrate("0003")
    eng = make_engine(fresh_db_url)
    try:
        with eng.begin() as conn:
            conn.execute(text("INSERT INTO videos (id, content_hash, filename, source_path, size_bytes, duration_s, "
                              "has_audio, transcript, model_mode, status, created_at) VALUES (1, 'h', 'a.mp4', '/a', "
                              "1, 2.0, true, 'the harbour at dawn', 'speech', 'indexed', '2026-01-01')"))
            conn.execute(text("INSERT INTO segments (id, video_id, idx, start_s, end_s, text, norm_text) VALUES "
                              "(5, 1, 0, 0.0, 2.0, 'the harbour at dawn', 'the harbor at dawn')"))
            conn.execute(text("INSERT INTO passages (video_id, first_idx, last_idx, start_s, end_s, embedding) "
                              "VALUES (1, 0, 0, 0.0, 2.0, :e)"), {"e": b"\x00\x3c" * 4})
        migrate("head")
        with session_factory(eng)() as s:
            assert s.get(Segment, 5).source == SPEECH and s.scalars(select(Passage)).one().source == SPEECH
            video = s.get(Video, 1)
            assert video.ocr_status is None and video.ocr_error is None  # never read: reindex --ocr picks it up
            video.segments.append(Segment(idx=1, start_s=0.5, end_s=1.5, text="HARBOUR CAFE", source=SCREEN))
            video.passages.append(Passage(first_idx=1, last_idx=1, start_s=0.5, end_s=1.5, embedding=b"\x00\x3c" * 4,
                                          source=SCREEN))
            video.ocr_status = "read"
            s.commit()
            assert {h.segment_id for h in search_segments(s, "harbour cafe")} == {5, video.segments[1].id}
        migrate("0003", down=True)
        with session_factory(eng)() as s:  # screen text goes; speech stays, full text still in sync
            assert s.scalar(text("SELECT count(*) FROM segments")) == 1
            assert s.scalar(text("SELECT count(*) FROM passages")) == 1
            assert [h.segment_id for h in search_segments(s, "harbour")] == [5]
        migrate("head")
    finally:
        eng.dispose()


@pytest.fixture(scope="module")
def services(tmp_path_factory) -> Services:
    home = tmp_path_factory.mktemp("screen-home")
    return Services(Settings(home=home, model=str(home / "no-visual-model")))


def _add_video(services: Services, name: str, speech: list, screen: list, ocr_status: str | None = "read") -> int:
    text = embed_transcript(services.sentences, speech, services.settings.search.normalize_sentence_input, screen)
    segments, passages = text.rows()
    with services.sessions.begin() as s:
        video = Video(content_hash=name.ljust(64, "0"), filename=name, source_path=str(SILENT_CLIP), size_bytes=1,
                      duration_s=12.0, has_audio=bool(speech), transcript=" ".join(t for _, _, t in speech),
                      model_mode="speech", ocr_status=ocr_status)
        video.segments.extend(segments)
        video.passages.extend(passages)
        s.add(video)
        s.flush()
        video_id = video.id
    with services.index_lock:
        services.catalog.sync_and_publish()
    return video_id


@pytest.fixture(scope="module")
def collection(services: Services) -> dict[str, int]:
    return {"printing": _add_video(services, "printing.mp4", PRINTING, []),
            "slides": _add_video(services, "slides.mp4", [], [REVENUE, THANKS]),
            "recipe": _add_video(services, "recipe.mp4", RECIPE_SPEECH, RECIPE_SCREEN)}


def _result(page, video_id: int):
    return next((r for r in page.results if r.video_id == video_id), None)


def test_text_shown_on_screen_is_found_with_its_span_as_the_moment(services, collection) -> None:
    page = SearchService(services).search("how much did sales grow this quarter", k=5)
    top = page.results[0]
    assert top.video_id == collection["slides"], [r.filename for r in page.results]
    assert top.speech_score is None and top.screen_score is not None and top.score == top.screen_score
    assert (top.segment.start, top.segment.end, top.segment.source) == (2.0, 7.0, SCREEN)
    assert top.segment.text == REVENUE[2]


def test_screen_channel_off_and_as_speech(services, collection) -> None:
    query = "how much did sales grow this quarter"
    off = SearchService(services, ranking=Ranking.from_settings(services.settings).with_(screen="off")).search(query)
    ignored = _result(off, collection["slides"])  # found by its words, but no channel scores it
    assert ignored is None or (ignored.score == 0 and ignored.segment is None and ignored.screen_score is None)
    merged = SearchService(services, ranking=Ranking.from_settings(services.settings).with_(screen="as-speech"))
    top = merged.search(query).results[0]
    assert top.video_id == collection["slides"] and top.screen_score is None and top.speech_score is not None
    assert top.segment.source == SCREEN  # the moment still says where its text came from


def test_speech_only_videos_score_as_before(services, collection) -> None:
    query = "printing differs from the other crafts at the exhibition"
    ranking = Ranking.from_settings(services.settings)
    with_screen = _result(SearchService(services, ranking=ranking).search(query), collection["printing"])
    without = _result(SearchService(services, ranking=ranking.with_(screen="off")).search(query),
                      collection["printing"])
    assert with_screen.score == without.score == with_screen.speech_score and with_screen.screen_score is None
    assert with_screen.segment.source == SPEECH


def test_fusion_of_speech_and_screen_and_the_surer_moment(services, collection) -> None:
    page = SearchService(services).search("how much flour and water go into the dough", k=5)
    top = page.results[0]
    assert top.video_id == collection["recipe"]
    assert top.screen_score > top.speech_score > 0
    assert top.score == pytest.approx(1 - (1 - top.speech_score) * (1 - top.screen_score), abs=1e-5)
    assert (top.segment.source, top.segment.start) == (SCREEN, 1.0)
    said = SearchService(services).search("baking sourdough bread in your own kitchen", k=5).results[0]
    assert said.video_id == collection["recipe"] and said.segment.source == SPEECH


def _ingest(services: Services, path: Path, owner: str, reader: FakeReader) -> Video:
    worker = Worker(services, owner=owner, runtimes=IngestRuntimes(services.settings, screen_reader=reader))
    worker.startup()
    job = worker.queue.enqueue("bulk", [str(path)])
    while worker.queue.summary(job).status not in ("done", "failed"):
        assert worker.run_once() > 0 or worker.queue.pending() > 0
    assert worker.queue.summary(job).status == "done"
    with services.sessions() as s:
        video = s.scalars(select(Video).where(Video.filename == path.name)).one()
        _ = video.segments, video.passages
        return video


@needs_media
def test_worker_stores_screen_spans_and_survives_a_failing_reader(services, tmp_path, monkeypatch) -> None:
    reader = FakeReader([REVENUE])
    clip = shutil.copy(SILENT_CLIP, tmp_path / "slides-worker.mp4")
    video = _ingest(services, Path(clip), "screen-ok", reader)
    assert reader.calls == 1 and video.ocr_status == "read" and video.ocr_error is None
    assert [(g.idx, g.source, g.start_s, g.end_s, g.text) for g in video.segments] == [(0, SCREEN, *REVENUE)]
    assert [(p.source, p.first_idx) for p in video.passages] == [(SCREEN, 0)]

    broken = tmp_path / "slides-broken.mp4"
    broken.write_bytes(SILENT_CLIP.read_bytes() + b"\x00")  # another file (hash), same picture
    video = _ingest(services, broken, "screen-broken", FakeReader(error=RuntimeError("model exploded")))
    assert video.status == "indexed" and video.ocr_status == "failed" and "model exploded" in video.ocr_error
    assert video.segments == []

    off = FakeReader([REVENUE])
    monkeypatch.setattr(services.settings.ocr, "enabled", False)
    quiet = tmp_path / "slides-off.mp4"
    quiet.write_bytes(SILENT_CLIP.read_bytes() + b"\x00\x00")
    video = _ingest(services, quiet, "screen-off", off)
    assert off.calls == 0 and video.ocr_status is None and video.segments == []


@needs_media
def test_reindex_ocr_adds_screen_text_to_videos_indexed_without_it(services, collection, monkeypatch) -> None:
    from indexer.ingest.reindex import reindex_ocr

    old = _add_video(services, "old-lesson.mp4", PRINTING, [], ocr_status=None)
    reader = FakeReader([(0.0, 3.0, "Lesson 4: the history of typefaces")])
    seen: list[tuple[int, int]] = []
    read, failed = reindex_ocr(services, progress=lambda done, total, video: seen.append((done, video.id)),
                               runtimes=IngestRuntimes(services.settings, screen_reader=reader))
    assert failed == 0 and read >= 1 and (read, old) in seen  # every never-read video, ending with this one
    with services.sessions() as s:
        video = s.get(Video, old)
        assert video.ocr_status == "read" and video.text_tag is not None  # a new tag: caches read it again
        assert [(g.idx, g.source) for g in video.segments] == [(0, SPEECH), (1, SPEECH), (2, SCREEN)]
        assert {(p.first_idx, p.last_idx, p.source) for p in video.passages} == {
            (0, 0, SPEECH), (1, 1, SPEECH), (0, 1, SPEECH), (2, 2, SCREEN)}
    assert reindex_ocr(services) == (0, 0)  # nothing left to read
    with services.index_lock:
        services.catalog.sync_and_publish()
    top = SearchService(services).search("a class about the story of fonts", k=3).results[0]
    assert top.video_id == old and top.segment.source == SCREEN


def test_api_carries_source_and_returns_screen_spans(services, collection) -> None:
    from app.main import create_app

    with TestClient(create_app(services.settings, embedded_worker=False, services=services)) as client:
        video = client.get(f"/v1/videos/{collection['recipe']}").json()
        assert [(s["text"], s["source"]) for s in video["segments"]] == [(RECIPE_SPEECH[0][2], "speech")]
        assert [(s["start"], s["end"], s["text"], s["source"]) for s in video["screen_text"]] == [
            (a, b, t, "screen") for a, b, t in RECIPE_SCREEN]
        assert video["ocr_status"] == "read" and video["ocr_error"] is None
        body = client.get("/v1/search", params={"q": "how much did sales grow this quarter"}).json()
        top = body["results"][0]
        assert top["video_id"] == collection["slides"] and top["speech_score"] is None
        assert top["screen_score"] == top["score"] > 0
        assert top["segment"]["source"] == "screen" and (top["segment"]["start"], top["segment"]["end"]) == (2.0, 7.0)
        assert top["segment"]["highlights"]  # "quarter" in "Quarterly results"
        said = client.get("/v1/search", params={"q": "printing and the other crafts"}).json()["results"][0]
        assert said["segment"]["source"] == "speech"


def test_evaluation_fits_the_screen_channel(services, collection) -> None:
    """`evaluate-search --fit-calibration` gets (raw screen score, right) pairs of its own."""
    from indexer.search.evaluation import LabelledQuery, calibration_pairs, evaluate

    queries = [LabelledQuery("how much did sales grow this quarter", "slides.mp4", 2.0, 7.0, "screen"),
               LabelledQuery("how much flour and water go into the dough", "recipe.mp4", 1.0, 6.0, "screen")]
    report = evaluate(SearchService(services), queries)
    assert report.r1 == 1.0 and report.moment_accuracy == 1.0
    screen = calibration_pairs(report.outcomes, "screen")
    speech = calibration_pairs(report.outcomes, "speech")
    assert {right for _, right in screen} == {True, False}  # the other video with on-screen text is a wrong one
    assert len(screen) >= 4 and len(speech) >= 2  # both queries see (at least) slides and recipe on screen


@needs_media
def test_cli_reindex_ocr_reads_with_the_real_model_and_reports_progress(tmp_path, monkeypatch) -> None:
    """`save-search reindex --ocr` reads videos that were never read even when ingest has OCR off."""
    from typer.testing import CliRunner

    from app.cli import app

    home = tmp_path / "home"
    monkeypatch.setenv("SAVE_SEARCH_HOME", str(home))
    monkeypatch.setenv("SAVE_SEARCH_MODEL", str(home / "no-visual-model"))
    monkeypatch.setenv("SAVE_SEARCH_OCR", "0")
    services = Services(Settings.from_env())
    assert services.settings.ocr.enabled is False
    video_id = _add_video(services, "lesson.mp4", PRINTING, [], ocr_status=None)
    result = CliRunner().invoke(app, ["reindex", "--ocr", "--rebuild-only"])
    assert result.exit_code == 0, result.output
    assert f"[1/1] on-screen text of video {video_id} (lesson.mp4): read" in result.output
    assert "read the on-screen text of 1 video(s), 0 failed" in result.output
    with services.sessions() as s:
        assert s.get(Video, video_id).ocr_status == "read"
