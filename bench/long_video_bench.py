"""Long videos (issue 18): a 30-minute and a 2-hour lecture-like video built from the real recordings in the media
folder, ingested with the real pipeline and default settings, side by side with a plain faster-whisper
transcription of the same audio, in one run.

    .venv/bin/python -m bench.long_video_bench                      # 30 min and 2 h; writes BENCHMARKS.md sections
    .venv/bin/python -m bench.long_video_bench --lengths 30m        # only the 30-minute video
    .venv/bin/python -m bench.long_video_bench --build-only --keep  # only build the media (and keep it)
    .venv/bin/python -m bench.long_video_bench --skip-baseline --no-write --label try-int8
    .venv/bin/python -m bench.long_video_bench --rescore --lengths 30m  # score the last run's raw record again

What it measures (every number from outside the pipeline, so it keeps working while the pipeline changes):
- ingest: ``python -m app.cli ingest FILE --wait --json`` in its own process with a fresh ``SAVE_SEARCH_HOME``:
  wall, CPU (user + sys) and peak RSS of that process (``os.wait4``). Stage times come from the worker's own
  per-stage clock when it has one (``_ingest_child``, the only place that touches pipeline internals);
- baseline: ``faster_whisper.WhisperModel(<bundled base>, device="cpu", compute_type="int8")`` and
  ``transcribe(FILE, vad_filter=True, beam_size=5, language=None)`` in its own process, every segment consumed,
  once before and once after the ingest (the machine is shared and its load drifts; the ratio uses the mean);
- from the collection, through the HTTP API (``GET /v1/videos/{id}``, ``GET /v1/search``, FastAPI's TestClient):
  coverage of the placed speech by the transcript, lost utterances, WER against the reference texts, moment
  accuracy for sentences said once and several times (``moments`` when the API has it, else ``segment``), and
  whether each burnt-in caption was read exactly and when its span starts. The baseline's segments are scored
  by the same coverage/WER code.

The composition (``plan_composition``) is seeded and deterministic; its ground truth is written next to the video.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from bisect import bisect_left
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

from bench.harness import ROOT, WORK, command_line, entry, load1, md_table, publish, require_disk, wait_for_quiet

MEDIA = Path(os.environ.get("SAVE_BENCH_MEDIA", ROOT.parent / "shared" / "data" / "media"))
LENGTHS = {"10m": 600.0, "30m": 1800.0, "2h": 7200.0}  # 10m: a quick smoke run, not in the default set
SR = 16000
FPS = 10  # vtest.avi's own rate: every frame is a real one
SIZE = (640, 360)
SEED = 18
FORMAT_VERSION = 1  # bump when the built media changes for the same plan (invalidates kept copies)
MOMENT_TOLERANCE_S = 1.5
LOST_BELOW = 0.2  # an utterance with less than this share of its voiced time transcribed is "lost" ...
LOST_WORDS_BELOW = 0.25  # ... and so is one with less than this share of its content words in the transcript
MERGE_GAP_S = 1.0  # coverage: transcript segments closer than this count as one transcribed stretch ...
PAD_S = 0.25  # ... widened by this much on each side (word timestamps cut at word edges, speech has pauses)
SWITCH_GAP_S = 0.4  # the sentence right after the English -> German passage starts this soon after it
TITLE = "Long videos"

# ----------------------------------------------------------------------------------------------- the design


@dataclass(frozen=True)
class SaidOnce:
    source: str
    at: float  # fraction of the length where it starts
    query: str  # a paraphrase, not the words said
    verbatim: str | None = None  # a second, near-verbatim query
    after_switch: bool = False  # placed right after multilingual.mp3 (English, then German)


@dataclass(frozen=True)
class SaidSeveral:
    source: str
    at: tuple[float, ...]
    query: str


@dataclass(frozen=True)
class CaptionSpec:
    at: float
    text: str
    style: str  # box (padded dark box), tight (box edge at the glyphs), top (box at the top left), wide (near the
    # frame edges, outlined, no box)
    query: str
    seconds: float = 12.0


@dataclass(frozen=True)
class Design:
    said_once: tuple[SaidOnce, ...]
    said_several: tuple[SaidSeveral, ...]
    captions: tuple[CaptionSpec, ...]
    nonspeech_every_s: float = 240.0  # a stretch of music / applause / ambience / noise this often
    nonspeech_s: tuple[float, float] = (15.0, 30.0)
    switch_every_s: float = 600.0  # multilingual.mp3 (English then German) as filler this often
    clear_s: float = 10.0  # periodic events keep this far from the fixed ones


DESIGN = Design(
    said_once=(
        SaidOnce("lj:LJ001-0003", 0.04, "Chinese printers used carved wooden blocks for hundreds of years before "
                                        "the Dutch"),
        SaidOnce("librivox:0890", 0.13, "if being somewhat selfish and unfeeling counts as being ill natured"),
        SaidOnce("lj:LJ001-0014", 0.22, "medieval craftsmen made sure that everything they produced had a "
                                        "beautiful form"),
        SaidOnce("lj:LJ001-0030", 0.28, "within a few years roman type appeared in Italy, Germany and France",
                 after_switch=True),
        SaidOnce("lj:LJ001-0024", 0.40, "the first Bible with a date in it, printed in Mainz in 1462"),
        SaidOnce("lj:LJ001-0012", 0.49, "beautiful letters take no more time or money to cast and print"),
        SaidOnce("jfk", 0.57, "don't ask what the nation can do for you but what you can do for it",
                 verbatim="ask not what your country can do for you", after_switch=True),
        SaidOnce("lj:LJ001-0028", 0.68, "printers in Strasbourg, Basel, Paris and Luebeck"),
        SaidOnce("librivox:0920", 0.77, "with a kinder wife he would have become even more respectable"),
        SaidOnce("lj:LJ001-0031", 0.86, "two printers started working in a monastery near Rome in 1465",
                 verbatim="Sweynheim and Pannartz began printing in the monastery of Subiaco"),
        SaidOnce("lj:LJ001-0025", 0.95, "handwriting that is rounder and simpler and so easier to read"),
    ),
    said_several=(
        SaidSeveral("librivox:0870", (0.07, 0.26, 0.45, 0.64, 0.83),
                    "John Dashwood had time to think about how much he could afford to do for them"),
        SaidSeveral("lj:LJ001-0011", (0.17, 0.36, 0.53, 0.74, 0.91),
                    "it matters most that the letters used have a fine shape"),
    ),
    captions=(
        CaptionSpec(0.10, "WELCOME TO THE ANNUAL MEETING", "box", "welcome to the yearly meeting"),
        CaptionSpec(0.35, "QUARTERLY BUDGET REVIEW 2027", "tight", "budget review for the quarter"),
        CaptionSpec(0.62, "HIRING PLAN AND OPEN POSITIONS", "top", "which jobs are open in the hiring plan"),
        CaptionSpec(0.85, "QUESTIONS FROM THE AUDIENCE ABOUT THE NEW BERLIN OFFICE", "wide",
                    "audience questions on the Berlin office"),
    ),
)

# Non-speech stretches, cycled: (source key, target RMS). Checked with the bundled Whisper + VAD: no speech in any.
NONSPEECH = (("music:bigbuckbunny", 0.04), ("applause:applausing", 0.04), ("noise:pink", 0.02),
             ("ambience:boat", 0.03))
NOISE_FLOOR_RMS = 0.002  # room tone under everything


# ----------------------------------------------------------------------------------------------- sources


@dataclass(frozen=True)
class Source:
    key: str
    path: str  # relative to the media folder ("" for generated noise)
    text: str | None  # reference transcript; None: unknown (the German passage) or no speech
    speech: bool
    audio: object  # 16 kHz mono float32, trimmed to the speech (speech sources)
    voiced: tuple[tuple[float, float], ...]  # seconds, relative to the trimmed start

    @property
    def duration(self) -> float:
        return len(self.audio) / SR


def voiced_regions(audio, frame_s: float = 0.02, rel_db: float = -30.0, min_gap_s: float = 0.5,
                   min_len_s: float = 0.1) -> list[tuple[float, float]]:
    """Where a clean recording has voice: 20 ms frames louder than ``rel_db`` below its loud frames (95th
    percentile), pauses shorter than ``min_gap_s`` bridged."""
    import numpy as np

    n = int(frame_s * SR)
    frames = len(audio) // n
    if frames == 0:
        return []
    rms = np.sqrt(np.mean(np.square(audio[: frames * n].reshape(frames, n)), axis=1))
    threshold = max(float(np.percentile(rms, 95)) * 10 ** (rel_db / 20), 0.003)
    loud = np.flatnonzero(rms > threshold)
    regions: list[list[float]] = []
    for i in loud:
        s, e = i * frame_s, (i + 1) * frame_s
        if regions and s - regions[-1][1] < min_gap_s:
            regions[-1][1] = e
        else:
            regions.append([s, e])
    return [(s, e) for s, e in regions if e - s >= min_len_s]


def _decode(path: Path):
    from faster_whisper.audio import decode_audio

    return decode_audio(str(path), sampling_rate=SR)


def _speech_source(key: str, path: Path, text: str | None, audio=None) -> Source:
    """A speech clip trimmed to its voice (50 ms margin), with its voiced regions."""
    audio = _decode(path) if audio is None else audio
    regions = voiced_regions(audio)
    if not regions:
        raise ValueError(f"{path}: no voice found")
    a = max(0, int((regions[0][0] - 0.05) * SR))
    b = min(len(audio), int((regions[-1][1] + 0.05) * SR))
    off = a / SR
    voiced = tuple((max(0.0, float(s) - off), min((b - a) / SR, float(e) - off)) for s, e in regions)
    return Source(key, str(path.relative_to(MEDIA)), text, True, audio[a:b].copy(), voiced)


def load_sources(media: Path = MEDIA) -> dict[str, Source]:
    """Every recording the composition uses, with its reference text (from the files next to it)."""
    import numpy as np

    speech = media / "speech"
    out: dict[str, Source] = {}
    for line in (speech / "ljspeech" / "transcripts.psv").read_text().splitlines():
        if "|" in line:
            key, text = (x.strip() for x in line.split("|", 1))
            out[f"lj:{key}"] = _speech_source(f"lj:{key}", speech / "ljspeech" / f"{key}.wav", text)
    for folder, prefix in (("librivox", "librivox"), ("cards", "cards")):
        name = "transcription" if folder == "librivox" else "cards.transcription"
        for line in (speech / folder / name).read_text().splitlines():
            m = re.match(r"\s*<s>(.*)</s>\s*\((.+)\)\s*$", line)
            if m:
                file_id = m.group(2).strip()
                short = file_id.rsplit("-", 1)[-1]
                out[f"{prefix}:{short}"] = _speech_source(f"{prefix}:{short}", speech / folder / f"{file_id}.wav",
                                                          " ".join(m.group(1).split()))
    # Sonnet 1 in four pieces (quatrains and the couplet) at the aligned line times; the spoken title is left out.
    sonnet = _decode(speech / "sonnet" / "audio.mp3")
    fragments = json.loads((speech / "sonnet" / "sonnet.json").read_text())["fragments"][1:]
    for i, (a, b) in enumerate(((0, 4), (4, 8), (8, 12), (12, 14)), 1):
        part = fragments[a:b]
        t0, t1 = float(part[0]["begin"]), float(part[-1]["end"])
        text = " ".join(line for f in part for line in f["lines"])
        out[f"sonnet:{i}"] = _speech_source(f"sonnet:{i}", speech / "sonnet" / "audio.mp3", text,
                                            sonnet[int(t0 * SR): int(t1 * SR)])
    out["jfk"] = _speech_source("jfk", speech / "jfk.flac", "And so my fellow Americans, ask not what your country "
                                                            "can do for you, ask what you can do for your country.")
    out["multilingual"] = _speech_source("multilingual", speech / "multilingual.mp3", None)
    for key, target in NONSPEECH:
        kind, name = key.split(":")
        if kind == "noise":
            audio = np.zeros(0, dtype=np.float32)  # generated per placement
            path = ""
        else:
            path = str(next((media / "video").glob(f"{name}.*")).relative_to(media))
            audio = _decode(media / path)
            rms = float(np.sqrt(np.mean(np.square(audio)))) or 1.0
            audio = (audio * (target / rms)).astype(np.float32)
        out[key] = Source(key, path, None, False, audio, ())
    return out


# ----------------------------------------------------------------------------------------------- the plan


@dataclass
class Placement:
    start: float
    end: float
    source: str
    role: str  # said-once | said-several | filler | switch (English then German) | nonspeech
    text: str | None
    voiced: list[tuple[float, float]] = field(default_factory=list)  # absolute seconds

    @property
    def speech(self) -> bool:
        return self.role != "nonspeech"


@dataclass
class Caption:
    start: float
    end: float
    text: str
    style: str


@dataclass
class Query:
    qid: str
    kind: str  # said-once | said-once-verbatim | said-several | caption
    text: str
    source: str  # a source key, or the caption text
    starts: list[float]
    ends: list[float]
    after_switch: bool = False


@dataclass
class Plan:
    duration_s: float
    seed: int
    placements: list[Placement]
    captions: list[Caption]
    queries: list[Query]

    def ground_truth(self, sources: dict[str, Source]) -> dict:
        return {
            "format": FORMAT_VERSION, "duration_s": self.duration_s, "seed": self.seed, "sample_rate": SR,
            "placements": [{**dataclasses.asdict(p), "file": sources[p.source].path} for p in self.placements],
            "captions": [dataclasses.asdict(c) for c in self.captions],
            "queries": [dataclasses.asdict(q) for q in self.queries],
        }


def filler_keys(sources: dict[str, Source], design: Design) -> list[str]:
    """Speech that may repeat: everything with a reference text that no query is about."""
    reserved = {s.source for s in design.said_once} | {s.source for s in design.said_several} | {"jfk"}
    return sorted(k for k, s in sources.items() if s.speech and s.text and k not in reserved)


def plan_composition(duration_s: float, sources: dict[str, Source], design: Design = DESIGN,
                     seed: int = SEED) -> Plan:
    """Where everything goes. Fixed events (the query sentences, the German passages before two of them) start at
    their fraction of the length; music/noise stretches and more German passages come periodically where they do
    not collide; filler speech with short pauses fills the rest. The 2-hour plan is the 30-minute one with more
    filler and more periodic events: the same sentences at the same fractions."""
    import numpy as np

    rng = np.random.default_rng(seed)
    dur = {k: s.duration for k, s in sources.items()}
    # anchors: (target start, [(source, role, gap before)], kind); a nonspeech item's "gap" slot holds its length
    anchors: list[tuple[float, list[tuple[str, str, float]]]] = []
    for item in design.said_once:
        if item.after_switch:  # the German passage ends just before the sentence's own start
            anchors.append((item.at * duration_s - dur["multilingual"] - SWITCH_GAP_S,
                            [("multilingual", "switch", 0.0), (item.source, "said-once", SWITCH_GAP_S)]))
        else:
            anchors.append((item.at * duration_s, [(item.source, "said-once", 0.0)]))
    for item in design.said_several:
        anchors += [(at * duration_s, [(item.source, "said-several", 0.0)]) for at in item.at]

    def span(target: float, steps: list[tuple[str, str, float]]) -> tuple[float, float]:
        end = target
        for key, role, gap in steps:
            end += gap + (dur[key] if role != "nonspeech" else 0.0)
        return target, end

    def clear(target: float, steps: list[tuple[str, str, float]]) -> bool:
        s, e = span(target, steps)
        if e > duration_s - design.clear_s:
            return False
        return all(e + design.clear_s <= a or s >= b + design.clear_s for a, b in (span(*x) for x in anchors))

    def periodic(first: float, every: float, make) -> None:
        """One event per period, at the clear time nearest the period's mark (within a third of the period)."""
        t = first
        while t < duration_s:
            steps = make()
            for off in sorted(range(-int(every / 3), int(every / 3) + 1, 5), key=lambda x: (abs(x), x)):
                if t + off > 0 and clear(t + off, steps):
                    anchors.append((t + off, steps))
                    break
            t += every

    cycle = iter(range(10**6))
    periodic(design.nonspeech_every_s / 2, design.nonspeech_every_s,
             lambda: [(NONSPEECH[next(cycle) % len(NONSPEECH)][0], "nonspeech",
                       float(round(rng.uniform(*design.nonspeech_s), 1)))])
    periodic(design.switch_every_s * 0.75, design.switch_every_s, lambda: [("multilingual", "switch", 0.0)])
    anchors.sort(key=lambda a: a[0])

    fill = filler_keys(sources, design)
    queue: list[str] = []
    placements: list[Placement] = []

    def gap() -> float:
        return float(rng.uniform(2.0, 4.0) if rng.random() < 0.1 else rng.uniform(0.3, 1.2))

    def place(start: float, key: str, role: str, length: float | None = None) -> float:
        src = sources[key]
        end = start + (length if length is not None else src.duration)
        voiced = [(round(start + float(a), 3), round(start + float(b), 3)) for a, b in src.voiced]
        placements.append(Placement(round(start, 3), round(end, 3), key, role, src.text, voiced))
        return end

    def fill_until(cursor: float, target: float) -> float:
        while True:
            if len(queue) < 8:
                queue.extend(str(k) for k in rng.permutation(fill))
            g = gap()
            pick = next((i for i, k in enumerate(queue[:8]) if cursor + g + dur[k] + 0.3 <= target), None)
            if pick is None:
                return cursor
            cursor = place(cursor + g, queue.pop(pick), "filler")

    cursor = 0.5
    for target, steps in anchors:
        t = max(target, fill_until(cursor, target) + 0.3)  # late only when the event before ran long
        for key, role, g in steps:
            t = place(t, key, role, length=g) if role == "nonspeech" else place(t + g, key, role)
        cursor = t
    fill_until(cursor, duration_s - 0.5)
    if placements[-1].end > duration_s:
        raise ValueError(f"the design does not fit in {duration_s:.0f} s")

    captions = []
    for c in design.captions:
        start = round(c.at * duration_s + 0.3, 1)  # off the whole second, like a real cut
        captions.append(Caption(start, round(start + c.seconds, 1), c.text, c.style))
    queries: list[Query] = []
    for i, item in enumerate(design.said_once, 1):
        p = next(p for p in placements if p.source == item.source)
        queries.append(Query(f"once-{i}", "said-once", item.query, item.source, [p.start], [p.end],
                             item.after_switch))
        if item.verbatim:
            queries.append(Query(f"once-{i}v", "said-once-verbatim", item.verbatim, item.source, [p.start], [p.end],
                                 item.after_switch))
    for i, item in enumerate(design.said_several, 1):
        ps = [p for p in placements if p.source == item.source]
        queries.append(Query(f"several-{i}", "said-several", item.query, item.source, [p.start for p in ps],
                             [p.end for p in ps]))
    for i, (c, spec) in enumerate(zip(captions, design.captions, strict=True), 1):
        queries.append(Query(f"caption-{i}", "caption", spec.query, c.text, [c.start], [c.end]))
    return Plan(duration_s, seed, placements, captions, queries)


