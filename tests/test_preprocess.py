"""The authors' preprocessing: frame sampling, CLIP image transform, Kaldi fbank, CLIP BPE, Whisper mel."""

from __future__ import annotations

import functools
import gzip
import html
import math
from pathlib import Path

import ftfy
import numpy as np
import pytest
import regex
import torch
from PIL import Image

from models import preprocess as pp

MEDIA = Path(__file__).resolve().parents[2] / "shared" / "data" / "media"
JFK = MEDIA / "speech" / "jfk.flac"
needs_jfk = pytest.mark.skipif(not JFK.is_file(), reason=f"shared test media not found at {JFK}")


# --- frame index rule ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("frame_count", "fps", "max_frames", "expected"),
    [
        # 30 fps, 300 frames: duration 10 s, secs 0..10 -> index 300 is past the end -> 10 frames.
        (300, 30.0, 12, [0, 30, 60, 90, 120, 150, 180, 210, 240, 270]),
        # 301 frames: index 300 exists, ceil(301/30) = 11 -> secs 0..11, 330 fails -> 11 frames.
        (301, 30.0, 12, [30 * s for s in range(11)]),
        # 29.97 truncates to 29 (the extractor's int(fps)): 242 frames -> 0, 29, ..., 232.
        (242, 29.97, 12, [29 * s for s in range(9)]),
        # 25 fps, 417 frames -> 17 one-per-second frames, then linspace(0, 16, 12) truncated.
        (417, 25.0, 12, [25 * i for i in (0, 1, 2, 4, 5, 7, 8, 10, 11, 13, 14, 16)]),
        (1, 30.0, 12, [0]),
        (0, 30.0, 12, []),
        (10, 0.5, 12, [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]),  # fps < 1 guarded to 1
        (100, 10.0, 4, [0, 30, 60, 90]),  # 10 candidates -> linspace(0, 9, 4) = 0, 3, 6, 9
    ],
)
def test_sample_frame_indices(frame_count: int, fps: float, max_frames: int, expected: list[int]) -> None:
    assert pp.sample_frame_indices(frame_count, fps, max_frames) == expected


def test_linspace_rule_is_truncation() -> None:
    # 17 -> 12: linspace(0, 16, 12) = 0, 1.45, 2.9, 4.36, ... -> truncated, not rounded.
    assert pp._uniform_subsample(17, 12) == [0, 1, 2, 4, 5, 7, 8, 10, 11, 13, 14, 16]


# --- image preprocessing ------------------------------------------------------------------------------
def test_constant_image_exact_value() -> None:
    rgb = (200, 100, 50)
    img = np.empty((300, 500, 3), dtype=np.uint8)
    img[:] = rgb
    x = pp.preprocess_image(img)
    assert x.shape == (3, 224, 224) and x.dtype == torch.float32
    for c in range(3):
        expected = (torch.tensor(rgb[c] / 255.0, dtype=torch.float32) - pp.CLIP_MEAN[c]) / pp.CLIP_STD[c]
        assert torch.all(x[c] == expected.to(torch.float32)), c
    assert x[0, 0, 0].item() == pytest.approx((200 / 255 - 0.48145466) / 0.26862954, abs=1e-6)


def test_resize_and_crop_geometry() -> None:
    # torchvision: short side -> 224, long side int(224 * long / short); crop top = round((h - 224) / 2).
    assert pp._resized_size(640, 480, 224) == (298, 224)
    assert pp._resized_size(480, 854, 224) == (224, 398)
    assert pp._resized_size(224, 224, 224) == (224, 224)
    # A left-half-black / right-half-white image: the crop keeps the centre, so both halves survive.
    img = np.zeros((100, 400, 3), dtype=np.uint8)
    img[:, 200:] = 255
    x = pp.preprocess_image(Image.fromarray(img))
    black = (0 - pp.CLIP_MEAN[0]) / pp.CLIP_STD[0]
    white = (1 - pp.CLIP_MEAN[0]) / pp.CLIP_STD[0]
    assert x[0, 50, 0].item() == pytest.approx(black, abs=1e-5)
    assert x[0, 50, 223].item() == pytest.approx(white, abs=1e-5)


