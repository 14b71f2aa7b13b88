"""Decode stage: a probed video -> the frames the model sees, a thumbnail, and its audio as a PCM file on disk.

Memory stays bounded whatever the length: frames come from :func:`models.media.read_frames` (12 at most,
unselected frames dropped as they are decoded), audio is resampled and written to disk packet by packet,
and :func:`fbank_from_pcm` reads only the analysis windows the AST fbank needs from a memory-mapped file.
"""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from indexer.errors import BadInputError
from models.media import MediaError, audio_blocks, read_frames
from models.preprocess import (
    AUDIO_SAMPLE_RATE,
    FBANK_BINS,
    FBANK_FRAMES,
    FBANK_MEAN,
    FBANK_STD,
    kaldi_fbank,
)

__all__ = [
    "AUDIO_FILE_NAME",
    "DecodedAudio",
    "DecodedVideo",
    "decode",
    "decode_audio",
    "decode_frames",
    "decode_audio_to_pcm",
    "fbank_from_pcm",
    "pcm_memmap",
    "save_thumbnail",
]

log = logging.getLogger(__name__)

AUDIO_FILE_NAME = "audio_16k_mono.s16le"
_PCM_DTYPE = np.dtype("<i2")
_MEAN_CHUNK = 1 << 20  # samples per read in the streaming mean pass (2 MiB of int16)
# Kaldi window and shift as torchaudio / models.preprocess compute them: int(rate * ms * 0.001).
_MS = 0.001
_WINDOW_MS = 25.0


@dataclass
class DecodedVideo:
    """What later stages need from the media file; ``audio_path`` is ``None`` when there is no usable audio."""

    frames: list[np.ndarray]  # HxWx3 uint8 RGB, at most 12, the authors' 1-fps rule
    thumbnail: np.ndarray  # HxWx3 uint8 RGB, about 1/3 into the video
    audio_path: Path | None  # 16 kHz mono s16le raw PCM
    audio_samples: int
    audio_error: str | None = None  # why audio was dropped although the file has an audio stream


def decode(path: Path, work_dir: Path) -> DecodedVideo:
    """Frames, thumbnail and PCM audio of ``path``; the PCM file is written into ``work_dir``.

    Raises :class:`BadInputError` (kind ``decode_failed``) when no video frame can be decoded. Audio that
    cannot be decoded does not fail the item (it is still searchable by its frames): ``audio_path`` is
    ``None`` and ``audio_error`` says why. The worker runs the two halves apart (``decode_audio`` first, for
    speech recognition; ``decode_frames`` beside it).
    """
    frames, thumbnail = decode_frames(path)
    audio = decode_audio(path, work_dir)
    return DecodedVideo(frames=frames, thumbnail=thumbnail, audio_path=audio.path, audio_samples=audio.samples,
                        audio_error=audio.error)


def decode_frames(path: Path) -> tuple[list[np.ndarray], np.ndarray]:
    """The frames the model sees and a thumbnail (the frame about a third of the way in). Raises
    :class:`BadInputError` (kind ``decode_failed``) when no video frame can be decoded."""
    path = Path(path)
    try:
        frames = read_frames(path)
    except MediaError as e:
        raise BadInputError(f"the video frames of {path.name} cannot be decoded: {e.reason}",
                            kind="decode_failed") from e
    if not frames:
        raise BadInputError(f"no video frame of {path.name} could be decoded", kind="decode_failed")
    # Sampled frames are spread evenly over the video, so this one sits about a third of the way in.
    return frames, frames[round((len(frames) - 1) / 3)]


@dataclass(frozen=True)
class DecodedAudio:
    path: Path | None  # 16 kHz mono s16le raw PCM; None: no usable audio
    samples: int
    error: str | None = None  # why audio was dropped although the file has an audio stream


def decode_audio(path: Path, work_dir: Path) -> DecodedAudio:
    """The audio of ``path`` as a PCM file in ``work_dir``. Audio that cannot be decoded does not fail the item:
    ``path`` is None and ``error`` says why."""
    path, work_dir = Path(path), Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    pcm_path = work_dir / AUDIO_FILE_NAME
    try:
        samples = decode_audio_to_pcm(path, pcm_path)
    except BadInputError as e:
        log.warning("%s: dropping audio: %s", path, e.reason)
        return DecodedAudio(None, 0, e.reason)
    return DecodedAudio(pcm_path, samples, None) if samples is not None else DecodedAudio(None, 0)


def _temp_beside(out_path: Path, suffix: str) -> tuple[int, Path]:
    """A temporary file in the target's directory, so the final ``os.replace`` is an atomic rename."""
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{out_path.name}.", suffix=suffix, dir=out_path.parent)
    return fd, Path(name)


def decode_audio_to_pcm(path: Path, out_path: Path, sample_rate: int = AUDIO_SAMPLE_RATE) -> int | None:
    """Stream the first audio stream of ``path`` into ``out_path`` as mono s16le PCM at ``sample_rate``.

    Returns the number of samples written, or ``None`` (and writes nothing) if there is no audio stream.
    The samples are exactly those of :func:`models.media.read_audio` (same FFmpeg resampler, corrupt packets
    skipped the same way), but only one packet's worth is ever in memory. Written under a temporary name and
    renamed when complete, so a crash never leaves a partial file under ``out_path``. Raises
    :class:`BadInputError` (kind ``decode_failed``) if the audio cannot be decoded at all.
    """
    path, out_path = Path(path), Path(out_path)
    try:
        blocks = audio_blocks(path, sample_rate)
    except MediaError as e:
        raise BadInputError(f"{path.name} cannot be opened to decode its audio ({e.reason})",
                            kind="decode_failed") from e
    if blocks is None:
        return None
    fd, tmp = _temp_beside(out_path, ".part")
    written = 0
    try:
        with os.fdopen(fd, "wb") as out:
            for block in blocks:
                pcm = block.astype(_PCM_DTYPE, copy=False)
                out.write(pcm.tobytes())
                written += pcm.size
        os.chmod(tmp, 0o644)
        os.replace(tmp, out_path)
    except MediaError as e:
        tmp.unlink(missing_ok=True)
        raise BadInputError(f"the audio of {path.name} cannot be decoded ({e.reason})", kind="decode_failed") from e
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return written