# ----------------------------------------------------------------------------------------------- rendering


class AudioRenderer:
    """The composed track, rendered window by window (never the whole track in memory): the room tone plus every
    placement that overlaps the window. Deterministic for any windowing (noise is seeded per second)."""

    def __init__(self, plan: Plan, sources: dict[str, Source]) -> None:
        self.plan, self.sources = plan, sources
        self.starts = [round(p.start * SR) for p in plan.placements]
        self._order = sorted(range(len(plan.placements)), key=lambda i: self.starts[i])
        self._sorted_starts = [self.starts[i] for i in self._order]
        self._longest = max((round((p.end - p.start) * SR) for p in plan.placements), default=0)
        self._cache: dict[int, object] = {}

    def _audio(self, i: int):
        import numpy as np

        if i in self._cache:
            return self._cache[i]
        p = self.plan.placements[i]
        src = self.sources[p.source]
        n = round((p.end - p.start) * SR)
        if p.speech:
            audio = src.audio
        elif p.source.startswith("noise:"):
            rng = np.random.default_rng([self.plan.seed, i])
            spectrum = np.fft.rfft(rng.standard_normal(n))
            spectrum /= np.sqrt(np.maximum(np.arange(len(spectrum)), 1))  # 1/f power: pink
            audio = np.fft.irfft(spectrum, n)
            audio = (audio * (dict(NONSPEECH)[p.source] / (np.sqrt(np.mean(audio ** 2)) or 1.0))).astype(np.float32)
        else:  # loop the clip, with short fades at every seam
            fade = np.minimum(1.0, np.minimum(np.arange(len(src.audio)), np.arange(len(src.audio))[::-1]) / 320)
            audio = np.resize((src.audio * fade).astype(np.float32), n)
        edge = np.minimum(1.0, np.minimum(np.arange(len(audio)), np.arange(len(audio))[::-1]) / 160)  # 10 ms fades
        audio = (audio * edge).astype(np.float32)
        if len(self._cache) > 32:
            self._cache.clear()
        self._cache[i] = audio
        return audio

    def _floor(self, n0: int, n1: int):
        import numpy as np

        first, last = n0 // SR - 1, (n1 - 1) // SR + 1  # a second either side: the same samples for any window
        blocks = [np.random.default_rng([self.plan.seed, 10**9 + s]).standard_normal(SR)
                  for s in range(first, last + 1)]
        noise = np.convolve(np.concatenate(blocks), [0.25, 0.5, 0.25], mode="same")
        noise *= NOISE_FLOOR_RMS / 0.61  # the smoothing keeps about 0.61 of white noise's RMS
        return noise[n0 - first * SR: n1 - first * SR].astype(np.float32)

    def render(self, n0: int, n1: int):
        """Samples ``n0 .. n1`` (16 kHz) of the track."""
        import numpy as np

        out = self._floor(n0, n1)
        hi = bisect_left(self._sorted_starts, n1)
        for j in range(hi - 1, -1, -1):  # placements starting before n1, latest first, until none can reach n0
            if self._sorted_starts[j] + self._longest < n0:
                break
            i = self._order[j]
            audio = self._audio(i)
            s = self.starts[i]
            a, b = max(n0, s), min(n1, s + len(audio))
            if a < b:
                out[a - n0: b - n0] += audio[a - s: b - s]
        return np.clip(out, -1.0, 1.0)


