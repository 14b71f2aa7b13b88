"""The SAVE authors' input preprocessing, reproduced with their exact constants.

Everything here turns decoded media (RGB frames, mono waveforms, strings) into the tensors the model
takes. It does no file I/O apart from reading the bundled CLIP BPE vocabulary, so training, ingest and
tests all share one definition of "what the model sees". The sources of every rule are the authors'
dataloaders (see ``save-reference.md`` §2.3, §2.4, §4.1, §4.3): 1-fps frames uniformly cut to 12 and
CLIP-normalised; a 1024x128 Kaldi fbank with an adaptive frame shift; 32 CLIP BPE ids per text, with
"no speech" (< 5 characters) as an all-zero row.
"""

from __future__ import annotations

import functools
import gzip
import html
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import ftfy
import numpy as np
import regex
import torch
from PIL import Image

if TYPE_CHECKING:  # heavy imports, loaded lazily on first use
    from faster_whisper.feature_extractor import FeatureExtractor
    from transformers import CLIPTokenizer

__all__ = [
    "AUDIO_SAMPLE_RATE",
    "CLIP_MEAN",
    "CLIP_STD",
    "EOT_ID",
    "FBANK_BINS",
    "FBANK_FRAMES",
    "FBANK_MEAN",
    "FBANK_STD",
    "MAX_FRAMES",
    "MAX_WORDS",
    "MIN_SPEECH_CHARS",
    "SOT_ID",
    "WHISPER_N_FRAMES",
    "WHISPER_N_SAMPLES",
    "clean_text",
    "clip_tokenizer",
    "kaldi_fbank",
    "preprocess_frames",
    "preprocess_image",
    "resample",
    "sample_frame_indices",
    "tokenize",
    "tokenize_speech",
    "waveform_to_fbank",
    "whisper_log_mel",
]

# --- constants (authors' values; do not "fix" them) ---------------------------------------------------
CLIP_MEAN: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)
# Not AST's AudioSet statistics (-4.268, 4.569): the authors normalise with these.
FBANK_MEAN: float = -5.118
FBANK_STD: float = 3.2527153
AUDIO_SAMPLE_RATE: int = 16000
MAX_FRAMES: int = 12
MAX_WORDS: int = 32
MIN_SPEECH_CHARS: int = 5
FBANK_FRAMES: int = 1024
FBANK_BINS: int = 128
SOT_ID: int = 49406
EOT_ID: int = 49407
# Whisper's fixed 30 s window: 480000 samples at 16 kHz, 3000 log-mel frames (hop 160).
WHISPER_N_SAMPLES: int = 30 * AUDIO_SAMPLE_RATE
WHISPER_N_FRAMES: int = 3000

_BPE_PATH = Path(__file__).resolve().parent / "assets" / "bpe_simple_vocab_16e6.txt.gz"
# torchaudio.compliance.kaldi uses float32 epsilon as the log floor whatever the input dtype.
_KALDI_EPS = float(torch.finfo(torch.float32).eps)
_MILLISECONDS_TO_SECONDS = 0.001


# --- frames -------------------------------------------------------------------------------------------
def _uniform_subsample(n: int, max_frames: int) -> list[int]:
    """CLIP4Clip's ``slice_framepos=2``: evenly spaced positions, truncated (not rounded) to int."""
    if n <= max_frames:
        return list(range(n))
    return [int(i) for i in np.linspace(0, n - 1, num=max_frames, dtype=int)]


def sample_frame_indices(frame_count: int, fps: float, max_frames: int = MAX_FRAMES) -> list[int]:
    """Indices of the frames the model sees, mirroring CLIP4Clip's cv2 ``RawVideoExtractor``.

    The extractor reads one frame per second at index ``sec * int(fps)`` for ``sec`` in
    ``0 .. ceil(frame_count / int(fps))`` inclusive, stopping at the first index past the end; the
    dataloader then keeps ``np.linspace(0, n - 1, max_frames, dtype=int)`` of those if there are more
    than ``max_frames``. Note the quirks kept on purpose: fps is truncated (29.97 -> 29, so the sampling
    drifts from wall-clock seconds) and the last second may or may not get a frame.
    """
    if frame_count <= 0:
        return []
    fps_int = int(fps) if math.isfinite(fps) and fps >= 1 else 1
    duration = (frame_count + fps_int - 1) // fps_int  # ceil, as in the extractor
    one_per_second = [sec * fps_int for sec in range(duration + 1) if sec * fps_int < frame_count]
    return [one_per_second[i] for i in _uniform_subsample(len(one_per_second), max_frames)]


