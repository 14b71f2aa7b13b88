"""Probe stage: is this file a video we can index? (Whether we may read it: ``indexer.ingest.access``.)

Cheap checks only (file metadata, container headers, one decoded frame at the start and a short read
near the end), so that a bad file fails in well under a second with a stable ``kind`` and a sentence a
person can act on, before the expensive decode and model stages run.
"""

from __future__ import annotations

import logging
import struct
from dataclasses import dataclass
from pathlib import Path

import av
import av.error

from indexer.errors import AccessError, BadInputError
from models.media import _fps_and_count

__all__ = ["ProbeResult", "probe"]

log = logging.getLogger(__name__)

# Demuxers that open single images or text: FFmpeg presents them as a one-frame "video", but they are not videos.
# (Every ``*_pipe`` demuxer is a still-image one too, except animated GIF, which we accept.)
_NOT_VIDEO_FORMATS = frozenset({"image2", "tty"})
# The end of the data must be within max(_TAIL_TOLERANCE_S, _TAIL_TOLERANCE_FRACTION * duration) of the
# declared duration; legitimate files agree to a frame or two.
_TAIL_TOLERANCE_S = 1.0
_TAIL_TOLERANCE_FRACTION = 0.01
_TAIL_WINDOW_S = 3.0  # how far before the declared end the tail check seeks to
_MAX_TAIL_PACKETS = 20_000  # a seek that silently went back to the start makes the tail check inconclusive
_MAX_TAIL_DECODE = 600  # video packets decoded in the tail check (a long GOP costs up to this many)
_MAX_FIRST_FRAME_PACKETS = 600  # video packets tried before giving up on the first frame
# Top-level ISO-BMFF (mp4/mov) boxes; an unknown type ends the structural check (inconclusive).
_MP4_TOP_BOXES = frozenset(
    b"ftyp styp moov mdat moof mfra free skip wide uuid meta pdin sidx ssix prft emsg udta pnot PICT".split()
)
_MAX_MP4_BOXES = 200_000


@dataclass
class ProbeResult:
    """What the probe learned from container metadata; frame_count is an estimate when the container has none."""

    path: Path
    size_bytes: int
    container: str
    duration_s: float
    has_video: bool
    has_audio: bool
    video_codec: str | None
    audio_codec: str | None
    width: int
    height: int
    fps: float
    frame_count: int


# --- structure: is the file shorter than its own headers say? -------------------------------------------------
def _declared_size_problem(path: Path, size: int) -> str | None:
    """A sentence if the container's own size fields say the file is incomplete, else ``None``.

    MP4/MOV: walk the top-level boxes; a box that ends past the end of the file means the data was cut (an
    interrupted upload or copy), and a file with media data but no ``moov`` index cannot be played at all.
    AVI/WAV: the RIFF header's size field. FFmpeg itself adapts to both (it happily reports the shorter
    duration of a cut AVI), so this is the only cheap way to tell "short video" from "half a video".
    """
    with open(path, "rb") as f:
        head = f.read(12)
        if len(head) >= 12 and head[:4] == b"RIFF" and head[8:12] in (b"AVI ", b"WAVE"):
            riff_size = struct.unpack("<I", head[4:8])[0]
            if 0 < riff_size < 0xFFFFFFF0 and riff_size + 8 > size:
                return (f"the {head[8:12].decode().strip()} header declares {riff_size + 8} bytes but the file has "
                        f"only {size}: it is truncated (an interrupted upload or copy?)")
            return None
        if len(head) < 8 or head[4:8] not in (b"ftyp", b"styp", b"moov", b"mdat", b"free", b"skip", b"wide"):
            return None
        pos, boxes, seen = 0, 0, set()
        while pos + 8 <= size and boxes < _MAX_MP4_BOXES:
            f.seek(pos)
            header = f.read(16)
            box_size, box_type = struct.unpack(">I4s", header[:8])
            if box_type not in _MP4_TOP_BOXES:
                return None  # unknown data: do not guess
            if box_size == 1:
                if len(header) < 16:
                    break
                box_size = struct.unpack(">Q", header[8:16])[0]
            elif box_size == 0:  # extends to the end of the file
                box_size = size - pos
            if box_size < 8:
                return None
            seen.add(box_type)
            if pos + box_size > size:
                return (f"the MP4 '{box_type.decode()}' box at byte {pos} declares {box_size} bytes but the file ends "
                        f"after {size - pos} of them: it is truncated (an interrupted upload or copy?)")
            pos += box_size
            boxes += 1
        if b"mdat" in seen and b"moov" not in seen and pos >= size:
            return "the MP4 file holds media data but no 'moov' index: it is incomplete and cannot be played"
    return None