def test_preprocess_image_accepts_pil_and_array_and_grey() -> None:
    arr = np.random.default_rng(0).integers(0, 256, (120, 90, 3), dtype=np.uint8)
    a = pp.preprocess_image(arr)
    b = pp.preprocess_image(Image.fromarray(arr))
    assert torch.equal(a, b)
    grey = pp.preprocess_image(Image.fromarray(arr[:, :, 0], mode="L"))
    assert grey.shape == (3, 224, 224)
    with pytest.raises(ValueError):
        pp.preprocess_image(np.zeros((10, 10), dtype=np.uint8))


def test_preprocess_frames_pads_and_masks() -> None:
    frames = [np.full((64, 80, 3), i * 20, dtype=np.uint8) for i in range(5)]
    video, mask = pp.preprocess_frames(frames, max_frames=12, image_size=32)
    assert video.shape == (12, 3, 32, 32) and video.dtype == torch.float32
    assert mask.dtype == torch.long and mask.tolist() == [1] * 5 + [0] * 7
    assert torch.all(video[5:] == 0)
    assert torch.equal(video[3], pp.preprocess_image(frames[3], 32))


def test_preprocess_frames_subsamples_like_loader() -> None:
    frames = [np.full((8, 8, 3), i, dtype=np.uint8) for i in range(17)]
    video, mask = pp.preprocess_frames(frames, max_frames=12, image_size=8)
    assert mask.tolist() == [1] * 12
    kept = [round(float(v[0, 0, 0] * pp.CLIP_STD[0] + pp.CLIP_MEAN[0]) * 255) for v in video]
    assert kept == [0, 1, 2, 4, 5, 7, 8, 10, 11, 13, 14, 16]


# --- Kaldi fbank --------------------------------------------------------------------------------------
def _decode_flac_16k(path: Path) -> np.ndarray:
    import av

    with av.open(str(path)) as c:
        resampler = av.AudioResampler(format="s16", layout="mono", rate=16000)
        chunks = [f.to_ndarray().reshape(-1) for fr in c.decode(audio=0) for f in resampler.resample(fr)]
        chunks += [f.to_ndarray().reshape(-1) for f in resampler.resample(None)]
    return (np.concatenate(chunks).astype(np.float32) / 32768.0).astype(np.float32)


@functools.cache
def _jfk() -> np.ndarray:
    return _decode_flac_16k(JFK)


def _knf_fbank(x: np.ndarray, frame_shift_ms: float, num_bins: int) -> np.ndarray:
    knf = pytest.importorskip("kaldi_native_fbank")
    frame_opts = knf.FrameExtractionOptions(
        samp_freq=16000.0,
        frame_shift_ms=frame_shift_ms,
        frame_length_ms=25.0,
        dither=0.0,
        preemph_coeff=0.97,
        remove_dc_offset=True,
        window_type="hanning",
        round_to_power_of_two=True,
        snip_edges=True,
    )
    mel_opts = knf.MelBanksOptions(num_bins=num_bins, low_freq=20.0, high_freq=0.0)
    opts = knf.FbankOptions(
        frame_opts=frame_opts, mel_opts=mel_opts, use_energy=False, htk_compat=True, use_log_fbank=True
    )
    fb = knf.OnlineFbank(opts)
    fb.accept_waveform(16000.0, x)
    fb.input_finished()
    return np.stack([fb.get_frame(i) for i in range(fb.num_frames_ready)])


def _noise(n: int = 40000) -> np.ndarray:
    return np.random.default_rng(0).uniform(-0.5, 0.5, n).astype(np.float32)


