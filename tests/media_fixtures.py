"""Test media made at test time: real speech recordings wrapped into video containers with PyAV, and real
clips with known text drawn over them (captions, slides, lower thirds) for the on-screen text (OCR) tests."""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont

MEDIA = Path(__file__).resolve().parents[2] / "shared" / "data" / "media"
# Tests that read the real recordings skip with this reason where the media folder is absent (a checkout elsewhere).
needs_media = pytest.mark.skipif(not MEDIA.is_dir(), reason=f"real recordings not found at {MEDIA}")


def read_mono_16k(path: Path) -> np.ndarray:
    from faster_whisper.audio import decode_audio

    return decode_audio(str(path), sampling_rate=16000)


def speech_video(audio: Path | np.ndarray, out: Path, color: tuple[int, int, int] = (40, 90, 160), size: int = 96,
                 fps: int = 2) -> Path:
    """An mp4 (H.264 + AAC) showing a plain coloured frame for as long as the speech lasts."""
    samples = read_mono_16k(audio) if isinstance(audio, Path) else np.asarray(audio, dtype=np.float32)
    duration = len(samples) / 16000
    with av.open(str(out), "w") as container:
        v = container.add_stream("libx264", rate=fps)
        v.width = v.height = size
        v.pix_fmt = "yuv420p"
        a = container.add_stream("aac", rate=16000)
        a.layout = "mono"
        frame_img = np.zeros((size, size, 3), dtype=np.uint8)
        frame_img[:] = color
        images = []
        for i in range(max(1, int(np.ceil(duration * fps)))):
            img = frame_img.copy()
            img[: size // 8, : (i % 8 + 1) * size // 8] = 255  # a little motion
            images.append(img)
        _encode_frames(container, v, images, fps)
        _encode_audio(container, a, samples)
    return out


def _encode_frames(container: av.container.OutputContainer, stream: av.video.stream.VideoStream,
                   images: list[np.ndarray], fps: int) -> None:
    """Encode RGB images as consecutive frames at ``fps`` and flush the encoder."""
    for i, img in enumerate(images):
        vf = av.VideoFrame.from_ndarray(img, format="rgb24")
        vf.pts = i
        vf.time_base = Fraction(1, fps)
        for packet in stream.encode(vf):
            container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)


def _encode_audio(container: av.container.OutputContainer, stream: av.audio.stream.AudioStream,
                  samples: np.ndarray) -> None:
    """Encode 16 kHz mono float samples into ``stream`` and mux them."""
    pcm = (np.clip(samples, -1, 1) * 32767).astype(np.int16)
    chunk = 1024
    for start in range(0, len(pcm), chunk):
        block = pcm[start:start + chunk]
        af = av.AudioFrame.from_ndarray(block[None, :], format="s16", layout="mono")
        af.sample_rate = 16000
        af.pts = start
        af.time_base = Fraction(1, 16000)
        for packet in stream.encode(af):
            container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)


def ljspeech_transcripts() -> dict[str, str]:
    path = MEDIA / "speech" / "ljspeech" / "transcripts.psv"
    out = {}
    for line in path.read_text().splitlines():
        if "|" in line:
            key, text = line.split("|", 1)
            out[key.strip()] = text.strip()
    return out


# --- Frames and videos with known on-screen text (OCR tests and bench/ocr_bench.py) ---------------------

VIDEO_CLIPS = ("bigbuckbunny.mp4", "boat.mp4", "birthday.mp4", "skateboarding_dog.mp4", "dog_barking.mp4",
               "applausing.mp4", "IronMan.mp4", "silence_girl.mp4")
TEXT_STYLES = ("caption", "slide", "lower_third")
TEXT_CONTRASTS = ("high", "low")
# Font height as a share of the frame height: "small" is 15 px on a 360-line frame (a dense subtitle).
FONT_SIZES = {"small": 1 / 24, "medium": 1 / 15, "large": 1 / 10}


@dataclass(frozen=True)
class TextShown:
    """Text drawn over a video from ``start_s`` (included) to ``end_s`` (excluded)."""

    start_s: float
    end_s: float
    text: str
    style: str = "caption"
    font_size: str = "medium"
    contrast: str = "high"


def clip_frames(clip: str, count: int, size: tuple[int, int] = (640, 360), fps: float = 2.0) -> list[np.ndarray]:
    """``count`` RGB frames of the real clip ``media/video/<clip>`` taken ``fps`` times a second and scaled to
    ``size`` (w, h); the clip loops when it is shorter."""
    width, height = size
    frames: list[np.ndarray] = []
    next_t = 0.0
    if not (MEDIA / "video" / clip).is_file():
        pytest.skip(f"real recordings not found at {MEDIA}")
    with av.open(str(MEDIA / "video" / clip)) as container:
        stream = container.streams.video[0]
        for frame in container.decode(stream):
            if frame.time is None or frame.time + 1e-6 < next_t:
                continue
            frames.append(frame.to_ndarray(format="rgb24", width=width, height=height))
            next_t += 1.0 / fps
            if len(frames) == count:
                break
    if not frames:
        raise ValueError(f"no frame could be decoded from {clip}")
    return [frames[i % len(frames)] for i in range(count)]


def _font(px: int) -> ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=px)  # Pillow's bundled FreeType font: the same glyphs everywhere


