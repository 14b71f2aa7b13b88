"""Several moments per video: a sentence said three times in a lecture gives three moments, best first, apart in
time, the first being the result's ``segment``, each scored by its channel's calibrated map; an unrelated place is
never one. Transcripts are built directly (no Whisper) and embedded with the real MiniLM; the API and the CLI run
over the same collection.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from fastapi.testclient import TestClient

from indexer.enums import Source
from indexer.passages import embed, embed_transcript
from indexer.search.moments import (
    MOMENT_GAP_S,
    MOMENT_MIN_SCORE,
    MOMENT_RATIO,
    MOMENTS_DEFAULT,
    MOMENTS_MAX,
    choose_moments,
)
from indexer.search.ranking import Ranking, calibrate
from indexer.search.service import SearchService
from indexer.services import Services
from indexer.settings import Settings
from indexer.storage.db import Video
from tests.media_fixtures import MEDIA

SPEECH, SCREEN = Source.SPEECH, Source.SCREEN
SILENT_CLIP = MEDIA / "video" / "silence_girl.mp4"  # any real file: these videos are never decoded

PRESS = "The printing press made books cheap enough for ordinary families."
QUERY = "books became affordable for normal households thanks to the press"
MUSEUM = (120.0, 126.0, "Next week we will visit the museum by bus, so please bring a packed lunch.")
GUTENBERG = (240.0, 246.0, "Gutenberg was born in the city of Mainz around the year fourteen hundred.")
LECTURE = [  # a 5-minute lecture: the sentence at 5 s, 66 s and 180 s, each time between other sentences
    (0.0, 5.0, "Good morning, and welcome back to our course on the history of the book."),
    (5.0, 10.0, PRESS),
    (10.0, 15.0, "Before that, monks copied every page by hand in cold monasteries."),
    (60.0, 66.0, "Paper mills along the rivers supplied the early printers with paper."),
    (66.0, 71.0, "So, once again: the printing press made books cheap enough for ordinary families."),
    MUSEUM,
    (180.0, 185.0, "Remember, the printing press made books cheap enough for ordinary families."),
    (185.0, 190.0, "That is all for today, thank you for listening."),
    GUTENBERG,
]
SAID_AT = [5.0, 66.0, 180.0]
SLIDES_SPEECH = [(0.0, 6.0, "Welcome to the evening news, here are tonight's headlines."),
                 (40.0, 46.0, "In other news, the printing press made books cheap enough for ordinary families.")]
SLIDES_SCREEN = [(100.0, 110.0, "The printing press made books cheap for ordinary families")]


@pytest.fixture(scope="module")
def services(tmp_path_factory) -> Services:
    home = tmp_path_factory.mktemp("moments-home")
    return Services(Settings(home=home, model=str(home / "no-visual-model")))


def _add_video(services: Services, name: str, speech: list, screen: list) -> int:
    text = embed_transcript(services.sentences, speech, services.settings.search.normalize_sentence_input, screen)
    segments, passages = text.rows()
    with services.sessions.begin() as s:
        video = Video(content_hash=name.ljust(64, "0"), filename=name, source_path=str(SILENT_CLIP), size_bytes=1,
                      duration_s=300.0, has_audio=bool(speech), transcript=" ".join(t for _, _, t in speech),
                      model_mode="speech", ocr_status="read")
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
    return {"lecture": _add_video(services, "lecture.mp4", LECTURE, []),
            "news": _add_video(services, "news.mp4", SLIDES_SPEECH, SLIDES_SCREEN),
            "museum": _add_video(services, "museum.mp4", [MUSEUM], [])}


def _result(page, video_id: int):
    return next(r for r in page.results if r.video_id == video_id)


def _apart(moments) -> bool:
    return all(b.start >= a.end + MOMENT_GAP_S or a.start >= b.end + MOMENT_GAP_S
               for i, a in enumerate(moments) for b in moments[i + 1:])


def test_a_sentence_said_three_times_gives_three_moments_best_first(services, collection) -> None:
    top = _result(SearchService(services).search(QUERY, k=5), collection["lecture"])
    assert len(top.moments) == MOMENTS_DEFAULT == 3
    assert sorted(m.start for m in top.moments) == SAID_AT and all(m.source == SPEECH for m in top.moments)
    assert all("printing press made books cheap" in m.text for m in top.moments)
    first = top.moments[0]
    assert (first.start, first.end, first.text, first.source) == (
        top.segment.start, top.segment.end, top.segment.text, top.segment.source)
    scores = [m.score for m in top.moments]
    assert scores == sorted(scores, reverse=True) and 0 < scores[-1] <= scores[0] <= top.speech_score
    assert _apart(top.moments)


def test_unrelated_and_adjacent_places_are_never_moments(services, collection) -> None:
    top = _result(SearchService(services).search(QUERY, k=5, moments=MOMENTS_MAX), collection["lecture"])
    assert sorted(m.start for m in top.moments) == SAID_AT  # not the museum trip, not Gutenberg's birth
    # The museum video itself is listed (a candidate by meaning) with its one passage only: a result always has
    # its best moment, however weak, and nothing else.
    museum = SearchService(services).search(QUERY, k=5, moments=MOMENTS_MAX)
    weak = next((r for r in museum.results if r.video_id == collection["museum"]), None)
    assert weak is None or len(weak.moments) == 1


def test_the_number_of_moments_is_bounded(services, collection) -> None:
    service = SearchService(services)
    three = _result(service.search(QUERY, k=5), collection["lecture"]).moments
    for n in (1, 2):
        top = _result(service.search(QUERY, k=5, moments=n), collection["lecture"])
        assert top.moments == three[:n]
    for bad in (0, -1, MOMENTS_MAX + 1):
        with pytest.raises(ValueError, match="moments must be between 1 and 20"):
            service.search(QUERY, moments=bad)


def test_moments_come_from_both_channels_each_with_its_own_calibration(services, collection) -> None:
    """Lexical term off, so a passage's raw score is the cosine: each moment's score is its channel's map of the
    cosine between the query and the moment's text, speech and screen side by side in one list."""
    ranking = Ranking.from_settings(services.settings).with_(lexical="none")
    news = _result(SearchService(services, ranking=ranking).search(QUERY, k=5), collection["news"])
    assert {(m.source, m.start) for m in news.moments} == {(SPEECH, 40.0), (SCREEN, 100.0)}
    q = embed(services.sentences, [QUERY], ranking.normalize_sentence_input)[0]
    texts = embed(services.sentences, [m.text for m in news.moments], ranking.normalize_sentence_input)
    for m, vector in zip(news.moments, texts, strict=True):
        ab = ranking.screen_calibration if m.source == SCREEN else ranking.speech_calibration
        assert m.score == pytest.approx(float(calibrate(float(vector @ q), ab)), abs=1e-4)
    channel = news.screen_score if news.moments[0].source == SCREEN else news.speech_score
    assert news.moments[0].score <= channel + 1e-6
    assert (news.segment.start, news.segment.source) == (news.moments[0].start, news.moments[0].source)