def _font(px: int):
    from PIL import ImageFont

    return ImageFont.load_default(size=px)  # Pillow's bundled FreeType font: the same glyphs everywhere


def draw_caption(img, text: str, style: str):
    """Draw ``text`` on a PIL image the way ``style`` says (see ``CaptionSpec``)."""
    from PIL import ImageDraw

    w, h = img.size
    draw = ImageDraw.Draw(img, "RGBA")
    if style == "wide":  # as wide as the frame allows: the first and last glyphs 3 px from the frame's edges
        px = 40
        while px > 8 and draw.textlength(text, font=_font(px)) > w - 6:
            px -= 1
        font = _font(px)
        tw = draw.textlength(text, font=font)
        draw.text(((w - tw) / 2, h - px - h * 0.08), text, font=font, fill=(255, 255, 255), stroke_width=2,
                  stroke_fill=(0, 0, 0))
        return img
    px = round(h / 15)
    font = _font(px)
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    tw, th = right - left, bottom - top
    pad = 1 if style == "tight" else px // 3
    x = w * 0.05 if style == "top" else (w - tw) / 2
    y = h * 0.08 if style == "top" else h - th - h * 0.08
    draw.rectangle((x - pad, y - pad, x + tw + pad, y + th + pad), fill=(0, 0, 0, 230))
    draw.text((x - left, y - top), text, font=font, fill=(255, 255, 255))
    return img