def _resized_size(width: int, height: int, size: int) -> tuple[int, int]:
    """torchvision ``Resize(int)`` output size: short side = size, long side truncated, as (w, h)."""
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = size, int(size * long / short)
    return (new_short, new_long) if width <= height else (new_long, new_short)


def preprocess_image(img: Image.Image | np.ndarray, image_size: int = 224) -> torch.Tensor:
    """CLIP's image transform without torchvision: Resize(bicubic, short side) -> CenterCrop -> RGB ->
    ToTensor -> Normalize. Returns float32 ``[3, image_size, image_size]``.

    Follows, step by step, what torchvision does to a PIL image (size rounding, PIL bicubic, crop
    offsets, float32 normalise) so the values should equal the authors'; torchvision itself is not
    installable here, so that equality is by construction, not tested against it.
    """
    if isinstance(img, np.ndarray):
        if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
            raise ValueError(f"expected an HxWx3 uint8 RGB array, got shape {img.shape} dtype {img.dtype}")
        img = Image.fromarray(img)
    width, height = img.size
    if width <= 0 or height <= 0:
        raise ValueError(f"empty image of size {img.size}")
    new_w, new_h = _resized_size(width, height, image_size)
    if (new_w, new_h) != (width, height):
        img = img.resize((new_w, new_h), Image.Resampling.BICUBIC)
    # torchvision center_crop rounding (Python's round: half to even).
    top = int(round((new_h - image_size) / 2.0))
    left = int(round((new_w - image_size) / 2.0))
    img = img.crop((left, top, left + image_size, top + image_size)).convert("RGB")
    x = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1).to(torch.float32)
    x = x.div(255)
    mean = torch.tensor(CLIP_MEAN, dtype=torch.float32).view(3, 1, 1)
    std = torch.tensor(CLIP_STD, dtype=torch.float32).view(3, 1, 1)
    return x.sub_(mean).div_(std)


