"""Contracts of SAVEModel: shapes, the zero-shot path, the similarity formula, initialisation, loading."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from models.config import get_config, list_configs
from models.factory import create_model, is_checkpoint, load_checkpoint, load_model, save_checkpoint
from models.save import MAX_LOGIT_SCALE
from models.similarity import save_similarity


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return create_model("tiny", pretrained=False)


def _inputs(batch: int = 3, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    pixels = torch.randn(batch, 12, 3, 224, 224, generator=g)
    mask = torch.ones(batch, 12, dtype=torch.long)
    mask[-1, 7:] = 0
    pixels[-1, 7:] = 0
    audio = torch.randn(batch, 1024, 128, generator=g)
    speech = torch.zeros(batch, 32, dtype=torch.long)
    speech[:, 0] = 49406
    speech[:, 1:6] = torch.randint(300, 40000, (batch, 5), generator=g)
    speech[:, 6] = 49407
    ids = speech.clone()
    ids[:, 2] = torch.randint(300, 40000, (batch,), generator=g)
    return ids, pixels, mask, audio, speech


def test_shipped_configs_build_and_are_consistent():
    names = list_configs()
    assert {"save-b32", "save-b16", "save2-b32", "tiny"} <= set(names)
    for name in names:
        cfg = get_config(name)
        assert cfg.num_frames == 12 and cfg.max_words == 32 and cfg.num_audio_queries == 12
        assert cfg.fusion_layers == 4 and cfg.resampler_layers == 4 and cfg.temperature == 1.0
    assert get_config("save-b32").clip.source == "openai/clip-vit-base-patch32"
    assert get_config("save-b16").clip.source == "openai/clip-vit-base-patch16"
    assert get_config("save-b32").audio.source == "MIT/ast-finetuned-audioset-10-10-0.4593"
    assert get_config("save2-b32").audio.type == "whisper"
    with pytest.raises(ValueError, match="unknown model config"):
        get_config("nope")


def test_zero_shot_path_equals_plain_clip(tiny):
    """Without a SAVE checkpoint the video side is plain CLIP frame features and the score is zero-shot CLIP."""
    ids, pixels, mask, audio, speech = _inputs()
    assert not tiny.fusion_enabled
    assert tiny.info.mode == "zero-shot-clip" and "zero-shot CLIP" in tiny.info.notes[0]
    with torch.no_grad():
        video = tiny.encode_video(pixels, mask, audio, speech)
        text = tiny.encode_text(ids)
        clip = tiny.clip.model
        plain_frames = clip.get_image_features(pixel_values=pixels.flatten(0, 1)).pooler_output.view(3, 12, -1)
        hidden = clip.text_model(input_ids=ids).last_hidden_state
        plain_text = clip.text_projection(hidden[torch.arange(3), ids.argmax(-1)])
        logits = tiny.similarity(text, video)
    frames = F.normalize(plain_frames, dim=-1)
    torch.testing.assert_close(video.frames, frames)
    torch.testing.assert_close(text, plain_text)
    m = mask.float().unsqueeze(-1)
    pooled = F.normalize((frames * m).sum(1) / m.sum(1), dim=-1)
    expected = clip.logit_scale.exp() * F.normalize(plain_text, dim=-1) @ pooled.T
    torch.testing.assert_close(logits, expected)
    # audio and speech cannot change a zero-shot video embedding
    with torch.no_grad():
        other = tiny.encode_video(pixels, mask, torch.zeros_like(audio), torch.zeros_like(speech))
    torch.testing.assert_close(other.frames, video.frames)


def test_similarity_matches_brute_force_formula():
    torch.manual_seed(1)
    text = torch.randn(4, 8)
    frames = F.normalize(torch.randn(3, 5, 8), dim=-1)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 0, 0, 0, 0]])
    pooled = F.normalize(torch.randn(3, 8), dim=-1)
    scale = 100.0
    got = save_similarity(text, frames, mask, pooled, scale)
    t = F.normalize(text, dim=-1)
    for i in range(4):
        for j in range(3):
            exp_sum = sum(math.exp(scale * float(t[i] @ frames[j, f])) * int(mask[j, f]) for f in range(5))
            local = math.log(exp_sum)
            global_ = scale * float(t[i] @ pooled[j])
            assert got[i, j].item() == pytest.approx((local + global_) / 2, rel=1e-5, abs=1e-4)


def test_similarity_temperature_and_identical_frames_offset():
    """Identical frames give s*c + log(n_valid) in the LSE term (reference §2.7)."""
    text = torch.tensor([[1.0, 0.0]])
    frame = F.normalize(torch.tensor([1.0, 1.0]), dim=0)
    frames = frame.expand(1, 4, 2)
    mask = torch.tensor([[1, 1, 1, 0]])
    got = save_similarity(text, frames, mask, frame[None], 10.0)
    c = frame[0].item()
    assert got.item() == pytest.approx(((10 * c + math.log(3)) + 10 * c) / 2, rel=1e-6)
    lam = 0.5
    got = save_similarity(text, frames, mask, frame[None], 10.0, temperature=lam)
    assert got.item() == pytest.approx(((10 * c + math.log(3) / lam) + 10 * c) / 2, rel=1e-6)


def test_fused_video_is_query_independent_and_normalised(tiny):
    ids, pixels, mask, audio, speech = _inputs()
    tiny.fusion_enabled = True
    try:
        with torch.no_grad():
            video = tiny.encode_video(pixels, mask, audio, speech)
            single = tiny.encode_video(pixels[:1], mask[:1], audio[:1], speech[:1])
            logits = tiny.similarity(tiny.encode_text(ids), video)
    finally:
        tiny.fusion_enabled = False
    assert video.frames.shape == (3, 12, 32) and video.pooled.shape == (3, 32)
    torch.testing.assert_close(video.frames.norm(dim=-1), torch.ones(3, 12))
    torch.testing.assert_close(single.frames, video.frames[:1], atol=1e-5, rtol=1e-5)
    assert logits.shape == (3, 3) and torch.isfinite(logits).all()


def test_fusion_uses_speech_and_audio_when_enabled(tiny):
    ids, pixels, mask, audio, speech = _inputs(batch=2)
    tiny.fusion_enabled = True
    # make the gates open so the branches matter
    with torch.no_grad():
        saved = {k: v.clone() for k, v in tiny.state_dict().items() if "gate" in k}
        for name, p in tiny.named_parameters():
            if "gate" in name:
                p.mul_(200)
        try:
            base = tiny.encode_video(pixels, mask, audio, speech).frames
            no_speech = tiny.encode_video(pixels, mask, audio, torch.zeros_like(speech)).frames
            no_audio = tiny.encode_video(pixels, mask, torch.zeros_like(audio), speech).frames
        finally:
            tiny.load_state_dict(saved, strict=False)
            tiny.fusion_enabled = False
    assert (base - no_speech).abs().max() > 1e-4
    assert (base - no_audio).abs().max() > 1e-4


def test_new_modules_initialised_from_clip_text_layers(tiny):
    text = tiny.clip.model.text_model
    torch.testing.assert_close(tiny.frame_position_embeddings.weight, text.embeddings.position_embedding.weight)
    for blocks in (tiny.audio_fusion.resblocks, tiny.speech_fusion.resblocks, tiny.audio_resampler.resblocks):
        for j, block in enumerate(blocks):
            src = text.encoder.layers[j]
            q, k, v = block.attn.in_proj_weight.chunk(3)
            torch.testing.assert_close(q, src.self_attn.q_proj.weight)
            torch.testing.assert_close(v, src.self_attn.v_proj.weight)
            torch.testing.assert_close(block.mlp.c_fc.weight, src.mlp.fc1.weight)
            torch.testing.assert_close(block.ln_2.weight, src.layer_norm2.weight)
    q = tiny.query_tokens
    torch.testing.assert_close(q @ q.T, torch.eye(12), atol=1e-5, rtol=0)
    for block in tiny.audio_fusion.resblocks:
        assert block.ln_3.eps == 1e-12 and block.attn_gate.ag_fc.bias is None


def test_gradient_flows_only_into_trainable_parts():
    torch.manual_seed(0)
    model = create_model("tiny", pretrained=False)
    from models.train.optim import apply_freezing

    apply_freezing(model)
    model.fusion_enabled = True
    model.train()
    ids, pixels, mask, audio, speech = _inputs(batch=2)
    out = model(ids, pixels, mask, audio, speech)
    loss = out["logits"].diagonal().sum() + out["audio_tokens"].sum()
    loss.backward()
    for name, p in model.named_parameters():
        if not p.requires_grad:
            assert p.grad is None, f"frozen {name} got a gradient"
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert any(n.startswith("audio_encoder.model.layers.") for n in frozen)
    assert "audio_encoder.model.layernorm.weight" not in frozen
    assert "clip.model.vision_model.embeddings.patch_embedding.weight" in frozen
    assert "clip.model.text_model.embeddings.token_embedding.weight" in frozen
    for name in ("audio_fusion.resblocks.0.attn_gate.ag_fc.weight",
                 "speech_fusion.resblocks.3.cross_ff.cross_fc.weight",
                 "audio_resampler.resblocks.0.cross_attn.in_proj_weight", "query_tokens", "audio_projection.weight",
                 "clip.model.vision_model.encoder.layers.0.mlp.fc1.weight", "frame_position_embeddings.weight"):
        p = dict(model.named_parameters())[name]
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_logit_scale_clamp(tiny):
    with torch.no_grad():
        tiny.logit_scale.fill_(10.0)
    tiny.clamp_logit_scale()
    assert tiny.logit_scale.item() == pytest.approx(MAX_LOGIT_SCALE)
    assert math.exp(MAX_LOGIT_SCALE) == pytest.approx(100.0)


def test_checkpoint_round_trip(tmp_path):
    torch.manual_seed(3)
    model = create_model("tiny", pretrained=False)
    model.fusion_enabled = True
    folder = save_checkpoint(model, tmp_path / "ckpt")
    assert is_checkpoint(folder)
    loaded = load_model(folder)
    assert loaded.fusion_enabled and loaded.info.mode == "save-fused"
    for k, v in model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[k], v)
    ids, pixels, mask, audio, speech = _inputs(batch=2)
    with torch.no_grad():
        a = model.similarity(model.encode_text(ids), model.encode_video(pixels, mask, audio, speech))
        b = loaded.similarity(loaded.encode_text(ids), loaded.encode_video(pixels, mask, audio, speech))
    torch.testing.assert_close(a, b)


def test_checkpoint_with_wrong_keys_is_a_clear_error(tmp_path):
    from safetensors.torch import load_file, save_file

    model = create_model("tiny", pretrained=False)
    folder = save_checkpoint(model, tmp_path / "ckpt")
    state = load_file(str(folder / "model.safetensors"))
    state.pop("query_tokens")
    save_file(state, str(folder / "model.safetensors"))
    with pytest.raises(ValueError, match="missing"):
        load_checkpoint(folder)


def test_pretrained_weights_load_from_local_folders(tmp_path):
    """Local folders take the same code path as hub ids (from_pretrained)."""
    torch.manual_seed(4)
    reference = create_model("tiny", pretrained=False)
    reference.clip.model.save_pretrained(tmp_path / "clip")
    reference.audio_encoder.model.save_pretrained(tmp_path / "ast")
    model = create_model("tiny", pretrained=True, clip_source=str(tmp_path / "clip"),
                         audio_source=str(tmp_path / "ast"))
    assert model.info.clip_source == str(tmp_path / "clip") and not model.fusion_enabled
    for k, v in reference.clip.model.state_dict().items():
        torch.testing.assert_close(model.clip.model.state_dict()[k], v)
    for k, v in reference.audio_encoder.model.state_dict().items():
        torch.testing.assert_close(model.audio_encoder.model.state_dict()[k], v)
    assert model.audio_encoder.model.config.layer_norm_eps == 1e-6


def test_missing_weights_raise_weights_unavailable(tmp_path):
    from models.pretrained import WeightsUnavailableError

    with pytest.raises(WeightsUnavailableError, match="CLIP"):
        create_model("tiny", pretrained=True, clip_source=str(tmp_path / "does-not-exist"))


def test_mismatched_architecture_is_rejected(tmp_path):
    from models.pretrained import WeightsUnavailableError

    other = create_model("tiny", pretrained=False)
    other.clip.model.save_pretrained(tmp_path / "clip")
    with pytest.raises(WeightsUnavailableError, match="do not match"):
        create_model("save-b32", pretrained=True, clip_source=str(tmp_path / "clip"), audio_source=None)
