"""The search page in a real browser: headless Debian Chromium driven by Playwright, against the real app
(uvicorn in a thread, embedded worker, speech mode because the visual model path does not exist).

Needs ``/usr/bin/chromium`` (``apt-get install -y chromium``) and the ``playwright`` package; the browser
Playwright downloads itself is never used. Without Chromium the tests skip, except under CI (``CI`` set), where
they fail. Screenshots of each step go to ``artifacts/screenshots/``.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import httpx
import pytest

from tests.helpers import wait_for_job
from tests.media_fixtures import MEDIA, speech_video

pytestmark = [pytest.mark.slow, pytest.mark.browser,
              pytest.mark.skipif(not MEDIA.exists(), reason=f"real test media not found at {MEDIA}")]

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", "--disable-sync", "--disable-quic"]
SCREENSHOTS = Path(__file__).resolve().parents[1] / "artifacts" / "screenshots"
INGEST_TIMEOUT_MS = 120_000  # the worker transcribes with Whisper base on CPU
PARAPHRASE = "ask what you can do for your country"


def _require_browser() -> None:
    problem = None
    if not CHROMIUM.exists():
        problem = f"{CHROMIUM} not found (apt-get install -y chromium)"
    else:
        try:
            import playwright.sync_api  # noqa: F401
        except ImportError:
            problem = "the playwright package is not installed (pip install playwright)"
    if problem:
        if os.environ.get("CI"):
            pytest.fail(f"{problem}; CI must run the browser tests", pytrace=False)
        pytest.skip(problem)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def _serve(settings, embedded_worker: bool) -> Iterator[str]:
    """The real app under uvicorn on a free loopback port, in a thread; yields its base URL."""
    import uvicorn

    from app.main import create_app

    port = _free_port()
    config = uvicorn.Config(create_app(settings, embedded_worker=embedded_worker), host="127.0.0.1", port=port,
                            log_level="warning", lifespan="on")
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, name="uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + 180  # startup loads the speech models
    while not srv.started:
        if not thread.is_alive():
            pytest.fail("the app did not start (see the log above)", pytrace=False)
        if time.monotonic() > deadline:
            srv.should_exit = True
            pytest.fail("the app did not start within 180 s", pytrace=False)
        time.sleep(0.1)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        srv.should_exit = True
        thread.join(timeout=60)


@pytest.fixture(scope="module")
def server_home(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("browser-home")


@pytest.fixture(scope="module")
def server(server_home) -> Iterator[str]:
    """The real app on 127.0.0.1 with its embedded worker, once for the module (the worker ingests once)."""
    _require_browser()
    from indexer.settings import Settings

    settings = Settings(home=server_home, model=str(server_home / "no-such-model"), expected_languages=["en"])
    with _serve(settings, True) as url:
        yield url


@pytest.fixture(scope="module")
def browser(server):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def page(browser, server):
    """A fresh page; JavaScript errors on it fail the test."""
    context = browser.new_context(base_url=server, viewport={"width": 1200, "height": 860})
    context.set_default_timeout(15_000)
    pg = context.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda exc: errors.append(str(exc)))
    yield pg
    context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


@pytest.fixture(scope="module")
def jfk_video(tmp_path_factory) -> Path:
    return speech_video(MEDIA / "speech" / "jfk.flac", tmp_path_factory.mktemp("media") / "jfk.mp4")


@pytest.fixture(scope="module")
def jfk_indexed(server, jfk_video) -> int:
    """The jfk video indexed (by the upload test through the page, or here through the API when it ran alone)."""
    with jfk_video.open("rb") as f:
        accepted = httpx.post(f"{server}/v1/videos", files={"file": ("jfk.mp4", f, "video/mp4")}, timeout=60).json()
    if accepted["status"] != "done":
        assert wait_for_job(lambda path: httpx.get(server + path).json(), accepted["job_id"],
                            timeout=INGEST_TIMEOUT_MS / 1000, poll=0.5)["status"] == "done"
    return accepted["video_id"]


def shot(page, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


def test_a_upload_shows_progress_and_job_reaches_done(page, jfk_video):
    # Record every text the job line shows, to check it is updated live and not only at the end.
    page.add_init_script("""
        window.__jobLines = [];
        document.addEventListener('DOMContentLoaded', () => {
          const line = document.getElementById('job-line');
          new MutationObserver(() => window.__jobLines.push(line.textContent))
            .observe(line, {childList: true, characterData: true, subtree: true});
        });
    """)
    page.goto("/")
    assert page.evaluate("document.activeElement.id") == "q", "the search box has focus on load"
    mode = page.locator("#mode-text")
    page.wait_for_function("document.getElementById('mode').dataset.mode === 'speech'")
    assert "speech mode: visual model unavailable — searching transcripts" in mode.inner_text()
    assert "0 videos indexed" in mode.inner_text()
    # Search first: nothing yet. When the upload is indexed, the page runs this search again by itself.
    page.keyboard.type(PARAPHRASE)
    page.keyboard.press("Enter")
    page.wait_for_function("document.getElementById('search-status').textContent.includes('No video matches')")
    shot(page, "a1-empty")

    page.set_input_files("#file", str(jfk_video))
    page.get_by_role("button", name="Upload").click()
    upload_line = page.locator("#upload-line")
    size = jfk_video.stat().st_size
    page.wait_for_function("document.getElementById('upload-line').textContent.startsWith('Uploaded')")
    uploaded = upload_line.inner_text().replace("\xa0", " ")
    assert "jfk.mp4" in uploaded and "100%" in uploaded, uploaded
    assert f"{size / 1000:.1f} kB of {size / 1000:.1f} kB" in uploaded, uploaded  # bytes sent of bytes total
    page.wait_for_function("/running/.test(document.getElementById('job-line').textContent)",
                           timeout=INGEST_TIMEOUT_MS)
    shot(page, "a2-indexing")

    job_line = page.locator("#job-line")
    page.wait_for_function("document.getElementById('job-line').textContent.includes('done')",
                           timeout=INGEST_TIMEOUT_MS)
    assert "indexed as video" in job_line.inner_text()
    assert page.locator("#upload-error").is_hidden()
    lines = page.evaluate("window.__jobLines")
    assert any("running" in x for x in lines), f"the job's progress was never shown live: {lines}"
    page.wait_for_function("document.getElementById('mode-text').textContent.includes('1 video indexed')")
    page.locator(".card .filename", has_text="jfk.mp4").wait_for()  # the current search was refreshed
    page.wait_for_function("(() => { const i = document.querySelector('.card .thumb img');"
                           " return i && i.complete && i.naturalWidth > 0; })()")
    shot(page, "a3-done")


def test_b_search_highlights_the_spoken_words(page, server, jfk_indexed):
    page.goto("/")
    page.fill("#q", PARAPHRASE)
    page.press("#q", "Enter")  # Enter searches
    card = page.locator(".card").first
    card.wait_for()
    assert card.locator(".filename").inner_text() == "jfk.mp4"
    assert "?q=ask+what" in page.url or "?q=ask%20what" in page.url, page.url
    marks = card.locator(".moment mark").all_inner_texts()
    assert any(m.lower() == "country" for m in marks), marks
    moment = card.locator(".moment").inner_text()
    # "ask what you can do for your country" starts 7-8 s in (clause pieces follow the words' own timings)
    assert ("0:07" in moment or "0:08" in moment) and "country" in moment
    meta = card.locator(".meta").inner_text()
    assert "score" in meta and "speech" in meta and "0:11" in meta
    # The thumbnail loaded (it is the first frame, a real JPEG).
    page.wait_for_function("(() => { const i = document.querySelector('.card .thumb img');"
                           " return i && i.complete && i.naturalWidth > 0; })()")
    shot(page, "b1-results")

    # The URL makes the results linkable; Back returns to the previous search.
    page.fill("#q", "fellow Americans")
    page.press("#q", "Enter")
    page.wait_for_function("document.getElementById('results-heading').textContent.includes('fellow')")
    page.go_back()
    page.wait_for_function(f"document.getElementById('q').value === {PARAPHRASE!r}")
    page.wait_for_function("document.getElementById('results-heading').textContent.includes('country')")
    page.locator(".card").first.wait_for()
    page.goto("/?q=fellow%20Americans")
    page.locator(".card .moment mark").first.wait_for()
    assert page.input_value("#q") == "fellow Americans"


def test_c_play_from_the_matching_moment(page, server, jfk_indexed):
    page.goto(f"/?q={PARAPHRASE.replace(' ', '+')}")
    card = page.locator(".card").first
    card.wait_for()
    start = float(httpx.get(f"{server}/v1/search", params={"q": PARAPHRASE}).json()["results"][0]["segment"]["start"])
    assert start > 1.0  # the moment is not the beginning, so seeking is really tested
    card.locator(".thumb").click()
    dialog = page.locator("#player")
    dialog.wait_for(state="visible")
    assert page.locator("#player-title").inner_text() == "jfk.mp4"
    page.wait_for_function(f"(() => {{ const v = document.getElementById('video');"
                           f" return v.readyState >= 1 && v.currentTime >= {start - 0.5}; }})()")
    state = page.evaluate("""(() => { const v = document.getElementById('video');
        return {t: v.currentTime, paused: v.paused, seekable: v.seekable.length ? v.seekable.end(0) : 0,
                error: v.error && v.error.code}; })()""")
    assert state["error"] is None, state
    assert state["t"] >= start - 0.5, state
    assert (not state["paused"]) or state["seekable"] > start, state
    # The full transcript is listed; each segment seeks the video.
    segments = page.locator("#transcript button.segment")
    segments.nth(1).wait_for()  # the transcript loads on its own request, after the video
    listed = httpx.get(f"{server}/v1/videos/{jfk_indexed}").json()["segments"]
    assert segments.count() == len(listed) >= 2  # Whisper's segments, cut at clauses
    assert "fellow Americans" in segments.nth(0).inner_text()
    page.wait_for_timeout(700)  # let it play a little for the screenshot
    shot(page, "c1-player")
    segments.nth(0).click()
    page.wait_for_function("document.getElementById('video').currentTime < 3")
    page.wait_for_function("document.querySelector('#transcript button.segment[aria-current=\"true\"]') !== null")
    page.keyboard.press("Escape")  # the player is a modal dialog: Escape closes it
    dialog.wait_for(state="hidden")
    # The dialog's close event (which pauses) is dispatched a task after it hides: wait for it, bounded.
    page.wait_for_function("document.getElementById('video').paused", timeout=5000)

    # The moment button plays from the moment too (the same file is loaded already: no new metadata event).
    card.locator(".moment").click()
    dialog.wait_for(state="visible")
    page.wait_for_function(f"document.getElementById('video').currentTime >= {start - 0.5}")


def test_d_non_video_upload_shows_the_415_reason(page, tmp_path):
    fake = tmp_path / "notes.mp4"
    fake.write_text("these are meeting notes, not a video\n" * 20)
    page.goto("/")
    page.set_input_files("#file", str(fake))
    page.get_by_role("button", name="Upload").click()
    error = page.locator("#upload-error")
    error.wait_for(state="visible")
    text = error.inner_text()
    assert "415" in text and "not a media file" in text and "notes.mp4" in text, text
    assert page.locator("#upload-button").is_enabled()
    shot(page, "d1-not-a-video")


def test_e_server_text_is_text_and_failures_are_explained(page):
    """Crafted API answers (routed in the browser): markup in server text stays text, a missing thumbnail gets a
    placeholder, an API error shows its detail, and "more results" fetches the next page with its token."""
    evil = "<img src=x onerror=\"window.__pwned=1\">clip.mp4"
    result = {"video_id": 7, "filename": evil, "score": 0.5, "visual_score": 0.25, "speech_score": 0.75,
              "duration": 3725.0, "language": "en", "thumbnail_url": "/v1/videos/7/thumbnail",
              "video_url": "/v1/videos/7/media", "transcript": "<b>bold</b> claims",
              "segment": {"start": 1.0, "end": 2.0, "text": "<b>bold</b> claims 😀 here",
                          "highlights": [[12, 18], [21, 25]]}}
    pages = {None: {"query": "x", "mode": "save-fused", "results": [result], "next_page_token": "T2"},
             "T2": {"query": "x", "mode": "save-fused", "results": [dict(result, video_id=8)],
                    "next_page_token": None}}
    def fake_search(route):
        params = parse_qs(urlparse(route.request.url).query)
        if params["q"][0] == "boom":
            return route.fulfill(status=503, json={"detail": "the index is being rebuilt"})
        route.fulfill(status=200, content_type="application/json",
                      body=json.dumps(pages[params.get("page_token", [None])[0]]))

    page.route("**/v1/search?*", fake_search)
    page.route("**/v1/videos/*/thumbnail", lambda route: route.fulfill(status=404, json={"detail": "none"}))
    page.goto("/?q=x")
    card = page.locator(".card").first
    card.wait_for()
    assert card.locator(".filename").inner_text() == evil
    assert page.evaluate("window.__pwned") is None
    assert page.locator(".card img[src='x']").count() == 0 and page.locator(".card b").count() == 0
    # highlights are code point offsets: the emoji before "here" must not shift them
    assert card.locator("mark").all_inner_texts() == ["claims", "here"]
    assert "visual 0.25" in card.inner_text() and "1:02:05" in card.inner_text()
    page.locator(".card .thumb-missing").first.wait_for()
    page.get_by_role("button", name="More results").click()
    page.wait_for_function("document.querySelectorAll('.card').length === 2")
    assert page.locator("#more").is_hidden()
    shot(page, "e1-crafted-results")

    page.fill("#q", "boom")
    page.press("#q", "Enter")
    err = page.locator("#search-error")
    err.wait_for(state="visible")
    assert "the index is being rebuilt" in err.inner_text() and "503" in err.inner_text()
    page.wait_for_function("document.querySelectorAll('.card').length === 0")
    shot(page, "e2-search-error")


def test_f_narrow_screen_layout(browser, server, jfk_indexed):
    """A phone-sized window (in dark mode): everything stacks in one column and nothing overflows sideways."""
    context = browser.new_context(base_url=server, viewport={"width": 390, "height": 844}, color_scheme="dark")
    try:
        pg = context.new_page()
        pg.goto(f"/?q={PARAPHRASE.replace(' ', '+')}")
        pg.locator(".card").first.wait_for()
        assert pg.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
        assert pg.locator("#upload-form").is_visible()
        pg.click("summary")  # the reason for speech mode, folded out
        shot(pg, "f1-narrow")
        pg.locator(".card .moment").first.click()
        pg.locator("#transcript button.segment").first.wait_for()
        assert pg.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
        shot(pg, "f2-narrow-player")
    finally:
        context.close()


def test_g_read_keys_thumbnails_and_playback(browser, server_home, jfk_indexed):
    """With keys required for reads, the page sends the typed key and its <img>/<video> use the signed URLs."""
    import urllib.parse

    from indexer.settings import Settings

    # A second API process on the same database and files, behind read keys.
    keyed = Settings(home=server_home, model=str(server_home / "no-such-model"), api_keys=["page-key"],
                     read_requires_key=True)
    with _serve(keyed, False) as url:
        context = browser.new_context(base_url=url, viewport={"width": 1200, "height": 860})
        context.set_default_timeout(15_000)
        try:
            pg = context.new_page()
            pg.goto(f"/?q={PARAPHRASE.replace(' ', '+')}")
            pg.locator("#search-error").wait_for(state="visible")
            assert "401" in pg.locator("#search-error").inner_text()
            pg.click("summary:has-text('API key')")
            pg.fill("#api-key", "page-key")
            pg.press("#api-key", "Tab")  # change event: stored in this browser
            pg.press("#q", "Enter")
            card = pg.locator(".card").first
            card.wait_for()
            pg.wait_for_function("(() => { const i = document.querySelector('.card .thumb img');"
                                 " return i && i.complete && i.naturalWidth > 0; })()")
            src = urllib.parse.urlsplit(pg.locator(".card .thumb img").first.get_attribute("src"))
            assert "sig=" in src.query, src
            card.locator(".moment").click()
            pg.wait_for_function("(() => { const v = document.getElementById('video');"
                                 " return v.readyState >= 1 && v.currentTime > 1 && !v.error; })()")
            shot(pg, "g1-read-keys-player")
        finally:
            context.close()


def test_h_on_screen_match_is_labelled_and_listed(page, server, tmp_path):
    """Text shown in the video (read by the real OCR at ingest): the match says "on screen, start–end", highlights
    the query's words like speech, and the player lists the on-screen text next to the transcript."""
    from tests.media_fixtures import TextShown, text_video

    clip = text_video(tmp_path / "slide.mp4", [TextShown(2.0, 7.0, "Quarterly results: revenue up 12 percent",
                                                         style="slide", font_size="large")], 9.0, clip="boat.mp4")
    with clip.open("rb") as f:
        accepted = httpx.post(f"{server}/v1/videos", files={"file": ("slide.mp4", f, "video/mp4")}, timeout=60).json()
    assert wait_for_job(lambda path: httpx.get(server + path).json(), accepted["job_id"],
                        timeout=INGEST_TIMEOUT_MS / 1000, poll=0.5)["status"] == "done"
    page.goto("/?q=quarterly+revenue+grew+twelve+percent")
    card = page.locator(".card", has_text="slide.mp4").first
    card.wait_for()
    moment = card.locator(".moment.on-screen")
    label = moment.locator(".range").inner_text()
    assert label.startswith("on screen, 0:0") and "–0:0" in label, label
    assert {m.lower() for m in moment.locator("mark").all_inner_texts()} >= {"revenue"}
    assert "on screen" in card.locator(".meta").inner_text()
    shot(page, "h1-on-screen-match")
    moment.click()
    page.locator("#player").wait_for(state="visible")
    shown = page.locator("#screen-text button.segment")
    shown.first.wait_for()
    assert page.locator("#screen-heading").is_visible() and "revenue" in shown.first.inner_text().lower()
    assert page.locator("#transcript-status").inner_text() == "This video has no transcript (no speech)."
    shot(page, "h2-on-screen-player")