# --- probing ------------------------------------------------------------------------------------------------
def _video_streams(container: av.container.InputContainer) -> list[av.video.stream.VideoStream]:
    """Real video streams: cover art in music files (``attached_pic``) is not a video."""
    return [s for s in container.streams.video if not (s.disposition & av.stream.Disposition.attached_pic)]


def _codec_name(stream: av.stream.Stream) -> str:
    """FFmpeg's codec name ("mp3", not the decoder's "mp3float"); "unknown" when there is no decoder."""
    ctx = stream.codec_context
    return ctx.codec.canonical_name if ctx is not None else "unknown"


def _declared_duration(container: av.container.InputContainer) -> float | None:
    if container.duration and container.duration > 0:
        return container.duration / av.time_base
    spans = [float(s.duration * s.time_base) for s in container.streams if s.duration and s.time_base]
    return max(spans) if spans else None


def _scan_duration(path: Path, stream_index: int, fps: float) -> float | None:
    """Duration from the timestamps of every packet (demux only, no decoding), for containers that declare
    none; for raw streams without timestamps (an ``.h264`` file), the number of video packets / fps."""
    start, end, video_packets = None, None, 0
    with av.open(str(path)) as container:
        try:
            for packet in container.demux():
                if packet.stream.index == stream_index and packet.size:
                    video_packets += 1
                ts = packet.pts if packet.pts is not None else packet.dts
                if ts is None or packet.time_base is None:
                    continue
                t0 = float(ts * packet.time_base)
                t1 = float((ts + (packet.duration or 0)) * packet.time_base)
                start = t0 if start is None else min(start, t0)
                end = t1 if end is None else max(end, t1)
        except av.error.FFmpegError as e:
            log.warning("%s: packet scan stopped early: %s", path, e)
    if start is not None and end is not None and end > start:
        return end - start
    return video_packets / fps if video_packets and fps > 0 else None


def _first_frame_problem(container: av.container.InputContainer, stream: av.video.stream.VideoStream,
                         codec: str) -> BadInputError | None:
    """Decode the first video frame; an error if there is no decoder, no video data, or nothing decodes."""
    if stream.codec_context is None:
        return BadInputError(
            "the video stream uses a codec that FFmpeg cannot decode (no decoder for it in this build)",
            kind="unsupported_codec",
        )
    packets, last_error = 0, None
    try:
        for packet in container.demux(stream):
            if packet.size:
                packets += 1
            try:
                if packet.decode():
                    return None
            except av.error.DecoderNotFoundError:
                raise
            except av.error.FFmpegError as e:  # corrupt packet: the decoder may recover on the next keyframe
                last_error = e
            if packets >= _MAX_FIRST_FRAME_PACKETS:
                break
    except av.error.DecoderNotFoundError as e:
        return BadInputError(f"the {codec} video stream cannot be decoded: FFmpeg has no decoder for it ({e})",
                             kind="unsupported_codec")
    except av.error.FFmpegError as e:  # demuxing failed: the container's data is damaged
        last_error = e
    if packets == 0:
        return BadInputError("the container declares a video stream but the file holds no video data: it is "
                             "truncated or empty", kind="truncated")
    detail = f" (last error: {last_error})" if last_error else ""
    return BadInputError(
        f"the first frame of the {codec} video stream cannot be decoded after {packets} packets: the codec or "
        f"profile is unsupported, or the data is corrupt{detail}",
        kind="unsupported_codec",
    )


def _tail_problem(container: av.container.InputContainer, stream: av.video.stream.VideoStream,
                  declared_s: float) -> str | None:
    """Seek near the declared end and read what is there: a sentence if the data stops early, else ``None``.

    Reads the packets of every stream (so audio that outlasts the video counts) from the keyframe before
    ``declared - 3 s`` to the end of the file, decoding the video packets (up to ``_MAX_TAIL_DECODE``). It is
    truncated if the last timestamp falls short of the declared duration, or if the video stops decoding
    before its own last packet (data zeroed or overwritten, as an interrupted pre-allocated download leaves
    it), by more than max(1 s, 1 % of the duration). A seek that fails, or that lands too far back to finish
    cheaply, makes that part of the check inconclusive.
    """
    start = container.start_time / av.time_base if container.start_time else 0.0
    target = start + max(0.0, declared_s - _TAIL_WINDOW_S)
    tolerance = max(_TAIL_TOLERANCE_S, _TAIL_TOLERANCE_FRACTION * declared_s)
    try:
        container.seek(int(target * av.time_base), backward=True, any_frame=False)
    except av.error.FFmpegError as e:
        log.info("tail check skipped, seek failed: %s", e)
        return None
    reached: float | None = None
    video_end: float | None = None  # end of the last video packet
    decoded_end: float | None = None  # end of the last video packet the decoder accepted
    packets, tried, errors, last_error = 0, 0, 0, None
    try:
        for packet in container.demux():
            ts = packet.pts if packet.pts is not None else packet.dts
            end = None
            if ts is not None and packet.time_base is not None:
                end = float((ts + (packet.duration or 0)) * packet.time_base)
                reached = end if reached is None else max(reached, end)
            if packet.stream.index == stream.index and packet.size and tried < _MAX_TAIL_DECODE:
                tried += 1
                if end is not None:
                    video_end = end if video_end is None else max(video_end, end)
                try:
                    packet.decode()
                    if end is not None:
                        decoded_end = end if decoded_end is None else max(decoded_end, end)
                except av.error.FFmpegError as e:
                    errors, last_error = errors + 1, e
            packets += 1
            if packets >= _MAX_TAIL_PACKETS:
                return None
    except av.error.FFmpegError as e:  # a read error near the end is what a cut file looks like
        log.info("tail read stopped: %s", e)
    if tried and tried < _MAX_TAIL_DECODE and video_end is not None:
        good = decoded_end if decoded_end is not None else target
        if video_end - good > tolerance:
            return (f"the video cannot be decoded from {good - start:.1f} s to its end at {video_end - start:.1f} s "
                    f"({errors} of {tried} packets failed: {last_error}): the data near the end is corrupt or "
                    f"missing, the file is damaged or truncated")
    missing = declared_s if reached is None else declared_s - (reached - start)
    if missing > tolerance:
        found = 0.0 if reached is None else max(0.0, reached - start)
        return (f"the container declares {declared_s:.1f} s but its data stops at {found:.1f} s: the file is "
                f"truncated (an interrupted upload or copy?)")
    return None


