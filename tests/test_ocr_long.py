"""On-screen text of long videos (indexer/inference/ocr.py, issue 18): decoding that follows the samples rather than
the frames, span boundaries found between samples, and lines whose first or last characters sit at an edge.
Videos are rendered at test time from the real street scene media/video/vtest.avi (bench.ocr_bench)."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest

from bench.ocr_bench import Caption, captioned_video, edge_backgrounds, edge_line
from indexer.inference.ocr import BOUNDARY_S, ScreenReader, _scaled_rgb, sample_times
from indexer.settings import Settings
from tests.media_fixtures import MEDIA

pytestmark = pytest.mark.skipif(not MEDIA.exists(), reason=f"no test media at {MEDIA}")


@pytest.fixture(scope="module")
def reader(tmp_path_factory) -> ScreenReader:
    return ScreenReader(Settings(home=tmp_path_factory.mktemp("ocr-long-home"), device="cpu"))


def plain_decode(path: Path, times: list[float]) -> list[tuple[float, np.ndarray]]:
    """What sampling means, the slow way: every frame decoded, and for each time the frame shown first at or after
    it (by timestamp; a decoder may put out a file's frames slightly out of order)."""
    with av.open(str(path)) as container:
        frames = sorted(((round(float(f.time), 3), _scaled_rgb(f)) for f in container.decode(video=0)
                         if f.time is not None), key=lambda item: item[0])
    out: list[tuple[float, np.ndarray]] = []
    for t in times:
        item = next((x for x in frames if x[0] + 1e-3 >= t), None)
        if item is not None and (not out or out[-1][0] != item[0]):
            out.append(item)
    return out


@pytest.mark.slow
def test_frames_decoded_follow_the_samples_not_the_frame_rate(reader, tmp_path):
    """2 minutes at 25 fps (3000 frames) with a key frame every 2 s, sampled every 3 s: the decoder produces a
    small fraction of the frames, and the frames sampled are exactly those of a full decode."""
    video = captioned_video(tmp_path / "two-minutes.mp4", [], 120.0, fps=25, gop=50, size=(320, 180))
    times = sample_times(120.0, max_samples=40)
    assert times[1] == pytest.approx(3.0)
    before = reader.frames_decoded
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(reader, "max_samples", 40)
        got = list(reader.sampled_frames(video, 120.0))
    decoded = reader.frames_decoded - before
    want = plain_decode(video, times)
    assert [t for t, _ in got] == [t for t, _ in want] == times
    assert all(np.array_equal(a, b) for (_, a), (_, b) in zip(got, want, strict=True))
    assert decoded < 3000 / 4, decoded  # 461 measured; a plain decode makes all 3000


@pytest.mark.parametrize("clip", ["IronMan.mp4", "birthday.mp4", "vtest.avi", "Megamind.avi"])
def test_each_sample_is_the_first_frame_at_or_after_its_time(reader, clip):
    """On the real clips (H.264 in mp4 with B-frames; MPEG-4 part 2 in AVI), at a step that falls between frames."""
    path = MEDIA / "video" / clip
    with av.open(str(path)) as container:
        duration = container.duration / av.time_base
        period = float(1 / container.streams.video[0].average_rate)
    times = sample_times(duration, fps=1 / 0.77)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(reader, "sample_fps", 1 / 0.77)
        got = list(reader.sampled_frames(path, duration))
    want = plain_decode(path, times)
    assert len(got) == len(want)
    if clip != "Megamind.avi":
        assert [t for t, _ in got] == [t for t, _ in want]
        assert all(np.array_equal(a, b) for (_, a), (_, b) in zip(got, want, strict=True))
    else:  # packed B-frames: the decoder puts some frames out after a later one, which is then taken (as a plain
        # decode in order does), one frame late at most
        assert all(0 <= g - w <= period + 1e-3 for (g, _), (w, _) in zip(got, want, strict=True))


# A caption that starts off the sampling grid, one replaced by another at once, one up to the end of the video.
SHOWN = [Caption(7.3, 19.6, "QUARTERLY BUDGET REVIEW 2027", "tight"),
         Caption(27.7, 33.1, "WELCOME TO THE ANNUAL MEETING"),
         Caption(33.1, 40.2, "HIRING PLAN AND OPEN POSITIONS"),
         Caption(43.6, 50.0, "QUESTIONS FROM THE AUDIENCE", "wide")]


@pytest.mark.slow
def test_span_boundaries_are_within_a_second_of_the_caption(tmp_path_factory):
    """Sampled every 3 s (a long video's step): each span starts within a second after its caption appears and
    ends within a second before it goes, at a bounded number of extra OCR calls."""
    video = captioned_video(tmp_path_factory.mktemp("bounds") / "captions.mp4", SHOWN, 50.0, fps=25)
    reader = ScreenReader(Settings(home=tmp_path_factory.mktemp("bounds-home"), device="cpu"), max_samples=17)
    spans = reader.read(video, 50.0)  # samples every 50 / 17 = 2.94 s
    assert [s.text.replace(" ", "") for s in spans] == [c.text.replace(" ", "") for c in SHOWN]  # (spaces: OCR's)
    for span, caption in zip(spans, SHOWN, strict=True):
        assert caption.start_s <= span.start_s < caption.start_s + 1.0, (span, caption)
        assert caption.end_s - 1.0 < span.end_s < caption.end_s, (span, caption)
        assert span.start_s - caption.start_s <= BOUNDARY_S + 0.04 and caption.end_s - span.end_s <= BOUNDARY_S + 0.08
    # a gap between samples is at most 6 s (two 3 s steps): at most ceil(log2(6 / 0.5)) = 4 OCR calls a boundary
    assert reader.frames_refined <= 4 * 2 * len(SHOWN)


@pytest.fixture(scope="module")
def backgrounds() -> dict[str, np.ndarray]:
    return edge_backgrounds()


@pytest.mark.parametrize(("text", "px", "side", "box", "background"), [
    ("QUARTERLY BUDGET REVIEW 2027", 20, "left", True, "boat"),  # read 'Y BUDGET REVIEW 2027' without the border
    ("QUARTERLY BUDGET REVIEW 2027", 28, "right", False, "boat"),  # 'OUARTERLY BUDGET REVIEW 2027'
    ("WELCOME TO THE ANNUAL MEETING", 20, "right", True, "boat"),  # 'WELCOME TO THE ANN'
    ("QUARTERLY BUDGET REVIEW 2027", 36, "left", True, "boat"),  # 592 of the frame's 640 px
    ("Agenda", 28, "left", True, "street"),  # a short word at the left margin
])
def test_characters_at_the_frame_edge_are_read(reader, backgrounds, text, px, side, box, background):
    """The detector stops short of glyphs at the frame's edges; with the border ``ScreenReader.edge_pad`` adds
    before detection each line is read exactly (the first three lost or misread characters at an end without it)."""
    lines = reader.read_lines(edge_line(backgrounds[background], text, px, side, box))
    assert [x.text for x in lines] == [text]
    if side == "left":
        assert 0 <= lines[0].left <= 2  # positions are the frame's own, not the bordered one's
