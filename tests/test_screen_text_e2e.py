"""On-screen text end to end with the real models: a real clip with a slide drawn over it and a real speech
track, through the worker (bundled Whisper base + bundled PP-OCRv5), the search and the API, offline."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from indexer.ingest.worker import Worker
from indexer.services import Services
from indexer.settings import Settings
from tests.media_fixtures import MEDIA, TextShown, speech_video, text_video

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not MEDIA.exists(), reason=f"no test media at {MEDIA}")]

SLIDE = TextShown(3.0, 8.0, "Quarterly results: revenue up 12 percent", style="slide", font_size="large")


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    root = tmp_path_factory.mktemp("screen-media")
    lj = MEDIA / "speech" / "ljspeech"
    text_video(root / "results.mp4", [SLIDE], 10.0, clip="boat.mp4", speech=lj / "LJ001-0005.wav")
    speech_video(lj / "LJ001-0002.wav", root / "speech-only.mp4")
    home = tmp_path_factory.mktemp("screen-e2e-home")
    services = Services(Settings(home=home, model=str(home / "no-visual-model"), expected_languages=["en"]))
    worker = Worker(services, owner="screen-e2e")
    worker.startup()
    job = worker.queue.enqueue("bulk", [str(p) for p in sorted(root.iterdir())])
    while worker.queue.summary(job).status not in ("done", "failed"):
        assert worker.run_once() > 0 or worker.queue.pending() > 0
    assert worker.queue.summary(job).status == "done"
    assert worker.stats["ocr"] > 0
    with TestClient(create_app(services.settings, embedded_worker=False, services=services)) as c:
        yield c


def _video_id(client, name: str) -> int:
    return next(v["video_id"] for v in client.get("/v1/videos").json() if v["filename"] == name)


def test_the_slide_is_read_into_a_timed_screen_span(client) -> None:
    video = client.get(f"/v1/videos/{_video_id(client, 'results.mp4')}").json()
    assert video["ocr_status"] == "read" and video["segments"]  # what is said is there too
    shown = [s for s in video["screen_text"] if "revenue" in s["text"].lower()]
    assert len(shown) == 1, video["screen_text"]
    span = shown[0]
    assert span["source"] == "screen" and "12 percent" in span["text"]
    assert SLIDE.start_s - 1.0 <= span["start"] <= SLIDE.start_s + 1.0
    assert SLIDE.end_s - 1.5 <= span["end"] <= SLIDE.end_s + 1.0
    assert client.get(f"/v1/videos/{_video_id(client, 'speech-only.mp4')}").json()["screen_text"] == []


def test_a_paraphrase_of_the_slide_finds_it_with_the_visible_stretch(client) -> None:
    body = client.get("/v1/search", params={"q": "sales grew twelve percent this quarter"}).json()
    top = body["results"][0]
    assert top["filename"] == "results.mp4", [r["filename"] for r in body["results"]]
    assert top["screen_score"] is not None and top["segment"]["source"] == "screen"
    assert SLIDE.start_s - 1.0 <= top["segment"]["start"] < SLIDE.end_s