def _wrap(draw: ImageDraw.ImageDraw, text: str, font: ImageFont.FreeTypeFont, max_width: float) -> list[str]:
    lines: list[str] = []
    for word in text.split():
        if lines and draw.textlength(f"{lines[-1]} {word}", font=font) <= max_width:
            lines[-1] = f"{lines[-1]} {word}"
        else:
            lines.append(word)
    return lines


def _check_fits(needed: float, available: float, text: str) -> None:
    if needed > available:
        raise ValueError(f"text does not fit on the frame at this size: {text[:40]!r}...")


def draw_text(frame: np.ndarray, text: str, style: str = "caption", font_size: str = "medium",
              contrast: str = "high") -> np.ndarray:
    """A copy of an RGB frame with ``text`` drawn the way videos show text, wrapped to fit.

    ``caption``: centred near the bottom (a subtitle); ``slide``: a panel over most of the frame, text from
    the top left (a talk or lesson slide); ``lower_third``: a coloured bar in the lower third (news names).
    ``high`` contrast puts white on a dark box or black on white; ``low`` puts grey on grey, or (caption)
    light text with a thin outline straight on the picture. Raises ``ValueError`` when the text does not fit
    (so what is drawn is always the whole ``text``).
    """
    if style not in TEXT_STYLES or contrast not in TEXT_CONTRASTS or font_size not in FONT_SIZES:
        raise ValueError(f"unknown style/contrast/size: {style}/{contrast}/{font_size}")
    img = Image.fromarray(np.ascontiguousarray(frame, dtype=np.uint8)).convert("RGB")
    w, h = img.size
    px = max(10, round(h * FONT_SIZES[font_size]))
    font = _font(px)
    draw = ImageDraw.Draw(img, "RGBA")
    pad, gap = px // 3, px // 4
    if style == "slide":
        box = (w * 0.08, h * 0.08, w * 0.92, h * 0.92)
        fill, ink = ((250, 250, 245, 255), (20, 20, 30)) if contrast == "high" else ((120, 120, 125, 255),
                                                                                     (165, 165, 170))
        draw.rectangle(box, fill=fill)
        lines = _wrap(draw, text, font, box[2] - box[0] - 2 * pad)
        y = box[1] + pad
        _check_fits(y + len(lines) * (px + gap) - gap, box[3], text)
        for line in lines:
            draw.text((box[0] + pad, y), line, font=font, fill=ink)
            y += px + gap
        return np.asarray(img)
    max_width = w * (0.9 if style == "caption" else 0.7)
    lines = _wrap(draw, text, font, max_width)
    block_h = len(lines) * px + (len(lines) - 1) * gap
    if style == "caption":
        y0 = h - block_h - h * 0.06
        _check_fits(block_h, h * 0.9, text)
        for i, line in enumerate(lines):
            tw = draw.textlength(line, font=font)
            x, y = (w - tw) / 2, y0 + i * (px + gap)
            if contrast == "high":
                draw.rectangle((x - pad, y - pad / 2, x + tw + pad, y + px + pad / 2), fill=(0, 0, 0, 200))
                draw.text((x, y), line, font=font, fill=(255, 255, 255))
            else:
                draw.text((x, y), line, font=font, fill=(225, 225, 215), stroke_width=1, stroke_fill=(60, 60, 60))
        return np.asarray(img)
    # lower third
    widest = max(draw.textlength(line, font=font) for line in lines)
    x0, y0 = w * 0.05, min(h * 0.68, h * 0.94 - block_h - 2 * pad)  # grows upwards when it has many lines
    _check_fits(block_h + 2 * pad, h * 0.6, text)
    fill, ink = ((20, 60, 140, 235), (255, 255, 255)) if contrast == "high" else ((90, 110, 140, 235),
                                                                                  (160, 175, 195))
    draw.rectangle((x0, y0, x0 + widest + 2 * pad, y0 + block_h + 2 * pad), fill=fill)
    for i, line in enumerate(lines):
        draw.text((x0 + pad, y0 + pad + i * (px + gap)), line, font=font, fill=ink)
    return np.asarray(img)


def text_video(out: Path, shown: list[TextShown], duration_s: float, clip: str = "bigbuckbunny.mp4",
               size: tuple[int, int] = (640, 360), fps: int = 2, speech: Path | np.ndarray | None = None) -> Path:
    """An mp4 (H.264, + AAC when ``speech`` is given) of a real clip with each ``shown`` text drawn over its
    time range. With speech, the video lasts ``max(duration_s, speech length)``."""
    samples = None
    if speech is not None:
        samples = read_mono_16k(speech) if isinstance(speech, Path) else np.asarray(speech, dtype=np.float32)
        duration_s = max(duration_s, len(samples) / 16000)
    count = max(1, int(np.ceil(duration_s * fps)))
    backgrounds = clip_frames(clip, count, size, fps)
    with av.open(str(out), "w") as container:
        v = container.add_stream("libx264", rate=fps)
        v.width, v.height = size
        v.pix_fmt = "yuv420p"
        a = None
        if samples is not None:
            a = container.add_stream("aac", rate=16000)
            a.layout = "mono"
        images = []
        for i, background in enumerate(backgrounds):
            img = background
            for item in shown:
                if item.start_s <= i / fps < item.end_s:
                    img = draw_text(img, item.text, item.style, item.font_size, item.contrast)
            images.append(img)
        _encode_frames(container, v, images, fps)
        if a is not None:
            _encode_audio(container, a, samples)
    return out