def test_choose_moments_rule() -> None:
    """Greedy by score after the given first; a passage closer than the gap to a taken one (overlapping, touching,
    a short pause) is the same place; the floor is max(MOMENT_MIN_SCORE, MOMENT_RATIO * first)."""
    starts = np.array([10.0, 14.0, 20.0 + MOMENT_GAP_S - 0.1, 20.0 + MOMENT_GAP_S, 40.0, 60.0, 80.0])
    ends = starts + np.array([10.0, 2.0, 3.0, 3.0, 3.0, 3.0, 3.0])
    scores = np.array([0.8, 0.9, 0.7, 0.6, 0.6, 0.19, 0.21])
    lengths = np.zeros(7)
    # 1 overlaps 0 (better, but the first is given), 2 starts within the gap after 0, 3 starts just at the gap;
    # 3 and 4 tie: the earlier first; 5 is under a quarter of 0.8, 6 just above
    assert choose_moments(scores, starts, ends, lengths, 0, 10) == [0, 3, 4, 6]
    assert choose_moments(scores, starts, ends, lengths, 0, 2) == [0, 3]
    assert choose_moments(scores, starts, ends, lengths, None, 3) == []
    weak = np.array([0.03, 0.9, 0.019, 0.019, 0.019, 0.01, 0.01])  # a weak first: nothing under the minimum follows
    assert choose_moments(weak, starts, ends, lengths, 0, 5) == [0]
    assert choose_moments(weak + np.array([0, 0, 0, 0.001, 0, 0, 0]), starts, ends, lengths, 0, 5) == [0, 3]
    assert MOMENT_MIN_SCORE == 0.02 and MOMENT_RATIO == 0.25


def test_a_moment_grows_into_a_window_only_when_the_window_scores_higher() -> None:
    """``segment-grown``: the best segment becomes the best window holding it (of its video and channel) when that
    window scores higher; a window that does not hold it, another video's or another channel's, never."""
    # passages: 0..3 segments of video 1 (idx 0..3), 4 = window 0-1, 5 = window 1-2, 6 = window 2-3 (holds 2, not 1),
    # 7 = whole transcript (not local), 8 = segment of video 2, 9 = video 2 window 0-1 on the screen channel
    pids = np.arange(10, 20)
    vids = np.array([1, 1, 1, 1, 1, 1, 1, 1, 2, 2])
    first = np.array([0, 1, 2, 3, 0, 1, 2, 0, 0, 0])
    last = np.array([0, 1, 2, 3, 1, 2, 3, 3, 0, 1])
    channels = [Source.SPEECH] * 9 + [Source.SCREEN]
    windows = (last - first) < 3
    scores = np.array([0.3, 0.6, 0.2, 0.1, 0.65, 0.62, 0.9, 0.95, 0.5, 0.9])
    moment = {(1, Source.SPEECH): 11, (2, Source.SPEECH): 18}
    grown = SearchService._grow_moments(moment, pids, vids, channels, first, last, scores, windows)
    assert grown == {(1, Source.SPEECH): 14, (2, Source.SPEECH): 18}  # 0-1 beats 1-2; 2-3 and the whole do not hold 1
    # with a margin a window must beat the segment by more than it: 0.65 and 0.62 do not beat 0.6 by 0.1
    assert SearchService._grow_moments(moment, pids, vids, channels, first, last, scores, windows,
                                       margin=0.1)[(1, Source.SPEECH)] == 11
    assert SearchService._grow_moments(moment, pids, vids, channels, first, last, scores, windows,
                                       margin=0.04)[(1, Source.SPEECH)] == 14
    scores[4] = scores[5] = 0.6  # a tie keeps the segment
    assert SearchService._grow_moments(moment, pids, vids, channels, first, last, scores, windows)[(1, Source.SPEECH)] \
        == 11