def street_frames(size: tuple[int, int], media: Path = MEDIA) -> Iterator[object]:
    """vtest.avi (a real street scene, 10 fps), scaled to the width and cropped to 16:9 in the middle, looped
    forever (RGB arrays)."""
    import av

    w, h = size
    while True:
        with av.open(str(media / "video" / "vtest.avi")) as container:
            for frame in container.decode(video=0):
                full_h = round(frame.height * w / frame.width) // 2 * 2
                rgb = frame.reformat(width=w, height=full_h, format="rgb24").to_ndarray()
                top = (full_h - h) // 2
                yield rgb[top: top + h]


def write_video(plan: Plan, sources: dict[str, Source], out: Path, fps: int = FPS, size: tuple[int, int] = SIZE,
                media: Path = MEDIA, progress: bool = True) -> Path:
    """The mp4 (H.264 with a 5 s GOP + AAC, 16 kHz mono), one second at a time so audio and video interleave."""
    import av
    import numpy as np
    from PIL import Image

    renderer = AudioRenderer(plan, sources)
    frames = street_frames(size, media)
    seconds = int(round(plan.duration_s))
    tmp = out.with_name(out.name + ".part")
    with av.open(str(tmp), "w", format="mp4") as container:
        v = container.add_stream("libx264", rate=fps, options={"preset": "veryfast", "crf": "28", "g": str(5 * fps)})
        v.width, v.height = size
        v.pix_fmt = "yuv420p"
        a = container.add_stream("aac", rate=SR)
        a.layout = "mono"
        a.bit_rate = 64000
        started = time.perf_counter()
        for sec in range(seconds):
            for k in range(fps):
                i = sec * fps + k
                rgb = next(frames)
                t = i / fps
                shown = [c for c in plan.captions if c.start <= t < c.end]
                if shown:
                    img = Image.fromarray(rgb)
                    for c in shown:
                        img = draw_caption(img, c.text, c.style)
                    rgb = np.asarray(img)
                vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
                vf.pts, vf.time_base = i, Fraction(1, fps)
                for packet in v.encode(vf):
                    container.mux(packet)
            pcm = (renderer.render(sec * SR, (sec + 1) * SR) * 32767).astype(np.int16)
            for j in range(0, SR, 1024):
                af = av.AudioFrame.from_ndarray(pcm[None, j:j + 1024], format="s16", layout="mono")
                af.sample_rate, af.pts, af.time_base = SR, sec * SR + j, Fraction(1, SR)
                for packet in a.encode(af):
                    container.mux(packet)
            if progress and (sec + 1) % 300 == 0:
                print(f"  built {sec + 1} s of {seconds} s ({time.perf_counter() - started:.0f} s)", flush=True)
        for stream in (v, a):
            for packet in stream.encode():
                container.mux(packet)
    tmp.replace(out)
    return out


def build(length: str, out_dir: Path, sources: dict[str, Source], fps: int, seed: int) -> tuple[Path, dict]:
    """The video and its ground truth for one length, reused when a kept copy of the same plan exists."""
    plan = plan_composition(LENGTHS[length], sources, seed=seed)
    truth = plan.ground_truth(sources) | {"fps": fps, "size": list(SIZE), "length": length}
    truth["plan_hash"] = hashlib.sha256(json.dumps(truth, sort_keys=True).encode()).hexdigest()[:16]
    video, truth_path = out_dir / f"long-{length}.mp4", out_dir / f"long-{length}.json"
    if video.exists() and truth_path.exists() and json.loads(truth_path.read_text()).get("plan_hash") == \
            truth["plan_hash"]:
        print(f"{length}: reusing {video} (same plan {truth['plan_hash']})", flush=True)
        return video, truth
    out_dir.mkdir(parents=True, exist_ok=True)
    require_disk(out_dir, 1.0 * LENGTHS[length] / 3600)
    print(f"{length}: building {video} ({len(plan.placements)} placements)", flush=True)
    started = time.perf_counter()
    write_video(plan, sources, video, fps)
    truth["build_s"] = round(time.perf_counter() - started, 1)
    truth_path.write_text(json.dumps(truth, indent=1))
    print(f"{length}: built in {truth['build_s']:.0f} s, {video.stat().st_size / 2**20:.0f} MiB", flush=True)
    return video, truth


# ----------------------------------------------------------------------------------------------- measuring


def run_measured(cmd: Sequence[str], env: dict[str, str], log_dir: Path, name: str) -> dict:
    """Run ``cmd`` as its own process: wall, CPU (user + sys) and peak RSS of that process alone (``os.wait4``),
    and the machine's 1-min load average sampled while it ran."""
    out, err = log_dir / f"{name}.stdout", log_dir / f"{name}.stderr"
    loads = [load1()]
    started = time.perf_counter()
    with out.open("w") as fo, err.open("w") as fe:
        proc = subprocess.Popen(list(cmd), env=env, stdout=fo, stderr=fe, cwd=ROOT)
        last_sample = time.monotonic()
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            time.sleep(0.5)
            if time.monotonic() - last_sample >= 15:
                loads.append(load1())
                last_sample = time.monotonic()
    wall = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    result = {"wall_s": wall, "cpu_s": usage.ru_utime + usage.ru_stime, "user_s": usage.ru_utime,
              "sys_s": usage.ru_stime, "peak_rss_mb": usage.ru_maxrss / 1024, "rc": proc.returncode,
              "load_start": loads[0], "load_mean": sum(loads) / len(loads), "load_max": max(loads),
              "stdout": str(out), "stderr": str(err)}
    if proc.returncode != 0:
        tail = err.read_text()[-3000:]
        raise RuntimeError(f"{name} failed (rc {proc.returncode}): {' '.join(cmd)}\n{tail}")
    return result


