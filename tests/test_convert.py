"""Strict conversion of checkpoints written by the authors' code (keys and shapes of save-reference.md §1.4)."""

from __future__ import annotations

import pytest
import torch

from models.convert import (
    CheckpointMismatchError,
    authors_state_dict_to_model,
    convert_state_dict,
    infer_config_name,
    load_authors_checkpoint,
    to_authors_state_dict,
)
from models.factory import create_model, load_model


def documented_b32_shapes() -> dict[str, tuple[int, ...]]:
    """The key/shape table of save-reference.md §1.4 for ViT-B/32 + AST base-384, written out by hand."""
    s: dict[str, tuple[int, ...]] = {
        "query_tokens": (512, 12),
        "asr_query_tokens": (512, 12),
        "frame_position_embeddings.weight": (77, 512),
        "query_position_embeddings.weight": (12, 512),
        "clip.positional_embedding": (77, 512),
        "clip.text_projection": (512, 512),
        "clip.logit_scale": (),
        "clip.token_embedding.weight": (49408, 512),
        "clip.ln_final.weight": (512,),
        "clip.ln_final.bias": (512,),
        "clip.visual.class_embedding": (768,),
        "clip.visual.positional_embedding": (50, 768),
        "clip.visual.proj": (768, 512),
        "clip.visual.conv1.weight": (768, 3, 32, 32),
        "clip.audio_projection": (768, 512),
        "clip.audio.v.cls_token": (1, 1, 768),
        "clip.audio.v.dist_token": (1, 1, 768),
        "clip.audio.v.pos_embed": (1, 1214, 768),
        "clip.audio.v.patch_embed.proj.weight": (768, 1, 16, 16),
        "clip.audio.v.patch_embed.proj.bias": (768,),
        "clip.audio.v.norm.weight": (768,),
        "clip.audio.v.norm.bias": (768,),
        "clip.audio.v.head.weight": (1000, 768),
        "clip.audio.v.head.bias": (1000,),
        "clip.audio.v.head_dist.weight": (1000, 768),
        "clip.audio.v.head_dist.bias": (1000,),
    }
    for ln in ("ln_pre", "ln_post"):
        s[f"clip.visual.{ln}.weight"] = s[f"clip.visual.{ln}.bias"] = (768,)

    def mha(prefix: str, width: int) -> None:
        s[f"{prefix}.in_proj_weight"] = (3 * width, width)
        s[f"{prefix}.in_proj_bias"] = (3 * width,)
        s[f"{prefix}.out_proj.weight"] = (width, width)
        s[f"{prefix}.out_proj.bias"] = (width,)

    def clip_block(prefix: str, width: int) -> None:
        mha(f"{prefix}.attn", width)
        for ln in ("ln_1", "ln_2"):
            s[f"{prefix}.{ln}.weight"] = s[f"{prefix}.{ln}.bias"] = (width,)
        s[f"{prefix}.mlp.c_fc.weight"] = (4 * width, width)
        s[f"{prefix}.mlp.c_fc.bias"] = (4 * width,)
        s[f"{prefix}.mlp.c_proj.weight"] = (width, 4 * width)
        s[f"{prefix}.mlp.c_proj.bias"] = (width,)

    for j in range(12):
        clip_block(f"clip.transformer.resblocks.{j}", 512)
        clip_block(f"clip.visual.transformer.resblocks.{j}", 768)
        p = f"clip.audio.v.blocks.{j}"
        for n in ("norm1", "norm2"):
            s[f"{p}.{n}.weight"] = s[f"{p}.{n}.bias"] = (768,)
        s[f"{p}.attn.qkv.weight"], s[f"{p}.attn.qkv.bias"] = (2304, 768), (2304,)
        s[f"{p}.attn.proj.weight"], s[f"{p}.attn.proj.bias"] = (768, 768), (768,)
        s[f"{p}.mlp.fc1.weight"], s[f"{p}.mlp.fc1.bias"] = (3072, 768), (3072,)
        s[f"{p}.mlp.fc2.weight"], s[f"{p}.mlp.fc2.bias"] = (768, 3072), (768,)
    for i in range(4):
        p = f"Audio_Resampler.resblocks.{i}"
        clip_block(p, 512)
        mha(f"{p}.cross_attn", 512)
        s[f"{p}.ln_3.weight"] = s[f"{p}.ln_3.bias"] = (512,)
        for t in ("transformerClip", "transformerClip_ASR"):
            p = f"{t}.resblocks.{i}"
            clip_block(p, 512)
            mha(f"{p}.cross_attn", 512)
            for ln in ("ln_3", "ln_4"):
                s[f"{p}.{ln}.weight"] = s[f"{p}.{ln}.bias"] = (512,)
            s[f"{p}.cross_ff.cross_fc.weight"] = (2048, 512)
            s[f"{p}.cross_ff.cross_proj.weight"] = (512, 2048)
            s[f"{p}.attn_gate.ag_fc.weight"] = (256, 1024)
            s[f"{p}.attn_gate.ag_proj.weight"] = (1, 256)
            s[f"{p}.ff_gate.fg_fc.weight"] = (256, 1024)
            s[f"{p}.ff_gate.fg_proj.weight"] = (1, 256)
    return s