def preprocess_frames(
    frames: Sequence[Image.Image | np.ndarray], max_frames: int = MAX_FRAMES, image_size: int = 224
) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack already-sampled frames into ``[max_frames, 3, S, S]`` plus a long ``video_mask``.

    Missing frames are zero-filled with mask 0, as the authors' loader does; more than ``max_frames``
    frames are cut with the same linspace rule as :func:`sample_frame_indices`.
    """
    keep = _uniform_subsample(len(frames), max_frames)
    video = torch.zeros(max_frames, 3, image_size, image_size, dtype=torch.float32)
    mask = torch.zeros(max_frames, dtype=torch.long)
    for slot, i in enumerate(keep):
        video[slot] = preprocess_image(frames[i], image_size)
        mask[slot] = 1
    return video, mask


# --- audio: resampling --------------------------------------------------------------------------------
@functools.lru_cache(maxsize=16)
def _sinc_resample_kernel(
    orig: int, new: int, lowpass_filter_width: int, rolloff: float
) -> tuple[torch.Tensor, int]:
    base = min(orig, new) * rolloff
    width = math.ceil(lowpass_filter_width * orig / base)
    idx = torch.arange(-width, width + orig, dtype=torch.float64)[None, None] / orig
    t = torch.arange(0, -new, -1, dtype=torch.float64)[:, None, None] / new + idx
    t = (t * base).clamp_(-lowpass_filter_width, lowpass_filter_width)
    window = torch.cos(t * math.pi / lowpass_filter_width / 2) ** 2
    t = t * math.pi
    kernel = torch.where(t == 0, torch.ones_like(t), t.sin() / t)
    kernel = kernel * window * (base / orig)
    return kernel.to(torch.float32), width


def resample(waveform: torch.Tensor, orig_freq: int, new_freq: int = AUDIO_SAMPLE_RATE) -> torch.Tensor:
    """Band-limited (Hann-windowed sinc) resampling of a 1-D waveform.

    Same algorithm and defaults as ``torchaudio.transforms.Resample`` (lowpass width 6, rolloff 0.99),
    which the authors' loader used for any file not already at 16 kHz.
    """
    orig_freq, new_freq = int(orig_freq), int(new_freq)
    if orig_freq <= 0 or new_freq <= 0:
        raise ValueError(f"sample rates must be positive, got {orig_freq} -> {new_freq}")
    if orig_freq == new_freq or waveform.numel() == 0:
        return waveform
    gcd = math.gcd(orig_freq, new_freq)
    orig, new = orig_freq // gcd, new_freq // gcd
    kernel, width = _sinc_resample_kernel(orig, new, 6, 0.99)
    x = waveform.reshape(1, 1, -1)
    length = x.shape[-1]
    x = torch.nn.functional.pad(x, (width, width + orig))
    out = torch.nn.functional.conv1d(x, kernel.to(x.dtype), stride=orig)  # [1, new, frames]
    out = out.transpose(1, 2).reshape(-1)
    target_length = math.ceil(new * length / orig)
    return out[:target_length]


# --- audio: Kaldi fbank -------------------------------------------------------------------------------
def _mel_scale(freq: torch.Tensor) -> torch.Tensor:
    return 1127.0 * (1.0 + freq / 700.0).log()


def _mel_scale_scalar(freq: float) -> float:
    return 1127.0 * math.log(1.0 + freq / 700.0)


@functools.lru_cache(maxsize=8)
def _kaldi_mel_banks(
    num_bins: int, padded_window_size: int, sample_freq: float, low_freq: float, high_freq: float
) -> torch.Tensor:
    """Kaldi's triangular mel filters ``[num_bins, padded/2 + 1]`` (last, Nyquist, column zero).

    Computed in float32 with the same operation order as torchaudio's ``get_mel_banks`` (VTLN off).
    """
    if num_bins <= 3:
        raise ValueError("Kaldi mel banks need more than 3 bins")
    num_fft_bins = padded_window_size // 2
    nyquist = 0.5 * sample_freq
    if high_freq <= 0.0:
        high_freq += nyquist
    if not (0.0 <= low_freq < nyquist and 0.0 < high_freq <= nyquist and low_freq < high_freq):
        raise ValueError(f"bad mel frequency range low={low_freq} high={high_freq} nyquist={nyquist}")
    fft_bin_width = sample_freq / padded_window_size
    mel_low = _mel_scale_scalar(low_freq)
    mel_high = _mel_scale_scalar(high_freq)
    mel_delta = (mel_high - mel_low) / (num_bins + 1)
    b = torch.arange(num_bins).unsqueeze(1)
    left = (mel_low + b * mel_delta).to(torch.float32)
    center = (mel_low + (b + 1.0) * mel_delta).to(torch.float32)
    right = (mel_low + (b + 2.0) * mel_delta).to(torch.float32)
    mel = _mel_scale(fft_bin_width * torch.arange(num_fft_bins, dtype=torch.float32)).unsqueeze(0)
    up = (mel - left) / (center - left)
    down = (right - mel) / (right - center)
    banks = torch.clamp(torch.minimum(up, down), min=0.0)
    return torch.nn.functional.pad(banks, (0, 1))


def kaldi_fbank(
    waveform: torch.Tensor,
    sample_frequency: float = 16000.0,
    frame_shift_ms: float = 10.0,
    frame_length_ms: float = 25.0,
    num_mel_bins: int = FBANK_BINS,
    low_freq: float = 20.0,
    high_freq: float = 0.0,
    preemphasis_coefficient: float = 0.97,
    remove_dc_offset: bool = True,
    round_to_power_of_two: bool = True,
) -> torch.Tensor:
    """Log-mel filterbank ``[frames, num_mel_bins]``: a pure-torch ``torchaudio.compliance.kaldi.fbank``.

    Fixed to the options the authors used (``htk_compat=True, use_energy=False, window_type='hanning',
    dither=0``), with Kaldi defaults elsewhere: snip_edges, power spectrum, log(max(eps, e)). Window and
    shift in samples are ``int()`` of ``rate * ms * 0.001``, exactly as torchaudio, so the adaptive
    fractional shift of :func:`waveform_to_fbank` lands on the same sample count. Computes in the
    waveform's float dtype (float32 for the authors). Fewer samples than one window gives 0 frames.
    """
    if waveform.dim() != 1:
        raise ValueError(f"expected a 1-D waveform, got shape {tuple(waveform.shape)}")
    if not waveform.is_floating_point():
        waveform = waveform.to(torch.float32)
    window_shift = int(sample_frequency * frame_shift_ms * _MILLISECONDS_TO_SECONDS)
    window_size = int(sample_frequency * frame_length_ms * _MILLISECONDS_TO_SECONDS)
    padded = 1 << (window_size - 1).bit_length() if round_to_power_of_two else window_size
    if window_size < 2 or window_shift < 1:
        raise ValueError(f"window of {window_size} samples / shift of {window_shift} samples is invalid")
    n = waveform.numel()
    if n < window_size:
        return torch.empty(0, num_mel_bins, dtype=waveform.dtype)
    m = 1 + (n - window_size) // window_shift
    frames = waveform.contiguous().as_strided((m, window_size), (window_shift, 1))
    if remove_dc_offset:
        frames = frames - frames.mean(dim=1, keepdim=True)
    if preemphasis_coefficient != 0.0:
        prev = torch.cat([frames[:, :1], frames[:, :-1]], dim=1)  # replicate-pad by one on the left
        frames = frames - preemphasis_coefficient * prev
    window = torch.hann_window(window_size, periodic=False, dtype=waveform.dtype)  # Kaldi "hanning"
    frames = frames * window.unsqueeze(0)
    if padded != window_size:
        frames = torch.nn.functional.pad(frames, (0, padded - window_size))
    spectrum = torch.fft.rfft(frames).abs().pow(2.0)
    banks = _kaldi_mel_banks(num_mel_bins, padded, float(sample_frequency), float(low_freq), float(high_freq))
    energies = torch.mm(spectrum, banks.to(spectrum.dtype).T)
    eps = torch.tensor(_KALDI_EPS, dtype=energies.dtype)
    return torch.maximum(energies, eps).log()


def _as_waveform_tensor(waveform: np.ndarray | torch.Tensor) -> torch.Tensor:
    x = torch.as_tensor(np.asarray(waveform)) if isinstance(waveform, np.ndarray) else waveform
    if x.dim() == 2 and x.shape[0] == 1:
        x = x[0]
    if x.dim() != 1:
        raise ValueError(f"expected a mono 1-D waveform, got shape {tuple(x.shape)}")
    if x.dtype == torch.int16:  # raw PCM: scale like torchaudio.load does
        return x.to(torch.float32) / 32768.0
    if not x.is_floating_point():
        raise ValueError(f"expected float samples in [-1, 1] or int16 PCM, got dtype {x.dtype}")
    return x.detach().to(torch.float32)


def waveform_to_fbank(
    waveform: np.ndarray | torch.Tensor | None,
    sample_rate: int = AUDIO_SAMPLE_RATE,
    target_length: int = FBANK_FRAMES,
    num_mel_bins: int = FBANK_BINS,
) -> tuple[torch.Tensor, bool]:
    """The authors' AST input: normalised fbank ``[target_length, num_mel_bins]`` and ``has_audio``.

    Mono float waveform in [-1, 1] (s16 / 32768, like ``torchaudio.load`` of their wav files; int16
    input is scaled that way). Steps:
    resample to 16 kHz, subtract the mean, pick the frame shift so the clip yields ~1024 frames,
    Kaldi fbank, zero-pad at the end or truncate to ``target_length``, then normalise with
    (x - FBANK_MEAN) / (2 * FBANK_STD). No audio (``None``/empty) gives an all-zero fbank that is
    *not* normalised and ``has_audio=False``; so does a clip shorter than one 25 ms window, which the
    authors' code could not process at all. For clips shorter than ``target_length`` samples (64 ms)
    the adaptive shift would be 0 samples (a crash in torchaudio); we use a 1-sample shift instead.
    """
    empty = torch.zeros(target_length, num_mel_bins, dtype=torch.float32)
    if waveform is None:
        return empty, False
    x = _as_waveform_tensor(waveform)
    if x.numel() == 0:
        return empty, False
    if int(sample_rate) != AUDIO_SAMPLE_RATE:
        x = resample(x, int(sample_rate), AUDIO_SAMPLE_RATE)
    x = x - x.mean()
    n = x.numel()
    frame_shift_ms = n * 1000 / (AUDIO_SAMPLE_RATE * target_length)
    if int(AUDIO_SAMPLE_RATE * frame_shift_ms * _MILLISECONDS_TO_SECONDS) < 1:
        frame_shift_ms = 1000 / AUDIO_SAMPLE_RATE  # one sample
    fbank = kaldi_fbank(
        x, sample_frequency=float(AUDIO_SAMPLE_RATE), frame_shift_ms=frame_shift_ms, num_mel_bins=num_mel_bins
    )
    if fbank.shape[0] == 0:
        return empty, False
    p = target_length - fbank.shape[0]
    fbank = torch.nn.functional.pad(fbank, (0, 0, 0, p)) if p > 0 else fbank[:target_length]
    return ((fbank - FBANK_MEAN) / (FBANK_STD * 2)).to(torch.float32), True


# --- Whisper input -----------------------------------------------------------------------------------
@functools.lru_cache(maxsize=4)
def _whisper_feature_extractor(n_mels: int) -> FeatureExtractor:
    from faster_whisper.feature_extractor import FeatureExtractor

    return FeatureExtractor(feature_size=n_mels)


def whisper_log_mel(waveform_16k: np.ndarray, n_mels: int = 80) -> np.ndarray:
    """Whisper encoder input ``[n_mels, 3000]`` for the first 30 s, as faster-whisper builds it.

    Uses faster-whisper's own FeatureExtractor (so values match what CTranslate2 is fed), then does what
    ``WhisperModel.transcribe`` does for a window: drop the extra last frame and zero-pad / trim the
    *features* to 3000 frames. The audio is cut to 30 s first, so the dynamic-range clamp (max - 8)
    uses the first 30 s only; for longer audio this can differ from transcribe, which clamps globally.
    """
    x = np.asarray(waveform_16k, dtype=np.float32).reshape(-1)[:WHISPER_N_SAMPLES]
    feats = _whisper_feature_extractor(int(n_mels))(x)[:, :-1]
    feats = feats[:, :WHISPER_N_FRAMES]
    if feats.shape[1] < WHISPER_N_FRAMES:
        feats = np.pad(feats, ((0, 0), (0, WHISPER_N_FRAMES - feats.shape[1])))
    return np.ascontiguousarray(feats, dtype=np.float32)


# --- text ---------------------------------------------------------------------------------------------
def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP byte -> printable unicode map (the first 256 vocab entries, in this order)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    bs += list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs], strict=True))


@functools.lru_cache(maxsize=1)
def _clip_vocab_and_merges() -> tuple[dict[str, int], list[tuple[str, str]]]:
    with gzip.open(_BPE_PATH, "rt", encoding="utf-8") as f:
        lines = f.read().split("\n")
    merges = [tuple(line.split()) for line in lines[1 : 49152 - 256 - 2 + 1]]
    units = list(_bytes_to_unicode().values())
    vocab = units + [u + "</w>" for u in units]
    vocab += ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    return {tok: i for i, tok in enumerate(vocab)}, merges  # type: ignore[return-value]


@functools.lru_cache(maxsize=1)
def clip_tokenizer() -> CLIPTokenizer:
    """OpenAI CLIP's BPE (49408 ids) as a fast ``transformers.CLIPTokenizer`` built from the bundled vocab.

    Use :func:`tokenize`, which applies OpenAI's text cleaning first; this object alone does not run
    ftfy/html unescaping.
    """
    from transformers import CLIPTokenizer

    vocab, merges = _clip_vocab_and_merges()
    return CLIPTokenizer(vocab=vocab, merges=list(merges))  # type: ignore[arg-type]  # pairs work; typed as str


# The `regex` module, as OpenAI does: its \s (Unicode White_Space) differs from `re`'s for a few controls.
_WHITESPACE = regex.compile(r"\s+")


def clean_text(text: str) -> str:
    """OpenAI SimpleTokenizer's cleaning: ftfy, html-unescape twice, collapse whitespace, lowercase."""
    text = ftfy.fix_text(text)
    text = html.unescape(html.unescape(text)).strip()
    return _WHITESPACE.sub(" ", text).strip().lower()


