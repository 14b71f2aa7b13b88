"""Audio in bounded blocks for the speech stage: raw PCM files read block by block, arrays viewed in blocks, media
files decoded as a stream, and blocks regrouped into chunks cut at the quietest half second near each boundary, so a
recording of any length is never held whole and a chunk boundary falls in a pause, not inside a word."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

SAMPLE_RATE = 16_000
# Cuts between chunks go to the centre of the quietest window of this length near the boundary.
_QUIET_WINDOW_S = 0.5
_ENERGY_FRAME = 160  # 10 ms frames for the quietness search
# Chunks may end up to this far from ``chunk_seconds`` (a quarter of it, at most 30 s).
MAX_SEARCH_S = 30.0
# Arrays are fed to the chunker in blocks of this many samples (views: a memmap is read lazily).
_BLOCK_SAMPLES = 30 * SAMPLE_RATE


def file_blocks(path: Path, start: int, total: int) -> Iterator[np.ndarray]:
    """Samples ``start..total`` of a raw s16le file in blocks, each read into a fresh array."""
    with path.open("rb") as f:
        f.seek(2 * start)
        for offset in range(start, total, _BLOCK_SAMPLES):
            block = np.fromfile(f, dtype="<i2", count=min(_BLOCK_SAMPLES, total - offset))
            if not len(block):
                return
            yield block


def to_float32(pcm: np.ndarray) -> np.ndarray:
    if pcm.dtype == np.int16 or pcm.dtype == np.dtype(">i2"):
        audio = pcm.astype(np.float32)
        audio *= 1.0 / 32768.0  # in place: one float32 copy of the chunk, not two
        return audio
    return np.ascontiguousarray(pcm, dtype=np.float32)


def array_blocks(audio: np.ndarray) -> Iterator[np.ndarray]:
    """Views of ``audio`` in blocks (nothing is copied or converted here)."""
    if not isinstance(audio, np.ndarray):
        audio = np.asarray(audio)
    if audio.ndim == 2 and 1 in audio.shape:
        audio = audio.reshape(-1)
    if audio.ndim != 1:
        raise ValueError(f"expected mono audio (1-D), got shape {audio.shape}")
    if not (np.issubdtype(audio.dtype, np.floating) or audio.dtype.kind == "i" and audio.dtype.itemsize == 2):
        raise TypeError(f"expected float or int16 samples, got {audio.dtype}")
    for start in range(0, len(audio), _BLOCK_SAMPLES):
        yield audio[start:start + _BLOCK_SAMPLES]


def quiet_chunks(blocks: Iterable[np.ndarray], chunk: int, search: int) -> Iterator[np.ndarray]:
    """Regroup blocks into chunks of about ``chunk`` samples, each cut at the quietest window within
    ``search`` samples of its nominal end. At most ``chunk + search`` samples (plus one block) are held."""
    buf: list[np.ndarray] = []
    held = 0
    for block in blocks:
        if not len(block):
            continue
        buf.append(block)
        held += len(block)
        while held >= chunk + search:
            data = np.concatenate(buf) if len(buf) > 1 else buf[0]
            cut = quietest_cut(data, chunk - search, chunk + search)
            yield data[:cut]
            buf, held = [data[cut:]], len(data) - cut
    if held:
        yield np.concatenate(buf) if len(buf) > 1 else buf[0]


def quietest_cut(data: np.ndarray, lo: int, hi: int) -> int:
    """Index at the centre of the quietest 0.5 s of ``data[lo:hi]`` (lowest mean energy), so that a
    chunk boundary falls in a pause rather than inside a word."""
    lo, hi = max(lo, 1), min(hi, len(data) - 1)
    window = int(_QUIET_WINDOW_S * SAMPLE_RATE) // _ENERGY_FRAME
    frames = (hi - lo) // _ENERGY_FRAME
    if frames <= window:
        return (lo + hi) // 2
    x = np.asarray(data[lo:lo + frames * _ENERGY_FRAME], dtype=np.float64).reshape(frames, _ENERGY_FRAME)
    energy = np.einsum("ij,ij->i", x, x)
    sums = np.convolve(energy, np.ones(window), mode="valid")  # sums[k] = energy of frames k..k+window-1
    best = int(np.argmin(sums))
    return lo + (best + window // 2) * _ENERGY_FRAME


def decode_media_blocks(path: Path) -> Iterator[np.ndarray]:
    """Decode a media file's first audio stream to 16 kHz mono int16, frame by frame.

    The same samples as ``ffmpeg -ac 1 -ar 16000 -f s16le`` (and :func:`models.media.read_audio`),
    but streamed. A file without an audio stream yields nothing (no speech). Corrupt packets are
    skipped, as the ffmpeg CLI does; a file that cannot be opened raises ``models.media.MediaError``.
    """
    from models.media import audio_blocks  # lazy: models.media imports torch

    blocks = audio_blocks(path, SAMPLE_RATE)
    if blocks is not None:
        yield from blocks