def test_i_each_moment_plays_from_its_start(page, server, tmp_path):
    """A sentence said twice (the jfk recording, 3 s of silence, the recording again): the card lists the best
    moment and, under it, the other one; clicking that second moment plays the video from there."""
    import numpy as np

    from tests.media_fixtures import read_mono_16k

    jfk = read_mono_16k(MEDIA / "speech" / "jfk.flac")
    twice = speech_video(np.concatenate([jfk, np.zeros(3 * 16000, np.float32), jfk]), tmp_path / "jfk-twice.mp4")
    with twice.open("rb") as f:
        accepted = httpx.post(f"{server}/v1/videos", files={"file": ("jfk-twice.mp4", f, "video/mp4")},
                              timeout=60).json()
    assert wait_for_job(lambda path: httpx.get(server + path).json(), accepted["job_id"],
                        timeout=2 * INGEST_TIMEOUT_MS / 1000, poll=0.5)["status"] == "done"  # twice jfk's audio
    found = httpx.get(f"{server}/v1/search", params={"q": PARAPHRASE}).json()["results"]
    moments = next(r for r in found if r["filename"] == "jfk-twice.mp4")["moments"]
    assert len(moments) >= 2 and abs(moments[1]["start"] - moments[0]["start"]) > 10, moments  # one each time
    page.goto(f"/?q={PARAPHRASE.replace(' ', '+')}")
    card = page.locator(".card", has_text="jfk-twice.mp4").first
    card.wait_for()
    others = card.locator(".more-moments button.other-moment")
    assert others.count() == len(moments) - 1
    assert "country" in others.first.inner_text().lower() and others.first.locator("mark").count()
    shot(page, "i1-moments")
    second = moments[1]["start"]
    others.first.click()
    page.locator("#player").wait_for(state="visible")
    page.wait_for_function(f"(() => {{ const v = document.getElementById('video');"
                           f" return v.readyState >= 1 && v.currentTime >= {second - 0.5}; }})()")
    t = page.evaluate("document.getElementById('video').currentTime")
    assert second - 0.5 <= t < second + 5, (t, second)  # from the second saying, not the first
    shot(page, "i2-second-moment-playing")