def child_env(home: Path | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("HF_HUB_OFFLINE", "1")  # no hub here: fail fast into speech mode instead of timing out
    env.setdefault("TRANSFORMERS_OFFLINE", "1")
    if home is not None:
        env["SAVE_SEARCH_HOME"] = str(home)
    return env


def _ingest_child(stats_path: str, video: str) -> None:
    """Runs in the ingest process: the real ``save-search ingest FILE --wait --json``. The worker's per-stage clock
    (``Worker.stats``) is written to ``stats_path`` when the CLI shuts the worker down. This is the one place that
    knows a pipeline internal; without it (renamed, removed) the run goes on without stage times."""
    try:
        from indexer.ingest import worker as worker_module

        original = worker_module.Worker.shutdown

        def shutdown(self, *args, **kwargs):
            try:
                Path(stats_path).write_text(json.dumps({k: float(v) for k, v in dict(self.stats).items()}))
            except Exception as exc:  # noqa: BLE001 - stage times are optional
                print(f"no stage times: {exc}", file=sys.stderr)
            return original(self, *args, **kwargs)

        worker_module.Worker.shutdown = shutdown
    except Exception as exc:  # noqa: BLE001
        print(f"no stage times: {exc}", file=sys.stderr)
    from app.cli import main

    sys.argv = ["save-search", "ingest", video, "--wait", "--json"]
    main()


def _baseline_child(out_path: str, video: str, model_dir: str, language: str) -> None:
    """Runs in the baseline process: plain faster-whisper on the video file (it decodes the audio itself)."""
    started = time.perf_counter()
    from faster_whisper import WhisperModel

    model = WhisperModel(model_dir, device="cpu", compute_type="int8")
    loaded = time.perf_counter()
    segments, info = model.transcribe(video, vad_filter=True, beam_size=5,
                                      language=None if language == "auto" else language)
    rows = [[s.start, s.end, s.text] for s in segments]
    done = time.perf_counter()
    Path(out_path).write_text(json.dumps({
        "segments": rows, "language": info.language, "language_probability": info.language_probability,
        "load_s": loaded - started, "transcribe_s": done - loaded, "duration_after_vad": info.duration_after_vad}))


def _collect_child(out_path: str, queries_path: str, k: str) -> None:
    """Runs in its own process against the ingested home: the video record and every query's results, through
    the HTTP API (no embedded worker)."""
    from fastapi.testclient import TestClient

    from app.main import create_app

    queries = json.loads(Path(queries_path).read_text())
    with TestClient(create_app(embedded_worker=False)) as client:
        listed = client.get("/v1/videos", params={"limit": 5})
        listed.raise_for_status()
        videos = listed.json()
        if len(videos) != 1:
            raise SystemExit(f"expected one video in the collection, found {len(videos)}")
        video = client.get(f"/v1/videos/{videos[0]['video_id']}").json()
        searches = {}
        for q in queries:
            started = time.perf_counter()
            r = client.get("/v1/search", params={"q": q["text"], "k": int(k)})
            r.raise_for_status()
            response = r.json()
            for result in response.get("results", []):
                result.pop("transcript", None)  # the whole transcript, in every result: kept once, in ``video``
            searches[q["qid"]] = {"response": response, "seconds": time.perf_counter() - started}
    Path(out_path).write_text(json.dumps({"video": video, "searches": searches}))


def prepare_home(home: Path) -> None:
    """A fresh SAVE_SEARCH_HOME with the bundled Whisper already joined into it (the first-run copy of the model
    file is not part of ingest time)."""
    shutil.rmtree(home, ignore_errors=True)
    home.mkdir(parents=True)
    from models.bundled import bundled_whisper_dir

    bundled_whisper_dir(home / "models" / "whisper-base")


def run_ingest(video: Path, home: Path, logs: Path) -> dict:
    stats_path = logs / "ingest-stats.json"
    stats_path.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "bench.long_video_bench", "_ingest-child", str(stats_path), str(video)]
    result = run_measured(cmd, child_env(home), logs, "ingest")
    rows = [json.loads(line) for line in Path(result["stdout"]).read_text().splitlines() if line.startswith("{")]
    if not rows or rows[-1].get("status") != "done":
        raise RuntimeError(f"ingest did not index the video: {rows}")
    result["item"] = rows[-1]
    result["stats"] = json.loads(stats_path.read_text()) if stats_path.exists() else {}
    return result


def run_baseline(video: Path, logs: Path, language: str, name: str = "baseline") -> dict:
    from models.bundled import bundled_whisper_dir

    out = logs / f"{name}.json"
    model_dir = bundled_whisper_dir()
    cmd = [sys.executable, "-m", "bench.long_video_bench", "_baseline-child", str(out), str(video), str(model_dir),
           language]
    result = run_measured(cmd, child_env(), logs, name)
    result.update(json.loads(out.read_text()))
    result["requested_language"] = language
    return result


def run_collect(home: Path, logs: Path, queries: list[dict], k: int) -> dict:
    qpath, out = logs / "queries.json", logs / "collected.json"
    qpath.write_text(json.dumps(queries))
    cmd = [sys.executable, "-m", "bench.long_video_bench", "_collect-child", str(out), str(qpath), str(k)]
    run_measured(cmd, child_env(home), logs, "collect")
    return json.loads(out.read_text())


# ----------------------------------------------------------------------------------------------- scoring

Interval = tuple[float, float]


def merge(intervals: Iterable[Interval], gap: float = 0.0, pad: float = 0.0) -> list[Interval]:
    """Sorted, non-overlapping union; intervals closer than ``gap`` are joined, each widened by ``pad`` first."""
    out: list[list[float]] = []
    for s, e in sorted((s - pad, e + pad) for s, e in intervals if e > s):
        if out and s <= out[-1][1] + gap:
            out[-1][1] = max(out[-1][1], e)
        else:
            out.append([s, e])
    return [(s, e) for s, e in out]


def overlap(intervals: Sequence[Interval], merged: Sequence[Interval]) -> float:
    """Seconds of ``intervals`` (any order) inside ``merged`` (sorted, disjoint)."""
    starts = [s for s, _ in merged]
    total = 0.0
    for s, e in intervals:
        i = max(0, bisect_left(starts, s) - 1)
        while i < len(merged) and merged[i][0] < e:
            total += max(0.0, min(e, merged[i][1]) - max(s, merged[i][0]))
            i += 1
    return total


def content_tokens(text: str) -> list[str]:
    """Content words as the search reads them (Whisper's normaliser, no stop words, light stems), numbers as
    digits ("five five" -> "55" and "5, 5" -> "5 5" both give 5 5)."""
    from indexer.text import STOP_WORDS, normalize, stem, words

    out: list[str] = []
    for w in words(normalize(text)):
        if w.isdigit():
            out += list(w)
        elif w not in STOP_WORDS:
            out.append(stem(w))
    return out


def _lcs(a: Sequence[str], b: Sequence[str]) -> int:
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b, 1):
            cur.append(prev[j - 1] + 1 if x == y else max(prev[j], cur[-1]))
        prev = cur
    return prev[-1]


def coverage(truth: dict, segments: Sequence[Sequence]) -> dict:
    """How much of the placed speech (its voiced time) the transcript's segments cover, and which utterances of at
    least 1 s are lost: less than ``LOST_BELOW`` of their voiced time under a segment, or, when the reference is
    known, less than ``LOST_WORDS_BELOW`` of their content words said (in order) by the segments within 3 s of
    them (Whisper's timestamps drift over a skipped sentence, so time alone misses some)."""
    covered = merge(((s[0], s[1]) for s in segments), gap=MERGE_GAP_S, pad=PAD_S)
    strict = merge((s[0], s[1]) for s in segments)
    by_start = sorted(segments, key=lambda s: s[0])
    seg_starts = [s[0] for s in by_start]
    longest = max((s[1] - s[0] for s in by_start), default=0.0)
    speech = [p for p in truth["placements"] if p["role"] != "nonspeech"]
    voiced = [tuple(v) for p in speech for v in p["voiced"]]
    total = sum(e - s for s, e in voiced)
    lost, partial = [], []
    previous = None
    for p in speech:
        after_switch = previous is not None and previous["role"] == "switch" and p["start"] - previous["end"] < 2.0
        previous = p
        v = [tuple(x) for x in p["voiced"]]
        seconds = sum(e - s for s, e in v)
        if p["end"] - p["start"] < 1.0 or seconds <= 0:
            continue
        share = overlap(v, covered) / seconds
        said = None
        ref = content_tokens(p["text"]) if p["text"] else []
        if ref:
            lo, hi = p["start"] - 3.0, p["end"] + 3.0
            near = by_start[bisect_left(seg_starts, lo - longest): bisect_left(seg_starts, hi)]
            hyp = [t for s in near if s[1] > lo for t in content_tokens(s[2])]
            said = _lcs(ref, hyp) / len(ref)
        row = {"start": p["start"], "end": p["end"], "source": p["source"], "role": p["role"],
               "text": p["text"], "covered": round(share, 3), "words_said": None if said is None else round(said, 3),
               "after_switch": after_switch}
        if share < LOST_BELOW or (said is not None and said < LOST_WORDS_BELOW):
            lost.append(row)
        elif share < 0.8 or (said is not None and said < 0.5):
            partial.append(row)
    nonspeech = merge((p["start"], p["end"]) for p in truth["placements"] if p["role"] == "nonspeech")
    return {"speech_s": total, "coverage": overlap(voiced, covered) / total if total else float("nan"),
            "coverage_strict": overlap(voiced, strict) / total if total else float("nan"),
            "lost": lost, "partial": partial,
            "segments_in_nonspeech_s": overlap([(s[0], s[1]) for s in segments], nonspeech)}