# kaldi-native-fbank (like Kaldi) refuses 128 bins at 16 kHz / 512-pt FFT because mel bin 3 covers no FFT
# bin; torchaudio does not check. So the algorithm is cross-checked at bin counts Kaldi accepts (the mel
# formula is the only bin-count-dependent part), and the 128-bin quirk is checked separately below.
@pytest.mark.parametrize("num_bins", [23, 80, 126])
@pytest.mark.parametrize("signal", ["noise", "jfk"])
@pytest.mark.parametrize("adaptive_shift", [False, True])
def test_kaldi_fbank_matches_kaldi_native_fbank(signal: str, num_bins: int, adaptive_shift: bool) -> None:
    if signal == "jfk" and not JFK.is_file():
        pytest.skip(f"shared test media not found at {JFK}")
    x = _jfk() if signal == "jfk" else _noise()
    shift = len(x) * 1000 / (16000 * 1024) if adaptive_shift else 10.0
    ref = _knf_fbank(x, shift, num_bins)
    ours = pp.kaldi_fbank(torch.from_numpy(x), frame_shift_ms=shift, num_mel_bins=num_bins).numpy()
    assert ours.shape == ref.shape
    diff = np.abs(ours - ref)
    # The two differ only by float32 rounding: in near-silent frames (energy ~1e-7, log ~ -15) by up
    # to ~3e-3 in log, and where a loud partial sits on a filter edge with a tiny weight (~0.005,
    # relative rounding differs) by up to ~2e-3. Typical differences are ~1e-5.
    audible = ref > -12.0
    assert audible.mean() > 0.9
    assert diff[audible].max() < 3e-3
    assert np.quantile(diff[audible], 0.999) < 5e-4
    assert diff.max() < 1e-2
    assert np.median(diff) < 1e-4


def test_mel_banks_match_float64_formula() -> None:
    banks = pp._kaldi_mel_banks(128, 512, 16000.0, 20.0, 0.0).double()
    mel = lambda f: 1127.0 * np.log(1.0 + f / 700.0)  # noqa: E731
    lo, hi = mel(20.0), mel(8000.0)
    delta = (hi - lo) / 129
    fft_mel = mel(np.arange(256) * 16000.0 / 512)
    b = np.arange(128)[:, None]
    left, center, right = lo + b * delta, lo + (b + 1) * delta, lo + (b + 2) * delta
    up, down = (fft_mel - left) / (center - left), (right - fft_mel) / (right - center)
    ref = np.maximum(0.0, np.minimum(up, down))
    assert banks.shape == (128, 257) and torch.all(banks[:, 256] == 0)
    np.testing.assert_allclose(banks[:, :256].numpy(), ref, atol=2e-5)