def pcm_memmap(path: Path) -> np.ndarray:
    """The samples of a PCM file written by :func:`decode_audio_to_pcm`, as a read-only int16 ``np.memmap``.

    An empty file cannot be memory-mapped; it gives an empty (ordinary) int16 array.
    """
    path = Path(path)
    if path.stat().st_size == 0:
        return np.zeros(0, dtype=_PCM_DTYPE)
    return np.memmap(path, dtype=_PCM_DTYPE, mode="r")


def _streaming_mean(pcm: np.ndarray) -> float:
    """The float32 mean of ``pcm / 32768``, from an exact integer sum read in bounded chunks.

    ``waveform_to_fbank`` subtracts the global mean before framing. Each Kaldi window then removes its own
    mean, which cancels the global one mathematically but not in float32: on real speech, skipping it moves
    the normalised fbank by ~4e-4 (silent windows sit near the log floor). With this mean it is bit-identical.
    """
    n = len(pcm)
    total = 0
    for i in range(0, n, _MEAN_CHUNK):
        total += int(np.sum(pcm[i : i + _MEAN_CHUNK], dtype=np.int64))
    return float(np.float32(total / n / 32768.0))


def fbank_from_pcm(pcm: np.ndarray, target_length: int = FBANK_FRAMES,
                   num_mel_bins: int = FBANK_BINS) -> tuple[torch.Tensor, bool]:
    """``waveform_to_fbank(pcm / 32768)`` of 16 kHz int16 PCM, reading only the windows it needs.

    The adaptive frame shift (``n / 1024`` samples) spreads at most ``target_length`` windows of 400 samples
    over the whole clip, so a 2-hour file (115 M samples) needs ~410 k of them. This reads those windows
    (one contiguous span when they overlap, i.e. clips under ~26 s), plus one streaming pass in 1 M-sample
    chunks for the global mean (see :func:`_streaming_mean`), and runs the same :func:`kaldi_fbank` on them.
    ``pcm`` may be a ``np.memmap`` or anything with ``len`` and slicing that returns int16 arrays.
    """
    empty = torch.zeros(target_length, num_mel_bins, dtype=torch.float32)
    n = len(pcm)
    if n == 0:
        return empty, False
    rate = AUDIO_SAMPLE_RATE
    # The same float expressions as waveform_to_fbank and kaldi_fbank, so the integer shift is the same.
    frame_shift_ms = n * 1000 / (rate * target_length)
    if int(rate * frame_shift_ms * _MS) < 1:
        frame_shift_ms = 1000 / rate
    shift = int(float(rate) * frame_shift_ms * _MS)
    window = int(float(rate) * _WINDOW_MS * _MS)
    if n < window:
        return empty, False
    frames = min(1 + (n - window) // shift, target_length)
    mean = torch.tensor(_streaming_mean(pcm), dtype=torch.float32)
    if shift < window:  # overlapping windows: one span, framed exactly as the reference frames it
        samples = np.asarray(pcm[: (frames - 1) * shift + window], dtype=_PCM_DTYPE)
        shift_ms = frame_shift_ms
    else:  # disjoint windows: gather them back to back and frame with shift == window
        samples = np.concatenate([np.asarray(pcm[i * shift : i * shift + window], dtype=_PCM_DTYPE)
                                  for i in range(frames)])
        shift_ms = _WINDOW_MS
    x = torch.from_numpy(samples.astype(np.float32)) / 32768.0 - mean
    fbank = kaldi_fbank(x, sample_frequency=float(rate), frame_shift_ms=shift_ms, num_mel_bins=num_mel_bins)
    if fbank.shape[0] != frames:  # guards the window arithmetic above
        raise RuntimeError(f"expected {frames} fbank frames, got {fbank.shape[0]}")
    p = target_length - frames
    fbank = torch.nn.functional.pad(fbank, (0, 0, 0, p)) if p > 0 else fbank
    return ((fbank - FBANK_MEAN) / (FBANK_STD * 2)).to(torch.float32), True


def save_thumbnail(frame: np.ndarray, out_path: Path, max_side: int = 320) -> Path:
    """Write ``frame`` (HxWx3 uint8 RGB) as a JPEG whose longer side is at most ``max_side``, atomically."""
    from PIL import Image

    out_path = Path(out_path)
    img = Image.fromarray(np.ascontiguousarray(frame, dtype=np.uint8)).convert("RGB")
    img.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    fd, tmp = _temp_beside(out_path, ".jpg")
    try:
        with os.fdopen(fd, "wb") as f:
            img.save(f, format="JPEG", quality=85, optimize=True)
        os.chmod(tmp, 0o644)  # mkstemp makes it 0600; thumbnails are served to others
        os.replace(tmp, out_path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return out_path