def wer(truth: dict, segments: Sequence[Sequence]) -> dict:
    """Corpus WER of the transcript against the placed utterances' reference texts, in two normalisations: plain
    (``indexer.inference.asr_quality``) and Whisper's English normaliser (``indexer.text.normalize``: numbers,
    spellings, contractions, as the search reads text).

    The German passages have no reference, so the track is cut at them into blocks; a segment belongs to the block
    or passage it overlaps most (Whisper's timestamps stretch over pauses and music, so a segment's text is never
    split by time); segments of a passage are left out, and each block's segments are aligned with its references
    in order. Words said in music/noise count as insertions through that alignment; ``words_in_nonspeech`` counts
    those of segments lying wholly inside a music/noise stretch (hallucinations)."""
    from indexer.inference.asr_quality import normalize_text, word_edits
    from indexer.text import normalize as whisper_normalize

    switches = sorted((p["start"], p["end"]) for p in truth["placements"] if p["role"] == "switch")
    # the timeline as alternating parts: block 0, passage 0, block 1, passage 1, ..., block n
    edges = [float("-inf")] + [x for s, e in switches for x in (s, e)] + [float("inf")]
    parts = list(zip(edges, edges[1:], strict=False))

    def part_of(start: float, end: float) -> int:
        if end <= start:
            return max(0, bisect_left(edges, start) - 1)
        return max(range(len(parts)), key=lambda i: (min(end, parts[i][1]) - max(start, parts[i][0]), -i))

    refs: list[list[str]] = [[] for _ in parts]
    hyps: list[list[str]] = [[] for _ in parts]
    for p in truth["placements"]:
        if p["role"] not in ("nonspeech", "switch") and p["text"]:
            refs[part_of(p["start"], p["end"])].append(p["text"])
    in_switch = 0
    for s in segments:
        i = part_of(s[0], s[1])
        if i % 2:
            in_switch += len(normalize_text(s[2]).split())
        else:
            hyps[i].append(s[2])
    nonspeech = [(p["start"] - 0.5, p["end"] + 0.5) for p in truth["placements"] if p["role"] == "nonspeech"]
    hallucinated = [s[2] for s in segments if any(a <= s[0] and s[1] <= b for a, b in nonspeech)]
    out: dict[str, float] = {}
    for name, norm in (("plain", lambda x: x), ("whisper", whisper_normalize)):
        edits = words = 0
        for ref, hyp in zip(refs[::2], hyps[::2], strict=True):
            e, n = word_edits(norm(" ".join(ref)), norm(" ".join(hyp)))
            edits, words = edits + e, words + n
        out[name] = edits / words if words else float("nan")
        out[f"{name}_edits"], out[f"{name}_words"] = edits, words
    out["words_in_nonspeech"] = len(normalize_text(" ".join(hallucinated)).split())
    out["words_in_switch_passages"] = in_switch
    return out


def moments_of(result: dict) -> list[dict]:
    """A result's moments, best first: ``moments`` when the API has them (issue 18), else ``moment`` or the one
    ``segment`` it returns today."""
    if result.get("moments"):
        return list(result["moments"])
    one = result.get("moment") or result.get("segment")
    return [one] if one else []


def _matched(moments: list[dict], spans: list[tuple[float, float]], near) -> int:
    """How many placed (start, end) spans a returned moment matches, one moment per span."""
    free, n = list(moments), 0
    for start, end in spans:
        hit = next((m for m in free if near(m["start"], start, end)), None)
        if hit is not None:
            free.remove(hit)
            n += 1
    return n


def score_queries(truth: dict, collected: dict) -> list[dict]:
    rows = []
    for q in truth["queries"]:
        found = collected["searches"][q["qid"]]["response"].get("results", [])
        moments = moments_of(found[0]) if found else []
        row = {"qid": q["qid"], "kind": q["kind"], "query": q["text"], "starts": q["starts"],
               "after_switch": q["after_switch"], "results": len(found),
               "score": found[0].get("score") if found else None,
               "moments": [{k: m.get(k) for k in ("start", "end", "text", "source", "score")} for m in moments]}
        if q["kind"] == "said-several":
            spans = list(zip(q["starts"], q["ends"], strict=True))
            row.update(matched=_matched(moments, spans, lambda t, s, e: abs(t - s) <= MOMENT_TOLERANCE_S),
                       inside=_matched(moments, spans, lambda t, s, e: s - MOMENT_TOLERANCE_S <= t <= e),
                       placed=len(spans))
        elif moments:
            top = moments[0]
            row["start_error"] = top["start"] - q["starts"][0]
            if q["kind"] == "caption":
                row["hit"] = top.get("source") == "screen" and top["start"] < q["ends"][0] and \
                    top["end"] > q["starts"][0]
            else:
                row["hit"] = abs(row["start_error"]) <= MOMENT_TOLERANCE_S
                row["inside"] = q["starts"][0] - MOMENT_TOLERANCE_S <= top["start"] <= q["ends"][0]
        else:
            row["hit"] = False
        rows.append(row)
    return rows


def score_captions(truth: dict, video: dict) -> list[dict]:
    spans = video.get("screen_text") or []
    rows = []
    for c in truth["captions"]:
        over = [(min(c["end"], s["end"]) - max(c["start"], s["start"]), s) for s in spans
                if s["start"] < c["end"] and s["end"] > c["start"]]
        best = max(over, key=lambda x: x[0])[1] if over else None
        read = " ".join(best["text"].split()) if best else None
        rows.append({"text": c["text"], "style": c["style"], "start": c["start"], "end": c["end"], "read": read,
                     "exact": read is not None and read.upper() == c["text"].upper(),
                     "start_error": best["start"] - c["start"] if best else None,
                     "end_error": best["end"] - c["end"] if best else None,
                     "overlapping": [s["text"] for _, s in over]})
    return rows


PIPELINE_COVERAGE_KEYS = re.compile(r"coverage|speech_s|speech_seconds|transcribed|redecoded|re_decoded|regions")


def pipeline_own_coverage(video: dict) -> dict:
    """What the pipeline itself says about speech and coverage, if it says anything (issue 18 asks it to)."""
    found = {}

    def walk(obj: object, prefix: str = "") -> None:
        if isinstance(obj, dict):
            for k, v in obj.items():
                if k in ("segments", "screen_text", "transcript"):
                    continue
                if PIPELINE_COVERAGE_KEYS.search(k) and not isinstance(v, (dict, list)):
                    found[prefix + k] = v
                walk(v, f"{prefix}{k}.")

    walk(video)
    return found


# ----------------------------------------------------------------------------------------------- report


def fmt(x: object, digits: int = 1) -> str:
    if x is None:
        return "n/a"
    if isinstance(x, float):
        return "n/a" if x != x else f"{x:.{digits}f}"
    return str(x)


def mmss(t: float) -> str:
    t = int(round(t))
    return f"{t // 3600}:{t // 60 % 60:02d}:{t % 60:02d}" if t >= 3600 else f"{t // 60}:{t % 60:02d}"


