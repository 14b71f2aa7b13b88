"""Media decoding with PyAV, shared by training data preparation and the ingest worker.

Only decoding lives here (frames and audio as numpy arrays); turning them into model tensors is
:mod:`models.preprocess`. Decoding is streamed: frames that the sampling rule does not select are
dropped as they are decoded, so memory stays bounded whatever the video length.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import av
import av.error
import numpy as np

from models.preprocess import AUDIO_SAMPLE_RATE, MAX_FRAMES, sample_frame_indices

__all__ = ["MediaError", "probe_video_frames", "read_audio", "read_frames"]

log = logging.getLogger(__name__)

PathLike = str | os.PathLike[str]


class MediaError(ValueError):
    """A file cannot be used as media: missing, unreadable, corrupt, or lacking the needed stream.

    Callers treat it as a permanent failure of that file (retrying will not help).
    """

    def __init__(self, path: PathLike, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


def _open(path: PathLike) -> av.container.InputContainer:
    p = Path(path)
    if not p.exists():
        raise MediaError(path, "no such file")
    if not p.is_file():
        raise MediaError(path, "not a regular file")
    if p.stat().st_size == 0:
        raise MediaError(path, "empty file (0 bytes)")
    try:
        return av.open(str(p), mode="r")
    except (av.error.FFmpegError, OSError, UnicodeDecodeError) as e:
        raise MediaError(path, f"cannot open as media ({e})") from e


def _video_stream(container: av.container.InputContainer, path: PathLike) -> av.video.stream.VideoStream:
    if not container.streams.video:
        raise MediaError(path, "no video stream")
    return container.streams.video[0]


def _fps_and_count(
    container: av.container.InputContainer, stream: av.video.stream.VideoStream
) -> tuple[int, float]:
    """cv2-like CAP_PROP_FPS / CAP_PROP_FRAME_COUNT, since the authors sampled frames through OpenCV.

    fps is FFmpeg's guessed rate (what OpenCV reports); the count is the container's frame count when
    it has one, else round(duration * fps) with the container duration first (as OpenCV does).
    """
    rate = stream.guessed_rate or stream.average_rate or stream.base_rate
    fps = float(rate) if rate else 0.0
    if not math.isfinite(fps) or fps <= 0:
        fps = 1.0 / float(stream.time_base) if stream.time_base else 0.0
    if stream.frames and stream.frames > 0:
        return int(stream.frames), fps
    duration = 0.0
    if container.duration:
        duration = container.duration / av.time_base
    elif stream.duration and stream.time_base:
        duration = float(stream.duration * stream.time_base)
    return int(math.floor(duration * fps + 0.5)), fps


def probe_video_frames(path: PathLike) -> tuple[int, float]:
    """``(frame_count, fps)`` of the first video stream, from container metadata (no decoding).

    The count is an estimate when the container does not store it (duration x fps).
    """
    with _open(path) as container:
        stream = _video_stream(container, path)
        return _fps_and_count(container, stream)


TIME_EPS = 1e-3
MAX_PENDING = 2000  # packets held undecoded at most (a group of pictures longer than that is decoded as it comes)


def frames_at(container: Any, stream: Any, times: Sequence[float], path: PathLike | str = "",
          decoded: Callable[[int], None] | None = None) -> Iterator[tuple[float, av.VideoFrame]]:
    """The first frame shown at or after each of ``times`` (ascending), with its time; times that fall on
    the same frame give it once; ``decoded(n)`` is told how many frames the decoder produced each time.

    Decodes forward through the file, but only what the next wanted frame depends on (bench/ocr_bench.py
    ``--long`` chose this over seeking; the OCR's sampling and ``read_frames`` use it): packets are read (cheap)
    and kept since the last key frame, a key frame at or before the wanted time drops them (the group of pictures
    before it cannot hold the frame),
    and they are decoded only once a packet shown at or after the wanted time arrives. Frames shown before
    it that no other frame refers to (most B-frames) are not decoded at all. No seek: a file without key
    frame flags or timestamps is decoded forward in full, as a plain decode would.
    """
    codec = stream.codec_context
    if codec is None:  # FFmpeg has no decoder for this stream's codec (an unknown fourcc, say)
        raise MediaError(path, f"no decoder for the video codec {getattr(stream, 'codec_tag', '') or '(unknown)'}")
    pending: list[Any] = []  # packets since the last key frame, not yet given to the decoder
    live = False  # the decoder is being fed every packet until the wanted frame comes out
    i, n = 0, len(times)

    def decode(packet: Any, target: float) -> list[av.VideoFrame]:
        shown = _packet_time(packet) if packet is not None else None
        skip = "NONREF" if shown is not None and shown < target - TIME_EPS else "DEFAULT"
        if codec.skip_frame != skip:
            codec.skip_frame = skip
        frames = packet.decode() if packet is not None else stream.decode(None)
        if decoded is not None:
            decoded(len(frames))
        return frames

    try:
        for packet in container.demux(stream):
            if i >= n:
                break
            target = times[i]
            end = packet.size == 0  # the flush packets after the last one
            shown = _packet_time(packet)
            if packet.is_keyframe and not live and shown is not None and shown <= target + TIME_EPS:
                pending.clear()
            frames: list[av.VideoFrame] = []
            if live or end or shown is None or shown >= target - TIME_EPS or len(pending) >= MAX_PENDING:
                for held in pending:
                    frames += decode(held, target)
                pending.clear()
                live = live or end or shown is None or shown >= target - TIME_EPS
                frames += decode(None if end else packet, target)
            else:
                pending.append(packet)
            for frame in frames:
                if frame.time is None or i >= n or frame.time + TIME_EPS < times[i]:
                    continue
                while i < n and times[i] <= frame.time + TIME_EPS:
                    i += 1
                live = False
                yield round(float(frame.time), 3), frame
    except av.error.FFmpegError as e:
        log.warning("%s: decoding stopped at frame %d of %d wanted: %s", path, i, n, e)


def _packet_time(packet: Any) -> float | None:
    """When a packet's frame is shown (seconds), or None when the container does not say."""
    if packet.pts is None or packet.time_base is None:
        return None
    return float(packet.pts * packet.time_base)


def _decode_selected(path: PathLike, wanted: list[int]) -> tuple[list[np.ndarray], int]:
    """Decode the video sequentially, converting only frames whose index is in ``wanted``.

    Returns the selected RGB frames and the number of frames decoded. Stops early once the last wanted
    frame is reached; on a decode error after some frames it stops there (OpenCV's read would fail
    the same way), with no frames decoded it raises.
    """
    want = set(wanted)
    last = max(wanted) if wanted else -1
    frames: list[np.ndarray] = []
    count = 0
    with _open(path) as container:
        stream = _video_stream(container, path)
        stream.thread_type = "AUTO"
        try:
            for frame in container.decode(stream):
                if count in want:
                    frames.append(frame.to_ndarray(format="rgb24"))
                count += 1
                if count > last:
                    break
        except av.error.FFmpegError as e:
            if count == 0:
                raise MediaError(path, f"cannot decode video ({e})") from e
            log.warning("%s: video decode stopped after %d frames: %s", path, count, e)
    return frames, count


def read_frames(path: PathLike, max_frames: int = MAX_FRAMES) -> list[np.ndarray]:
    """The frames the model sees (HxWx3 uint8 RGB, at most ``max_frames``), chosen like the authors.

    Indices come from :func:`models.preprocess.sample_frame_indices` on the probed frame count. Where frame i is
    shown at i / fps (a constant rate), only the groups of pictures that hold the chosen frames are decoded
    (:func:`frames_at`: a 2-hour video costs a dozen groups, not every frame); otherwise, or when a frame found
    that way is not the one at the chosen index, the video is decoded frame by frame. If the file holds fewer
    frames than its metadata says, the selection is recomputed from the real count and the file decoded once
    more, so the result equals sampling the frames that actually exist.
    """
    frame_count, fps = probe_video_frames(path)
    if frame_count <= 0:
        frame_count = _count_frames(path)  # no usable metadata: count by decoding
    wanted = sample_frame_indices(frame_count, fps, max_frames)
    by_time = _frames_by_time(path, wanted, fps)
    if by_time is not None:
        return by_time
    frames, decoded = _decode_selected(path, wanted)
    if len(frames) < len(wanted):
        # Decoding ended before the last wanted index, so ``decoded`` is the real frame count.
        wanted = sample_frame_indices(decoded, fps, max_frames)
        frames, _ = _decode_selected(path, wanted)
    if not frames:
        raise MediaError(path, "no decodable video frames")
    return frames


def _frames_by_time(path: PathLike, wanted: list[int], fps: float) -> list[np.ndarray] | None:
    """The frames at indices ``wanted``, found by their presentation time (index / fps after the stream's start)
    and decoded with :func:`frames_at`; None when a frame found is not the one at its index (a variable frame
    rate, missing timestamps, a short file) or anything goes wrong, so the caller decodes frame by frame."""
    if not wanted or fps <= 0:
        return None
    try:
        with _open(path) as container:
            stream = _video_stream(container, path)
            stream.thread_type = "AUTO"
            base = stream.time_base
            start = float(stream.start_time * base) if stream.start_time is not None and base is not None else 0.0
            times = [start + i / fps for i in wanted]
            found = list(frames_at(container, stream, times, path))
            if len(found) != len(wanted) or any(round((t - start) * fps) != i for (t, _), i in zip(found, wanted,
                                                                                                  strict=True)):
                return None
            return [frame.to_ndarray(format="rgb24") for _, frame in found]
    except (av.error.FFmpegError, MediaError, OverflowError, ZeroDivisionError, TypeError):
        return None


def _count_frames(path: PathLike) -> int:
    """Number of decodable frames, by decoding everything and keeping nothing."""
    count = 0
    with _open(path) as container:
        stream = _video_stream(container, path)
        stream.thread_type = "AUTO"
        try:
            for _ in container.decode(stream):
                count += 1
        except av.error.FFmpegError as e:
            if count == 0:
                raise MediaError(path, f"cannot decode video ({e})") from e
    return count


def audio_blocks(path: PathLike, sample_rate: int = AUDIO_SAMPLE_RATE) -> Iterator[np.ndarray] | None:
    """The first audio stream as mono int16 blocks at ``sample_rate``, streamed (one packet at a time).

    ``None`` when the file has no audio stream. The same samples as ``ffmpeg -ac 1 -ar RATE -f s16le``.
    Corrupt packets are skipped, as the ffmpeg CLI does; an undecodable stream raises :class:`MediaError`
    while iterating. The one audio decoding loop of the project: ingest, ASR and training all use it.
    """
    container = _open(path)
    if not container.streams.audio:
        container.close()
        return None
    return _iter_blocks(container, path, int(sample_rate))


def _iter_blocks(container: av.container.InputContainer, path: PathLike, sample_rate: int) -> Iterator[np.ndarray]:
    with container:
        stream = container.streams.audio[0]
        if stream.codec_context is None:
            raise MediaError(path, "the audio stream uses a codec FFmpeg cannot decode")
        resampler = av.AudioResampler(format="s16", layout="mono", rate=sample_rate)
        try:
            for packet in container.demux(stream):
                try:
                    decoded = packet.decode()
                except av.error.InvalidDataError as e:
                    log.warning("%s: skipping corrupt audio packet: %s", path, e)
                    continue
                for frame in decoded:
                    for out in resampler.resample(frame):
                        yield out.to_ndarray().reshape(-1)
            for out in resampler.resample(None):
                yield out.to_ndarray().reshape(-1)
        except av.error.FFmpegError as e:
            raise MediaError(path, f"cannot decode audio ({e})") from e


def read_audio(path: PathLike, sample_rate: int = AUDIO_SAMPLE_RATE) -> np.ndarray | None:
    """Mono float32 waveform at ``sample_rate`` in [-1, 1), or ``None`` if the file has no audio stream.

    Decoded to 16-bit mono by FFmpeg's resampler and scaled by 1/32768, i.e. the same samples as the
    authors' ``ffmpeg -ac 1 -ar 16000`` pcm_s16le wav files read back by ``torchaudio.load``. Corrupt
    packets are skipped, as the ffmpeg CLI does.
    """
    blocks = audio_blocks(path, sample_rate)
    if blocks is None:
        return None
    chunks = list(blocks)
    if not chunks:
        return np.zeros(0, dtype=np.float32)
    return (np.concatenate(chunks).astype(np.float32) / 32768.0).astype(np.float32)
