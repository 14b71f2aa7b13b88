"""The ingest worker end to end on real recordings: speech mode (no visual weights) and full SAVE mode (the tiny
random model saved to local folders, loaded through the code path real weights take), duplicates, bad input in
a bulk job, and the search results' contract."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import func, select

from indexer.inference.asr_quality import corpus_wer
from indexer.ingest.jobs import FINISHED_STATUSES
from indexer.ingest.worker import Worker
from indexer.search.service import SearchService
from indexer.services import Services
from indexer.settings import Settings
from indexer.storage.db import JobItem, Segment, Video
from tests.media_fixtures import MEDIA, ljspeech_transcripts, speech_video

pytestmark = pytest.mark.skipif(not MEDIA.exists(), reason=f"real test media not found at {MEDIA}")

LJ_IDS = ["LJ001-0001", "LJ001-0002", "LJ001-0003", "LJ001-0004", "LJ001-0005", "LJ001-0006"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """Speech clips wrapped into videos, plus two real video clips (one without an audio track)."""
    root = tmp_path_factory.mktemp("corpus")
    speech_video(MEDIA / "speech" / "jfk.flac", root / "jfk.mp4", color=(200, 30, 30))
    for i, lj in enumerate(LJ_IDS):
        speech_video(MEDIA / "speech" / "ljspeech" / f"{lj}.wav", root / f"{lj}.mp4", color=(20 * i, 100, 200 - 20 * i))
    shutil.copy(MEDIA / "video" / "silence_girl.mp4", root / "silence_girl.mp4")
    shutil.copy(MEDIA / "video" / "dog_barking.mp4", root / "dog_barking.mp4")
    return root


def _ingest(services: Services, paths: list[Path]) -> int:
    worker = Worker(services, owner="test-worker")
    job_id = worker.queue.enqueue("bulk", paths)
    worker.startup()
    try:
        while worker.queue.summary(job_id).status not in FINISHED_STATUSES:
            assert worker.run_once() > 0 or worker.queue.pending() > 0
    finally:
        worker.shutdown()  # the next _ingest starts a worker under the same id
    return job_id


@pytest.fixture(scope="module")
def speech_services(tmp_path_factory, corpus) -> Services:
    home = tmp_path_factory.mktemp("home-speech")
    settings = Settings(home=home, model=str(home / "no-such-model"), expected_languages=["en"])
    services = Services(settings)
    _ingest(services, sorted(corpus.iterdir()))
    return services


@pytest.mark.slow
def test_speech_mode_is_reported_and_transcripts_are_indexed(speech_services):
    status = speech_services.encoder.status()
    assert status.mode == "speech" and "could not be loaded" in status.reason
    with speech_services.sessions() as s:
        videos = {v.filename: v for v in s.scalars(select(Video))}
        assert len(videos) == 9
        assert videos["silence_girl.mp4"].has_audio is False and videos["silence_girl.mp4"].transcript == ""
        assert "ask not what your country can do for you" in videos["jfk.mp4"].transcript.lower().replace(",", "")
        assert all(v.model_version is None and v.model_mode == "speech" for v in videos.values())
        # each write of a video's text is tagged, so a search process's passage cache can serve it
        assert all(v.text_tag is not None for v in videos.values())
        assert len({v.text_tag for v in videos.values()}) == len(videos)
        assert s.scalar(select(func.count()).select_from(Segment)) >= 8
        refs = ljspeech_transcripts()
        wer = corpus_wer([(refs[lj], videos[f"{lj}.mp4"].transcript) for lj in LJ_IDS])
    print(f"\nWER of the bundled Whisper base on {len(LJ_IDS)} LJSpeech clips inside videos: {wer:.3f}")
    assert wer < 0.15


@pytest.mark.slow
@pytest.mark.parametrize(("query", "expected"), [
    ("do something for your nation instead of asking what it does for you", "jfk.mp4"),
    ("when movable metal type was invented in the fifteenth century", "LJ001-0005.mp4"),
    ("how printing compares with the other arts and crafts shown at the exhibition", "LJ001-0001.mp4"),
    ("Chinese woodblock impressions", "LJ001-0003.mp4"),
])
def test_paraphrased_speech_finds_the_right_clip_first(speech_services, query, expected):
    page = SearchService(speech_services).search(query, k=5)
    assert page.mode == "speech" and page.notes
    top = page.results[0]
    assert top.filename == expected, [(r.filename, r.score) for r in page.results]
    assert top.visual_score is None and 0 < top.speech_score <= 1
    assert top.segment is not None and top.segment.end > top.segment.start
    assert top.transcript


@pytest.mark.slow
def test_result_schema_and_pagination(speech_services):
    service = SearchService(speech_services)
    full = service.search("printing press and books", k=6)
    first = service.search("printing press and books", k=3)
    second = service.search("printing press and books", k=3, offset=3)
    assert [r.video_id for r in first.results + second.results] == [r.video_id for r in full.results]
    row = full.results[0].to_dict()
    assert {"video_id", "filename", "score", "transcript", "segment", "visual_score", "speech_score",
            "duration"} <= set(row)
    assert {"start", "end", "text"} <= set(row["segment"])
    with pytest.raises(ValueError, match="empty"):
        service.search("   ")
    with pytest.raises(ValueError, match="k must be"):
        service.search("x", k=1000)


@pytest.mark.slow
def test_same_file_twice_is_one_video(speech_services, corpus, tmp_path):
    copy = tmp_path / "renamed_copy.mp4"
    shutil.copy(corpus / "jfk.mp4", copy)
    with speech_services.sessions() as s:
        before = s.scalar(select(func.count()).select_from(Video))
        jfk_id = s.scalar(select(Video.id).where(Video.filename == "jfk.mp4"))
    job = _ingest(speech_services, [copy, corpus / "jfk.mp4"])
    with speech_services.sessions() as s:
        assert s.scalar(select(func.count()).select_from(Video)) == before
        items = list(s.scalars(select(JobItem).where(JobItem.job_id == job)))
    assert [i.status for i in items] == ["done", "done"] and {i.video_id for i in items} == {jfk_id}


@pytest.mark.slow
def test_bad_files_fail_alone_with_reasons(speech_services, corpus, tmp_path):
    (tmp_path / "empty.mp4").write_bytes(b"")
    (tmp_path / "notes.mp4").write_text("this is a text file, not a video\n" * 20)
    shutil.copy(MEDIA / "speech" / "jfk.flac", tmp_path / "speech_only.flac")
    good = tmp_path / "LJ001-0007.mp4"
    speech_video(MEDIA / "speech" / "ljspeech" / "LJ001-0007.wav", good)
    paths = [tmp_path / "empty.mp4", tmp_path / "notes.mp4", tmp_path / "speech_only.flac", tmp_path / "missing.mp4",
             good]
    job = _ingest(speech_services, paths)
    summary = Worker(speech_services, owner="reader").queue.summary(job)
    by_name = {Path(i.path).name: i for i in summary.items}
    assert summary.status == "done" and summary.done == 1 and summary.failed == 4
    assert by_name["LJ001-0007.mp4"].status == "done"
    assert by_name["empty.mp4"].error_kind == "empty_file"
    assert by_name["notes.mp4"].error_kind == "not_media"
    assert by_name["speech_only.flac"].error_kind == "no_video_stream"
    assert by_name["missing.mp4"].error_kind == "not_found"
    for name in ("empty.mp4", "notes.mp4", "speech_only.flac", "missing.mp4"):
        assert by_name[name].error and by_name[name].attempts <= 1, by_name[name]


@pytest.mark.slow
def test_full_save_mode_with_local_folder_weights(tmp_path, corpus, tiny_weights):
    clip_dir, ast_dir = tiny_weights
    settings = Settings(home=tmp_path / "home", model="tiny", clip_source=str(clip_dir), audio_source=str(ast_dir),
                        expected_languages=["en"])
    services = Services(settings)
    status = services.encoder.status()
    assert status.mode == "zero-shot-clip" and status.model_version
    files = [corpus / "jfk.mp4", corpus / "LJ001-0001.mp4", corpus / "silence_girl.mp4", corpus / "dog_barking.mp4"]
    _ingest(services, files)
    with services.sessions() as s:
        videos = list(s.scalars(select(Video)))
        assert len(videos) == 4
        assert all(v.model_version == status.model_version and v.feature_shard for v in videos)
        ids = {v.id for v in videos}
    assert set(services.catalog.videos.index.ids().tolist()) == ids
    page = SearchService(services).search("ask what you can do for your country", k=4)
    assert page.mode == "zero-shot-clip"
    assert page.results[0].filename == "jfk.mp4"  # the random visual model cannot help; speech decides
    assert all(r.visual_score is not None for r in page.results)
    # Calibrated channels fused as "at least one is right": 1 - (1 - visual)(1 - speech), speech absent = 0.
    for r in page.results:
        assert 0.0 <= r.visual_score <= 1.0 and r.raw_visual is not None
        expected = 1 - (1 - r.visual_score) * (1 - (r.speech_score or 0.0))
        assert r.score == pytest.approx(expected, abs=2e-6), r
    silent = next(r for r in page.results if r.filename == "silence_girl.mp4")
    assert silent.speech_score is None and silent.score == pytest.approx(silent.visual_score, abs=1e-6)
    # the stored features re-score exactly: compare with a fresh encode of the same video
    from indexer.storage.shards import FeatureRef

    with services.sessions() as s:
        v = s.scalar(select(Video).where(Video.filename == "silence_girl.mp4"))
        frames, mask = SearchService(services).store.read_many([FeatureRef(v.feature_shard, v.feature_offset)])
    assert frames.shape == (1, 12, 32) and mask[0].sum() >= 1
    norms = np.linalg.norm(frames[0][mask[0].astype(bool)].astype(np.float32), axis=-1)
    np.testing.assert_allclose(norms, 1.0, atol=2e-3)


@pytest.mark.slow
def test_cli_ingest_wait_json_and_search_json(tmp_path, corpus, monkeypatch):
    from typer.testing import CliRunner

    from app.cli import app

    monkeypatch.setenv("SAVE_SEARCH_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("SAVE_SEARCH_MODEL", str(tmp_path / "none"))
    (tmp_path / "in").mkdir()
    shutil.copy(corpus / "jfk.mp4", tmp_path / "in" / "jfk.mp4")
    (tmp_path / "in" / "sub").mkdir()
    shutil.copy(corpus / "LJ001-0002.mp4", tmp_path / "in" / "sub" / "lj2.mp4")
    (tmp_path / "in" / "broken.mp4").write_bytes(b"\x00" * 100)
    runner = CliRunner()
    result = runner.invoke(app, ["ingest", str(tmp_path / "in"), "--recursive", "--wait", "--json"])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert len(rows) == 3 and all({"path", "video_id", "status", "error"} <= set(r) for r in rows)
    by_name = {Path(r["path"]).name: r for r in rows}
    assert by_name["jfk.mp4"]["status"] == "done" and by_name["jfk.mp4"]["video_id"]
    assert by_name["broken.mp4"]["status"] == "failed" and by_name["broken.mp4"]["error"]
    result = runner.invoke(app, ["search", "ask not what your country can do", "--k", "2", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["results"][0]["filename"] == "jfk.mp4"
    assert {"video_id", "filename", "score", "transcript", "segment"} <= set(data["results"][0])


@pytest.mark.slow
@pytest.mark.parametrize("fresh_db_url", ["postgres"], indirect=True)
def test_postgres_backend_end_to_end(fresh_db_url, tmp_path, corpus):
    settings = Settings(home=tmp_path / "home", database_url=fresh_db_url, model=str(tmp_path / "none"),
                        expected_languages=["en"])
    services = Services(settings)
    assert services.engine.dialect.name == "postgresql"
    _ingest(services, [corpus / "jfk.mp4", corpus / "LJ001-0005.mp4", corpus / "jfk.mp4"])
    with services.sessions() as s:
        assert s.scalar(select(func.count()).select_from(Video)) == 2
    service = SearchService(services)
    assert service.search("movable metal letters invented", k=2).results[0].filename == "LJ001-0005.mp4"
    top = service.search("ask what you can do for your country", k=2).results[0]
    assert top.filename == "jfk.mp4" and "country" in top.segment.text.lower()


@pytest.mark.slow
def test_model_change_requires_and_offers_reindex(tmp_path, corpus, tiny_weights):
    from indexer.ingest.reindex import rebuild_indexes, reencode_stale

    home = tmp_path / "home"
    speech = Services(Settings(home=home, model=str(tmp_path / "none")))
    _ingest(speech, [corpus / "jfk.mp4", corpus / "silence_girl.mp4"])
    clip_dir, ast_dir = tiny_weights
    full = Services(Settings(home=home, model="tiny", clip_source=str(clip_dir), audio_source=str(ast_dir)))
    assert full.stale_videos() == 2
    assert len(full.catalog.videos.index) == 0  # other embedding spaces are never mixed in
    assert all(r.visual_score is None for r in SearchService(full).search("a girl", k=2).results)
    assert reencode_stale(full) == (2, 0)
    assert full.stale_videos() == 0
    counts = rebuild_indexes(full)
    assert counts["videos"] == 2 and counts["passages"] >= 1
    results = SearchService(full).search("a girl", k=2).results
    assert len(results) == 2 and all(r.visual_score is not None for r in results)