def report(r: dict) -> str:
    """One length's results as a BENCHMARKS.md body."""
    d = r["duration_s"]
    ing, base = r["ingest"], r.get("baseline")
    cov_i, cov_b = r["coverage"]["ingest"], (r["coverage"].get("baseline") if base else None)
    wer_i, wer_b = r["wer"]["ingest"], (r["wer"].get("baseline") if base else None)

    def both(f, digits: int = 1) -> list[str]:
        return [fmt(f(ing, cov_i, wer_i), digits), fmt(f(base, cov_b, wer_b), digits) if base else "not run"]

    rows = [
        ["wall s", *both(lambda m, c, w: m["wall_s"])],
        ["x real time (wall / video length)", *both(lambda m, c, w: m["wall_s"] / d, 3)],
        ["CPU s (user + sys)", *both(lambda m, c, w: m["cpu_s"])],
        ["peak RSS MB", *both(lambda m, c, w: m["peak_rss_mb"], 0)],
        ["1-min load: start / mean / max", *both(lambda m, c, w: f"{m['load_start']:.2f} / {m['load_mean']:.2f} / "
                                                                 f"{m['load_max']:.2f}")],
        ["transcript segments", *both(lambda m, c, w: m["segment_count"])],
        ["coverage of placed speech %", *both(lambda m, c, w: 100 * c["coverage"])],
        ["coverage, strict (segments as stored) %", *both(lambda m, c, w: 100 * c["coverage_strict"])],
        ["lost utterances (>= 1 s; < 20 % of the time or < 25 % of the words)",
         *both(lambda m, c, w: len(c["lost"]), 0)],
        ["WER % (Whisper-normalised)", *both(lambda m, c, w: 100 * w["whisper"])],
        ["WER % (plain)", *both(lambda m, c, w: 100 * w["plain"])],
        ["words transcribed in music/noise", *both(lambda m, c, w: w["words_in_nonspeech"], 0)],
    ]
    table = md_table(["", "ingest (save-search ingest --wait)", f"plain faster-whisper ({r.get('baseline_label')})"],
                     rows)
    lines = [f"A {mmss(d)} video (`{r['video_name']}`, {r['video_mb']:.0f} MB, {SIZE[0]}x{SIZE[1]} at {r['fps']} fps, "
             f"plan `{r['plan_hash']}`): {r['speech_s']:.0f} s of placed voiced speech in {r['utterances']} "
             f"utterances, {r['nonspeech_stretches']} music/applause/noise stretches ({r['nonspeech_s']:.0f} s), "
             f"{r['switches']} English-then-German passages. Model mode: {r['model_mode']}; settings from the "
             f"environment: {r['env_settings'] or 'none (defaults)'}.", "", table, ""]
    if base:
        runs = base.get("runs") or [base]
        each = "; ".join(f"{x.get('when', 'after')} the ingest: {x['wall_s']:.0f} s wall, {x['cpu_s']:.0f} s CPU, "
                         f"mean load {x['load_mean']:.2f}" for x in runs)
        lines.append(f"**Ingest / plain faster-whisper: {ing['wall_s'] / base['wall_s']:.2f}x wall, "
                     f"{ing['cpu_s'] / base['cpu_s']:.2f}x CPU** (issue 18 target: at most 1.25x). Plain "
                     f"faster-whisper ran {len(runs)} time(s) ({each}{'; the table has their mean' * (len(runs) > 1)}"
                     f"{'' if base.get('segments_identical', True) else ', and the runs transcribed differently'}): "
                     f"model load {base['load_s']:.1f} s, transcription (decode + VAD + decode loop) "
                     f"{base['transcribe_s']:.1f} s, detected language {base['language']} "
                     f"(p {base['language_probability']:.2f}).")
    stats = ing.get("stats") or {}
    stages = {k: v for k, v in stats.items() if k not in ("videos", "video_seconds")}
    if stages:
        share = ", ".join(f"{k} {v:.0f} s ({100 * v / ing['wall_s']:.1f} %)"
                          for k, v in sorted(stages.items(), key=lambda kv: -kv[1]))
        lines.append(f"Ingest stages (the worker's clock, share of the process's wall time): {share}; the process "
                     f"outside them (imports, model loading, start-up): {ing['wall_s'] - sum(stages.values()):.0f} s.")
    else:
        lines.append("Ingest stages: not available from this pipeline.")
    own = r.get("pipeline_coverage") or {}
    lines.append(f"The pipeline's own speech/coverage record: {json.dumps(own) if own else 'none (not stored)'}.")
    lines.append("")
    q = r["queries"]
    once = [x for x in q if x["kind"] == "said-once"]
    verb = [x for x in q if x["kind"] == "said-once-verbatim"]
    several = [x for x in q if x["kind"] == "said-several"]
    caps = [x for x in q if x["kind"] == "caption"]
    misses = [f"{x['qid']} ({mmss(x['starts'][0])}{', after the German passage' if x['after_switch'] else ''}: "
              f"top moment {fmt(x['moments'][0]['start'] if x['moments'] else None)} s, "
              f"error {fmt(x.get('start_error'))} s)" for x in once + verb if not x["hit"]]
    lines.append(f"Moments (search k=10; a hit: the top moment starts within {MOMENT_TOLERANCE_S} s of the placed "
                 f"start; in brackets, moments that start anywhere from {MOMENT_TOLERANCE_S} s before the sentence "
                 f"to its end): said once, paraphrased **{sum(x['hit'] for x in once)}/{len(once)}** "
                 f"({sum(x.get('inside', False) for x in once)}), near-verbatim "
                 f"**{sum(x['hit'] for x in verb)}/{len(verb)}** ({sum(x.get('inside', False) for x in verb)})"
                 + (f"; missed: {'; '.join(misses)}" if misses else "") + ". Said five times: "
                 + ", ".join(f"{x['qid']} **{x['matched']}/{x['placed']}** placed starts matched ({x['inside']}), "
                             f"{len(x['moments'])} moment(s) returned" for x in several)
                 + f". Caption queries answered by the caption's on-screen span: "
                 f"{sum(x['hit'] for x in caps)}/{len(caps)}.")
    lines.append("")
    cap_rows = [[c["text"], c["style"], f"{mmss(c['start'])} ({c['start']:.1f} s)", c["read"] or "(nothing)",
                 "yes" if c["exact"] else "no", fmt(c["start_error"]), fmt(c["end_error"])] for c in r["captions"]]
    lines.append(md_table(["caption", "style", "shown from", "stored as", "exact", "span start error s",
                           "span end error s"], cap_rows))
    lines.append("")
    for name, cov in (("ingest", cov_i), ("plain faster-whisper", cov_b)):
        if cov is None:
            continue
        if cov["lost"]:
            lost = "; ".join(f"{mmss(x['start'])}-{mmss(x['end'])} {x['source']} ({x['role']}"
                             f"{', right after a German passage' if x.get('after_switch') else ''}): "
                             f"\"{(x['text'] or '(German passage)')[:60]}\"" for x in cov["lost"][:20])
            more = f" and {len(cov['lost']) - 20} more (raw results)" if len(cov["lost"]) > 20 else ""
            lines.append(f"Lost by {name} ({len(cov['lost'])}): {lost}{more}.")
        else:
            lines.append(f"Lost by {name}: nothing.")
    return "\n".join(lines)


def code_label() -> str:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout.strip()

    dirty = " + uncommitted changes" if git("status", "--porcelain", "--untracked-files=no") else ""
    return f"{git('rev-parse', '--abbrev-ref', 'HEAD')} at {git('rev-parse', '--short', 'HEAD')}{dirty}"


# ----------------------------------------------------------------------------------------------- main