def tokenize(
    texts: Sequence[str | None], max_words: int = MAX_WORDS, min_chars: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """CLIP4Clip-style ids and mask, each long ``[N, max_words]``.

    Row = [SOT] + BPE tokens, cut so that SOT plus tokens is at most ``max_words - 1``, + [EOT], then 0
    padding; mask is 1 on real tokens. ``None`` or a string with ``len(text) < min_chars`` (length of
    the raw string) becomes an all-zero row, no SOT/EOT: the authors' "no speech" encoding.
    """
    if max_words < 2:
        raise ValueError("max_words must leave room for SOT and EOT")
    ids = torch.zeros(len(texts), max_words, dtype=torch.long)
    mask = torch.zeros(len(texts), max_words, dtype=torch.long)
    rows = [i for i, t in enumerate(texts) if t is not None and len(t) >= min_chars]
    if not rows:
        return ids, mask
    cleaned = [clean_text(texts[i]) for i in rows]  # type: ignore[arg-type]
    encodings = clip_tokenizer().backend_tokenizer.encode_batch(cleaned, add_special_tokens=False)
    for row, enc in zip(rows, encodings, strict=True):
        seq = ([SOT_ID] + enc.ids)[: max_words - 1] + [EOT_ID]
        ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        mask[row, : len(seq)] = 1
    return ids, mask


def tokenize_speech(
    texts: Sequence[str | None], max_words: int = MAX_WORDS
) -> tuple[torch.Tensor, torch.Tensor]:
    """Tokenise ASR transcripts: like :func:`tokenize`, but < 5 characters counts as no speech."""
    return tokenize(texts, max_words=max_words, min_chars=MIN_SPEECH_CHARS)