def probe(path: Path, max_duration_s: float, max_size_bytes: int) -> ProbeResult:
    """Check that ``path`` (already through :func:`check_access`) is a complete, decodable video within limits.

    Raises :class:`BadInputError` with kind ``empty_file``, ``too_large``, ``not_media``, ``no_video_stream``,
    ``too_long``, ``truncated`` or ``unsupported_codec``. A video without audio is fine (``has_audio=False``).
    """
    path = Path(path)
    try:
        size = path.stat().st_size
    except FileNotFoundError as e:  # removed since check_access
        raise AccessError(f"{str(path)!r} does not exist: no such file", kind="not_found") from e
    if size == 0:
        raise BadInputError(f"{path.name} is empty (0 bytes)", kind="empty_file")
    if size > max_size_bytes:
        raise BadInputError(f"{path.name} is too large: {size} bytes, the maximum is {max_size_bytes} bytes",
                            kind="too_large")
    try:
        container = av.open(str(path), mode="r")
    except PermissionError as e:
        raise AccessError(f"{path} is not readable: permission denied", kind="unreadable") from e
    except (av.error.FFmpegError, OSError, UnicodeDecodeError) as e:
        cut = _declared_size_problem(path, size)
        if cut:
            raise BadInputError(cut, kind="truncated") from e
        raise BadInputError(f"{path.name} is not a media file FFmpeg can open ({e})", kind="not_media") from e
    with container:
        fmt = container.format.name
        if fmt in _NOT_VIDEO_FORMATS or (fmt.endswith("_pipe") and fmt != "gif_pipe"):
            raise BadInputError(f"{path.name} is a still image or text ({fmt}), not a video", kind="not_media")
        videos = _video_streams(container)
        audios = list(container.streams.audio)
        audio_codec = _codec_name(audios[0]) if audios else None
        if not videos:
            has = f"only audio ({audio_codec})" if audios else "no audio or video streams"
            raise BadInputError(f"{path.name} has no video stream: it contains {has}", kind="no_video_stream")
        stream = videos[0]
        ctx = stream.codec_context
        video_codec = _codec_name(stream)
        frame_count, fps = _fps_and_count(container, stream)
        declared = _declared_duration(container)
        duration = declared if declared is not None else _scan_duration(path, stream.index, fps)
        if frame_count <= 0 and duration:
            frame_count = int(round(duration * fps))
        if duration is not None and duration > max_duration_s:
            raise BadInputError(f"{path.name} is too long: {duration:.1f} s, the maximum is {max_duration_s:g} s",
                                kind="too_long")
        cut = _declared_size_problem(path, size)
        if cut:
            raise BadInputError(cut, kind="truncated")
        problem = _first_frame_problem(container, stream, video_codec)
        if problem is not None:
            raise problem
        if declared is not None:
            tail = _tail_problem(container, stream, declared)
            if tail:
                raise BadInputError(tail, kind="truncated")
        return ProbeResult(
            path=path,
            size_bytes=size,
            container=fmt,
            duration_s=float(duration or 0.0),
            has_video=True,
            has_audio=bool(audios),
            video_codec=video_codec,
            audio_codec=audio_codec,
            width=int(ctx.width) if ctx is not None else 0,
            height=int(ctx.height) if ctx is not None else 0,
            fps=float(fps),
            frame_count=int(frame_count),
        )