def test_kaldi_fbank_128_bins_has_empty_bin() -> None:
    fb = pp.kaldi_fbank(torch.from_numpy(_noise()), num_mel_bins=128)
    assert fb.shape == (1 + (40000 - 400) // 160, 128)
    eps_log = math.log(torch.finfo(torch.float32).eps)
    assert torch.allclose(fb[:, 3], torch.full_like(fb[:, 3], eps_log))
    assert (fb[:, [0, 1, 2, 4, 5]] > eps_log + 1).all()


def test_kaldi_fbank_frame_count_and_short_input() -> None:
    x = torch.from_numpy(_noise(16000))
    assert pp.kaldi_fbank(x).shape == (98, 128)  # 1 + (16000 - 400) // 160
    assert pp.kaldi_fbank(x[:399]).shape == (0, 128)
    # Fractional shift: int(16000 * 10.7421875 * 0.001) = 171 samples, like torchaudio.
    assert pp.kaldi_fbank(x, frame_shift_ms=10.7421875).shape == (1 + (16000 - 400) // 171, 128)


# --- waveform_to_fbank --------------------------------------------------------------------------------
def test_fbank_zero_audio_rule() -> None:
    for missing in (None, np.zeros(0, dtype=np.float32), np.zeros(399, dtype=np.float32)):
        fb, has_audio = pp.waveform_to_fbank(missing)
        assert fb.shape == (1024, 128) and fb.dtype == torch.float32
        assert not has_audio
        assert torch.count_nonzero(fb) == 0  # all-zero and NOT normalised


@needs_jfk
def test_fbank_pipeline_on_speech() -> None:
    x = _jfk()  # 11 s -> adaptive shift 171 samples -> 1027 frames -> truncated to 1024
    fb, has_audio = pp.waveform_to_fbank(x)
    assert has_audio and fb.shape == (1024, 128) and fb.dtype == torch.float32
    t = torch.from_numpy(x)
    raw = pp.kaldi_fbank(t - t.mean(), frame_shift_ms=len(x) * 1000 / (16000 * 1024))
    assert raw.shape[0] == 1027
    expected = (raw[:1024] - pp.FBANK_MEAN) / (2 * pp.FBANK_STD)
    assert torch.allclose(fb, expected, atol=1e-6)


def test_fbank_pads_with_zero_before_normalising() -> None:
    # Shift picks ~1024 frames; snip_edges loses the last few, which are zero-padded *before* the
    # normalisation, so they hold (0 - FBANK_MEAN) / (2 * FBANK_STD) = 0.7867...
    x = _noise(20480)  # shift 20 samples -> 1 + (20480 - 400) // 20 = 1005 frames
    fb, has_audio = pp.waveform_to_fbank(x)
    n_frames = 1 + (20480 - 400) // int(16000 * (20480 * 1000 / (16000 * 1024)) * 0.001)
    assert n_frames == 1005
    assert has_audio and n_frames < 1024
    pad_value = (0 - pp.FBANK_MEAN) / (2 * pp.FBANK_STD)
    assert torch.allclose(fb[n_frames:], torch.full_like(fb[n_frames:], pad_value))
    assert not torch.allclose(fb[n_frames - 1], torch.full_like(fb[0], pad_value))


def test_fbank_very_short_clip_uses_one_sample_shift() -> None:
    fb, has_audio = pp.waveform_to_fbank(_noise(600))  # shift would be int(0.58) = 0 samples
    assert has_audio
    pad_value = (0 - pp.FBANK_MEAN) / (2 * pp.FBANK_STD)
    assert not torch.allclose(fb[200], torch.full_like(fb[200], pad_value))  # 201 frames, 1-sample shift
    assert torch.allclose(fb[201], torch.full_like(fb[201], pad_value))


def test_fbank_accepts_tensor_and_2d_mono() -> None:
    x = _noise(16000)
    a, _ = pp.waveform_to_fbank(x)
    b, _ = pp.waveform_to_fbank(torch.from_numpy(x)[None])
    assert torch.equal(a, b)
    pcm = np.round(x * 32767).astype(np.int16)
    c, _ = pp.waveform_to_fbank(pcm)
    d, _ = pp.waveform_to_fbank(pcm.astype(np.float32) / 32768)
    assert torch.equal(c, d)
    with pytest.raises(ValueError):
        pp.waveform_to_fbank(np.zeros(1000, dtype=np.int32))
    with pytest.raises(ValueError):
        pp.waveform_to_fbank(np.zeros((2, 1000), dtype=np.float32))


def test_fbank_resamples_other_rates() -> None:
    sr = 44100
    t = np.arange(sr * 2) / sr
    x44 = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    t16 = np.arange(16000 * 2) / 16000
    x16 = (0.3 * np.sin(2 * np.pi * 440 * t16)).astype(np.float32)
    a, _ = pp.waveform_to_fbank(x44, sample_rate=sr)
    b, _ = pp.waveform_to_fbank(x16)
    loud = b > b.mean()  # compare where the tone has energy
    assert (a[loud] - b[loud]).abs().max() < 0.05


def test_resample_sine_is_accurate() -> None:
    sr = 44100
    t = np.arange(sr) / sr
    y = pp.resample(torch.from_numpy(np.sin(2 * np.pi * 1000 * t).astype(np.float32)), sr, 16000)
    assert y.shape == (16000,)
    ref = np.sin(2 * np.pi * 1000 * np.arange(16000) / 16000)
    assert np.abs(y.numpy()[200:-200] - ref[200:-200]).max() < 1e-3
    same = torch.randn(100)
    assert pp.resample(same, 16000, 16000) is same


# --- CLIP BPE tokenizer -------------------------------------------------------------------------------
class _OpenAISimpleTokenizer:
    """Independent, literal re-statement of OpenAI CLIP's ``SimpleTokenizer.encode`` (the oracle)."""

    def __init__(self) -> None:
        self.byte_encoder = pp._bytes_to_unicode()
        with gzip.open(pp._BPE_PATH, "rt", encoding="utf-8") as f:
            merges = f.read().split("\n")[1 : 49152 - 256 - 2 + 1]
        merge_pairs = [tuple(m.split()) for m in merges]
        vocab = list(self.byte_encoder.values())
        vocab = vocab + [v + "</w>" for v in vocab]
        vocab += ["".join(m) for m in merge_pairs]
        vocab += ["<|startoftext|>", "<|endoftext|>"]
        self.encoder = {v: i for i, v in enumerate(vocab)}
        self.bpe_ranks = {m: i for i, m in enumerate(merge_pairs)}
        self.cache = {"<|startoftext|>": "<|startoftext|>", "<|endoftext|>": "<|endoftext|>"}
        self.pat = regex.compile(
            r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
            regex.IGNORECASE,
        )

    def bpe(self, token: str) -> str:
        if token in self.cache:
            return self.cache[token]
        word = tuple(token[:-1]) + (token[-1] + "</w>",)
        while len(word) > 1:
            pairs = {(a, b) for a, b in zip(word[:-1], word[1:], strict=True)}
            bigram = min(pairs, key=lambda p: self.bpe_ranks.get(p, float("inf")))
            if bigram not in self.bpe_ranks:
                break
            first, second = bigram
            new_word: list[str] = []
            i = 0
            while i < len(word):
                if word[i] == first and i < len(word) - 1 and word[i + 1] == second:
                    new_word.append(first + second)
                    i += 2
                else:
                    new_word.append(word[i])
                    i += 1
            word = tuple(new_word)
        out = " ".join(word)
        self.cache[token] = out
        return out

    def encode(self, text: str) -> list[int]:
        text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
        text = regex.sub(r"\s+", " ", text).strip().lower()
        ids: list[int] = []
        for token in regex.findall(self.pat, text):
            token = "".join(self.byte_encoder[b] for b in token.encode("utf-8"))
            ids.extend(self.encoder[t] for t in self.bpe(token).split(" "))
        return ids


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a photo of a cat", [49406, 320, 1125, 539, 320, 2368, 49407]),
        ("Hello, World!", [49406, 3306, 267, 1002, 256, 49407]),
    ],
)
def test_tokenize_known_openai_ids(text: str, expected: list[int]) -> None:
    ids, mask = pp.tokenize([text])
    assert ids[0, : len(expected)].tolist() == expected
    assert ids[0, len(expected) :].eq(0).all()
    assert mask[0].tolist() == [1] * len(expected) + [0] * (32 - len(expected))
    assert ids.dtype == torch.long and ids.shape == (1, 32) and mask.dtype == torch.long