def measure_length(length: str, args: argparse.Namespace, sources: dict[str, Source], work: Path,
                   command: str) -> dict | None:
    """Build (or reuse), ingest, collect, run the baseline: everything measured for one length, unscored (the
    raw record, written to ``raw-<length>.json`` so that ``--rescore`` can score it again)."""
    video, truth = build(length, work / "media", sources, args.fps, args.seed)
    if args.build_only:
        return None
    logs = work / f"run-{length}"
    shutil.rmtree(logs, ignore_errors=True)
    logs.mkdir(parents=True)
    home = work / f"home-{length}"
    prepare_home(home)
    runs: list[dict] = []

    def baseline(when: str) -> None:
        load = wait_for_quiet(max_wait_s=args.quiet_wait)
        print(f"{length}: plain faster-whisper, {when} ingest (load {load:.2f})", flush=True)
        run = run_baseline(video, logs, args.baseline_language, f"baseline-{when}")
        runs.append(run | {"when": when})
        print(f"{length}: baseline {run['wall_s']:.0f} s wall, {run['cpu_s']:.0f} s CPU, "
              f"{run['peak_rss_mb']:.0f} MB peak", flush=True)

    if args.baseline_runs >= 2:  # bracket the ingest: the machine is shared and its load drifts
        baseline("before")
    try:
        load = wait_for_quiet(max_wait_s=args.quiet_wait)
        print(f"{length}: ingest (load {load:.2f})", flush=True)
        ingest = run_ingest(video, home, logs)
        print(f"{length}: ingest {ingest['wall_s']:.0f} s wall, {ingest['cpu_s']:.0f} s CPU, "
              f"{ingest['peak_rss_mb']:.0f} MB peak", flush=True)
        collected = run_collect(home, logs, truth["queries"], args.k)
    finally:
        if not args.keep:
            shutil.rmtree(home, ignore_errors=True)
    if args.baseline_runs >= 1:
        baseline("after")
    raw = {"length": length, "truth": truth, "video_name": video.name, "video_mb": video.stat().st_size / 2**20,
           "label": args.label, "command": command, "baseline_language": args.baseline_language,
           "env_settings": ", ".join(f"{k}={v}" for k, v in sorted(os.environ.items())
                                     if k.startswith("SAVE_SEARCH_") and k != "SAVE_SEARCH_HOME"),
           "ingest": ingest, "baseline": runs[0] if runs else None,
           "baseline_runs": [{k: v for k, v in r.items() if k != "segments"} for r in runs],
           "baseline_segments_identical": all(r["segments"] == runs[0]["segments"] for r in runs),
           "collected": collected}
    (work / f"raw-{length}.json").write_text(json.dumps(raw))
    return raw


def score(raw: dict) -> dict:
    """The results of one length from its raw record (pure: no process, no model)."""
    truth, ingest, baseline, collected = raw["truth"], dict(raw["ingest"]), raw["baseline"], raw["collected"]
    v = collected["video"]
    segs = [(s["start"], s["end"], s["text"]) for s in v.get("segments", []) if s.get("source", "speech") == "speech"]
    ingest["segment_count"] = len(segs)
    placements = truth["placements"]
    result = {
        "length": raw["length"], "duration_s": truth["duration_s"], "fps": truth["fps"],
        "plan_hash": truth["plan_hash"], "video_name": raw["video_name"], "video_mb": raw["video_mb"],
        "code": raw["label"], "command": raw["command"],
        "speech_s": sum(e - s for p in placements if p["role"] != "nonspeech" for s, e in p["voiced"]),
        "utterances": sum(p["role"] != "nonspeech" for p in placements),
        "nonspeech_stretches": sum(p["role"] == "nonspeech" for p in placements),
        "nonspeech_s": sum(p["end"] - p["start"] for p in placements if p["role"] == "nonspeech"),
        "switches": sum(p["role"] == "switch" for p in placements),
        "model_mode": v.get("model_mode"), "language": v.get("language"), "env_settings": raw["env_settings"],
        "ingest": ingest, "baseline": None,
        "baseline_label": f"base int8, VAD, beam 5, language {raw['baseline_language']}",
        "coverage": {"ingest": coverage(truth, segs)}, "wer": {"ingest": wer(truth, segs)},
        "queries": score_queries(truth, collected), "captions": score_captions(truth, v),
        "pipeline_coverage": pipeline_own_coverage(v), "segments": {"ingest": segs},
        "screen_text": v.get("screen_text"),
        "search_seconds": {k: x["seconds"] for k, x in collected["searches"].items()},
    }
    if baseline:
        baseline = dict(baseline)
        bsegs = [tuple(s) for s in baseline.pop("segments")]
        baseline["segment_count"] = len(bsegs)
        runs = raw.get("baseline_runs") or [dict(baseline)]
        if len(runs) > 1:  # timings: the mean of the runs around the ingest; memory: the highest
            for key in ("wall_s", "cpu_s", "user_s", "sys_s", "load_mean", "load_start", "transcribe_s"):
                baseline[key] = sum(r[key] for r in runs) / len(runs)
            baseline["peak_rss_mb"] = max(r["peak_rss_mb"] for r in runs)
            baseline["load_max"] = max(r["load_max"] for r in runs)
        baseline["runs"] = runs
        baseline["segments_identical"] = raw.get("baseline_segments_identical", True)
        result["baseline"] = baseline
        result["coverage"]["baseline"] = coverage(truth, bsegs)
        result["wer"]["baseline"] = wer(truth, bsegs)
        result["segments"]["baseline"] = bsegs
    return result


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    children = {"_ingest-child": _ingest_child, "_baseline-child": _baseline_child, "_collect-child": _collect_child}
    if argv and argv[0] in children:
        children[argv[0]](*argv[1:])
        return
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--lengths", default="30m,2h", help="comma-separated: 30m, 2h (10m: a quick smoke run)")
    p.add_argument("--keep", action="store_true", help="keep the built media and the ingested home")
    p.add_argument("--skip-baseline", action="store_true", help="no plain faster-whisper run (= --baseline-runs 0)")
    p.add_argument("--baseline-runs", type=int, default=2, choices=(0, 1, 2),
                   help="plain faster-whisper runs: 2 = before and after the ingest (the ratio uses their mean), "
                        "1 = after it")
    p.add_argument("--build-only", action="store_true", help="only build the media (with --keep to keep them)")
    p.add_argument("--rescore", action="store_true",
                   help="run nothing: score WORK/raw-<length>.json of an earlier run again and rewrite its section")
    p.add_argument("--baseline-language", default="auto", help="auto (detect, as ingest does) or a code such as en")
    p.add_argument("--k", type=int, default=10, help="results per search")
    p.add_argument("--fps", type=int, default=FPS)
    p.add_argument("--seed", type=int, default=SEED)
    p.add_argument("--work", type=Path, default=WORK / "long-video")
    p.add_argument("--quiet-wait", type=float, default=300.0,
                   help="wait at most this long for a 1-min load below 1.5 before each measured run")
    p.add_argument("--label", default=None, help="names the code measured, in the BENCHMARKS.md heading too "
                                                 "(default: branch and commit); a rerun with the same label "
                                                 "replaces its section")
    p.add_argument("--no-write", action="store_true", help="print only, leave BENCHMARKS.md alone")
    args = p.parse_args(argv)
    if args.skip_baseline:
        args.baseline_runs = 0
    lengths = [x.strip() for x in args.lengths.split(",") if x.strip()]
    unknown = [x for x in lengths if x not in LENGTHS]
    if unknown:
        p.error(f"unknown length(s) {unknown}; choose from {sorted(LENGTHS)}")
    explicit_label, args.label = args.label, args.label or code_label()
    command = command_line("bench.long_video_bench", argv)
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    sources = None
    if not args.rescore:
        print(f"loading the recordings from {MEDIA}", flush=True)
        sources = load_sources()
    try:
        for length in lengths:
            if args.rescore:
                raw = json.loads((work / f"raw-{length}.json").read_text())
                if explicit_label and explicit_label != raw["label"]:
                    raw["label"] = explicit_label  # renamed for good: a later --rescore keeps the new name
                    (work / f"raw-{length}.json").write_text(json.dumps(raw))
            else:
                raw = measure_length(length, args, sources, work, command)
                if raw is None:
                    continue
            result = score(raw)
            (work / f"results-{length}.json").write_text(json.dumps(result, indent=1))
            # The current code's run replaces "Long videos, 30m"; a named one (--label) is a section of its own.
            title = f"{TITLE}, {length}" + (f" ({explicit_label})" if explicit_label else "")
            body = f"Code measured: {raw['label']}.\n\n{report(result)}"
            publish(entry(title, raw["command"], result["ingest"]["load_start"], body), not args.no_write)
            print(f"raw record: {work / f'raw-{length}.json'}; results: {work / f'results-{length}.json'}", flush=True)
    finally:
        if not args.keep and not args.rescore:
            shutil.rmtree(work / "media", ignore_errors=True)


if __name__ == "__main__":
    main()
