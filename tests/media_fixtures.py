"""Test media made at test time: real speech recordings wrapped into video containers with PyAV."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np

MEDIA = Path(__file__).resolve().parents[2] / "shared" / "data" / "media"


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
        for i in range(max(1, int(np.ceil(duration * fps)))):
            img = frame_img.copy()
            img[: size // 8, : (i % 8 + 1) * size // 8] = 255  # a little motion
            vf = av.VideoFrame.from_ndarray(img, format="rgb24")
            vf.pts = i
            vf.time_base = Fraction(1, fps)
            for packet in v.encode(vf):
                container.mux(packet)
        for packet in v.encode():
            container.mux(packet)
        pcm = (np.clip(samples, -1, 1) * 32767).astype(np.int16)
        chunk = 1024
        for start in range(0, len(pcm), chunk):
            block = pcm[start:start + chunk]
            af = av.AudioFrame.from_ndarray(block[None, :], format="s16", layout="mono")
            af.sample_rate = 16000
            af.pts = start
            af.time_base = Fraction(1, 16000)
            for packet in a.encode(af):
                container.mux(packet)
        for packet in a.encode():
            container.mux(packet)
    return out


def ljspeech_transcripts() -> dict[str, str]:
    path = MEDIA / "speech" / "ljspeech" / "transcripts.psv"
    out = {}
    for line in path.read_text().splitlines():
        if "|" in line:
            key, text = line.split("|", 1)
            out[key.strip()] = text.strip()
    return out