TRICKY = [
    "It's   a TEST's case; they'll've we'd I'm   can't",
    "naïve café — 1,234.56 km/h 2024-01-02",
    "&amp;lt;b&amp;gt; bold &quot;quoted&quot; &#39;x&#39;",
    "🐶 dog 🐕‍🦺 barks!!! ??? ...",
    "你好，世界 こんにちは 안녕하세요 Привет мир",
    "mojibake: cafÃ© dÃ©jÃ  vu",
    "tabs\tand\nnewlines\r\nand\u00a0nbsp\u2003em",
    "x\x1cy\x1dz control chars",
    "an <|endoftext|> in the middle <|startoftext|>",
    "ÉCOLE STRASSE Straße İstanbul ǅ",
    "don't'll'd''''s 'tis",
    "a" * 60 + " " + "supercalifragilisticexpialidocious" * 3,
    "   ",
    "",
]


def test_tokenize_matches_openai_simple_tokenizer() -> None:
    oracle = _OpenAISimpleTokenizer()
    ids, _ = pp.tokenize(TRICKY, max_words=77)
    for row, text in zip(ids.tolist(), TRICKY, strict=True):
        bpe = oracle.encode(text)[:75]
        expected = [49406, *bpe, 49407]
        assert row[: len(expected)] == expected, text
        assert all(v == 0 for v in row[len(expected) :]), text