def test_api_moments_parameter_schema_and_validation(services, collection) -> None:
    from app.main import create_app

    with TestClient(create_app(services.settings, embedded_worker=False, services=services)) as client:
        r = client.get("/v1/search", params={"q": QUERY, "moments": 2})
        assert r.status_code == 200, r.text
        top = next(x for x in r.json()["results"] if x["video_id"] == collection["lecture"])
        assert len(top["moments"]) == 2
        first = dict(top["moments"][0])
        assert first.pop("score") <= top["speech_score"] and first == top["segment"]
        assert all(m["highlights"] for m in top["moments"])  # "press", "books" said each time
        default = next(x for x in client.get("/v1/search", params={"q": QUERY}).json()["results"]
                       if x["video_id"] == collection["lecture"])
        assert len(default["moments"]) == 3 and default["moments"][:2] == top["moments"]
        for bad in (0, MOMENTS_MAX + 1, "many"):
            r = client.get("/v1/search", params={"q": QUERY, "moments": bad})
            assert r.status_code == 422 and "moments" in r.json()["detail"], r.text
        spec = client.get("/openapi.json").json()
        param = next(p for p in spec["paths"]["/v1/search"]["get"]["parameters"] if p["name"] == "moments")
        assert param["schema"]["minimum"] == 1 and param["schema"]["maximum"] == MOMENTS_MAX
        assert param["schema"]["default"] == MOMENTS_DEFAULT
        schemas = spec["components"]["schemas"]
        assert "moments" in schemas["SearchResult"]["properties"]
        assert "calibrated" in schemas["ScoredMoment"]["properties"]["score"]["description"].lower()


def test_cli_prints_the_moments(services, collection, monkeypatch) -> None:
    from typer.testing import CliRunner

    from app.cli import app

    monkeypatch.setenv("SAVE_SEARCH_HOME", str(services.settings.home))
    monkeypatch.setenv("SAVE_SEARCH_MODEL", str(services.settings.home / "no-visual-model"))
    result = CliRunner().invoke(app, ["search", QUERY, "--k", "2"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    # One line per result as before (rank, file, score, the best moment), then its other moments, indented.
    assert lines[0].startswith(" 1. news.mp4 (video ") and "[on screen, 100.0-110.0s] The printing" in lines[0]
    assert lines[1] == "      + [40.0-46.0s] " + SLIDES_SPEECH[1][2] + lines[1][lines[1].index(" (score 0."):]
    assert lines[2].startswith(" 2. lecture.mp4 (video ") and "printing press" in lines[2]
    assert len(lines) == 5 and all(line.startswith("      + [") for line in lines[3:])
    result = CliRunner().invoke(app, ["search", QUERY, "--k", "2", "--moments", "2", "--json"])
    assert result.exit_code == 0, result.output
    top = json.loads(result.stdout)["results"][1]
    assert top["filename"] == "lecture.mp4" and len(top["moments"]) == 2
    assert top["moments"][0]["start"] == top["segment"]["start"]
    assert {"start", "end", "text", "source", "score"} <= set(top["moments"][0])
    bad = CliRunner().invoke(app, ["search", QUERY, "--moments", "0"])
    assert bad.exit_code != 0 and "moments must be between 1 and 20" in bad.output


def test_evaluation_scores_the_first_moment_and_any_moment(services, collection) -> None:
    """Moment accuracy stays on the first moment; "any moment" finds the answer among the others; the moments
    away from the answer are counted as stray."""
    from indexer.search.evaluation import LabelledQuery, evaluate, format_report

    service = SearchService(services)
    said = _result(service.search(QUERY, k=5), collection["lecture"]).moments
    last = said[-1]  # label the answer at the last moment: not the first, but one of them
    report = evaluate(service, [LabelledQuery(QUERY, "lecture.mp4", last.start, last.end, "moment")])
    outcome = report.outcomes[0]
    assert (outcome.moment_ok, outcome.moment_any_ok, outcome.stray_moments) == (False, True, 1)
    assert (report.moment_accuracy, report.any_moment_accuracy, report.stray_moments) == (0.0, 1.0, 1.0)
    assert "any moment 1.000  stray moments 1.00 per query" in format_report(report)