# fp16 as the authors save them (reference §1.3): Conv/Linear weights and projections inside clip.*
def _authors_dtype(key: str) -> torch.dtype:
    if not key.startswith("clip."):
        return torch.float32
    fp32_keys = ("ln_", "norm", "token_embedding", "positional_embedding", "class_embedding", "logit_scale",
                 "cls_token", "dist_token", "pos_embed")
    return torch.float32 if any(k in key for k in fp32_keys) else torch.float16


@pytest.fixture(scope="module")
def b32_authors_state() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {k: (torch.randn(shape, generator=g) * 0.02).to(_authors_dtype(k))
            for k, shape in documented_b32_shapes().items()}


@pytest.fixture(scope="module")
def b32_model(b32_authors_state):
    return authors_state_dict_to_model(b32_authors_state, "save-b32")


@pytest.mark.slow
def test_documented_b32_checkpoint_converts_strictly(b32_authors_state, b32_model):
    theirs = b32_authors_state
    ours = dict(b32_model.named_parameters())
    assert b32_model.fusion_enabled and b32_model.info.mode == "save-fused"
    # a few mappings checked value for value
    torch.testing.assert_close(ours["query_tokens"], theirs["query_tokens"].float().T)
    torch.testing.assert_close(ours["clip.model.visual_projection.weight"], theirs["clip.visual.proj"].float().T)
    torch.testing.assert_close(ours["clip.model.text_projection.weight"], theirs["clip.text_projection"].float().T)
    packed = theirs["clip.visual.transformer.resblocks.5.attn.in_proj_weight"].float()
    k_proj = ours["clip.model.vision_model.encoder.layers.5.self_attn.k_proj.weight"]
    torch.testing.assert_close(k_proj, packed[768:1536])
    qkv = theirs["clip.audio.v.blocks.11.attn.qkv.bias"].float()
    torch.testing.assert_close(ours["audio_encoder.model.layers.11.attention.v_proj.bias"], qkv[1536:])
    torch.testing.assert_close(ours["audio_encoder.model.embeddings.distillation_token"],
                               theirs["clip.audio.v.dist_token"].float())
    torch.testing.assert_close(ours["speech_fusion.resblocks.2.ff_gate.fg_proj.weight"],
                               theirs["transformerClip_ASR.resblocks.2.ff_gate.fg_proj.weight"])
    torch.testing.assert_close(ours["audio_fusion.resblocks.0.cross_ff.cross_fc.weight"],
                               theirs["transformerClip.resblocks.0.cross_ff.cross_fc.weight"])
    assert all(p.dtype == torch.float32 for p in ours.values())
    assert infer_config_name(theirs) == "save-b32"


@pytest.mark.slow
@pytest.mark.parametrize("change", ["missing", "extra", "shape"])
def test_b32_key_problems_are_clear_errors(b32_authors_state, b32_model, change):
    theirs = dict(b32_authors_state)
    if change == "missing":
        theirs.pop("transformerClip.resblocks.3.ln_4.bias")
        match = "missing key 'transformerClip.resblocks.3.ln_4.bias'"
    elif change == "extra":
        theirs["cross.pooler.dense.weight"] = torch.zeros(512, 512)
        match = "unexpected key 'cross.pooler.dense.weight'"
    else:
        theirs["clip.audio_projection"] = torch.zeros(512, 512)
        match = "shape of 'clip.audio_projection'"
    with pytest.raises(CheckpointMismatchError, match=match):
        convert_state_dict(theirs, b32_model)


def test_tiny_round_trip_through_a_saved_file(tmp_path):
    """Our model -> authors' layout -> torch.save with a DDP prefix -> back: identical weights and outputs."""
    torch.manual_seed(0)
    model = create_model("tiny", pretrained=False)
    theirs = to_authors_state_dict(model)
    theirs["asr_query_tokens"] = torch.zeros(32, 12)
    path = tmp_path / "pytorch_model.bin.4"
    torch.save({f"module.{k}": v for k, v in theirs.items()}, path)
    loaded = load_authors_checkpoint(path, config="tiny")
    assert loaded.fusion_enabled
    for k, v in model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[k], v)
    with pytest.raises(CheckpointMismatchError, match="does not match config 'save-b32'"):
        load_model(path)  # inferred as ViT-B/32 from the patch size: every shape differs, said clearly


def test_unreadable_checkpoint_is_a_clear_error(tmp_path):
    bad = tmp_path / "pytorch_model.bin"
    bad.write_text("not a checkpoint")
    with pytest.raises(CheckpointMismatchError, match="cannot read"):
        load_authors_checkpoint(bad)
    torch.save({"foo": torch.zeros(1)}, bad)
    with pytest.raises(CheckpointMismatchError, match="clip.visual.conv1.weight"):
        load_authors_checkpoint(bad)