def test_vocab_size_and_special_ids() -> None:
    vocab, merges = pp._clip_vocab_and_merges()
    assert len(vocab) == 49408 and len(merges) == 48894
    assert vocab["<|startoftext|>"] == pp.SOT_ID and vocab["<|endoftext|>"] == pp.EOT_ID
    assert vocab["!"] == 0  # the pad id 0 is the BPE token "!" (the authors attend to it)
    assert pp.clip_tokenizer() is pp.clip_tokenizer()


def test_tokenize_truncates_to_max_words() -> None:
    text = " ".join(["dog"] * 100)
    ids, mask = pp.tokenize([text])
    dog = pp.tokenize(["dog"])[0][0, 1].item()
    assert ids.shape == (1, 32)
    assert ids[0].tolist() == [pp.SOT_ID] + [dog] * 30 + [pp.EOT_ID]
    assert mask[0].tolist() == [1] * 32
    # Exactly 30 BPE tokens fit without truncation; 31 lose the last one.
    ids30, _ = pp.tokenize([" ".join(["dog"] * 30)])
    ids31, _ = pp.tokenize([" ".join(["dog"] * 31)])
    assert torch.equal(ids30, ids31) and ids30[0, -1].item() == pp.EOT_ID


def test_tokenize_none_and_short_rules() -> None:
    ids, mask = pp.tokenize([None, "", "hi"])
    assert ids[0].eq(0).all() and mask[0].eq(0).all()  # None -> zeros
    assert ids[1, :3].tolist() == [pp.SOT_ID, pp.EOT_ID, 0] and mask[1].sum() == 2  # caption "" -> SOT EOT
    assert mask[2].sum() == 3


def test_tokenize_speech_five_char_rule() -> None:
    ids, mask = pp.tokenize_speech([None, "", "ok", "four", " hi ", "hello", "Hi there"])
    assert ids.shape == (7, 32)
    for i in range(5):  # None and every string shorter than 5 characters (raw length) -> all-zero row
        assert ids[i].eq(0).all() and mask[i].eq(0).all(), i
    assert ids[5, 0].item() == pp.SOT_ID and mask[5].sum() == 3
    assert ids[6, 0].item() == pp.SOT_ID and mask[6].sum() == 4
    empty_ids, empty_mask = pp.tokenize_speech([])
    assert empty_ids.shape == (0, 32) and empty_mask.shape == (0, 32)


# --- Whisper log-mel ----------------------------------------------------------------------------------
def test_whisper_log_mel_shape_and_padding() -> None:
    x = _noise(16000 * 3)
    mel = pp.whisper_log_mel(x)
    assert mel.shape == (80, 3000) and mel.dtype == np.float32
    from faster_whisper.feature_extractor import FeatureExtractor

    direct = FeatureExtractor(feature_size=80)(x)[:, :-1]
    assert direct.shape[1] == 300
    np.testing.assert_array_equal(mel[:, :300], direct)
    assert np.all(mel[:, 300:] == 0)  # padded in feature space, as faster-whisper's pad_or_trim does
    assert pp.whisper_log_mel(_noise(16000 * 40), n_mels=128).shape == (128, 3000)
    assert pp.whisper_log_mel(np.zeros(0, dtype=np.float32)).shape == (80, 3000)
