"""Checkpoints trained with the authors' code (ruc-aimc-lab/SAVE) -> our SAVEModel, with a strict key map.

Their ``model.state_dict()`` uses OpenAI-CLIP naming under ``clip.*``, timm naming for the AST under
``clip.audio.v.*`` and their own module names for the new transformers (save-reference.md §1.4). Every
key is either mapped (shape checked) or explicitly ignored; anything else is a clear error, and every
parameter of our model must be filled.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import Tensor

from models.config import SAVEConfig, get_config
from models.pretrained import build_audio_encoder, build_clip, freeze_audio_encoder
from models.save import ModelInfo, SAVEModel

# Keys present in the authors' checkpoints that carry nothing our model uses.
IGNORED_KEY_PATTERNS = [
    # created and optimised by the authors' code but never used in forward (reference §1.1, §6.4)
    r"asr_query_tokens",
    # ImageNet heads of the timm DeiT and AudioSet head; unused by SAVE (reference §1.2, §1.4)
    r"clip\.audio\.v\.head(_dist)?\.(weight|bias)",
    r"clip\.audio\.mlp_head\..*",
    # OpenAI JIT metadata that became state-dict entries
    r"clip\.(input_resolution|context_length|vocab_size)",
]


class CheckpointMismatchError(ValueError):
    """The authors' checkpoint does not map one-to-one onto our model."""


# How a tensor changes between their layout and ours: "id" as is, "T" transposed (their [in, out]
# projection Parameters become Linear weights), "q"/"k"/"v" one third of a packed in-projection.
Transform = str
_PACKED = ("q", "k", "v")


def apply_transform(transform: Transform, tensor: Tensor) -> Tensor:
    if transform == "id":
        return tensor
    if transform == "T":
        return tensor.t()
    return tensor.chunk(3, dim=0)[_PACKED.index(transform)]


def _clip_layer_rules(src: str, dst: str) -> Iterator[tuple[str, str, Transform]]:
    """OpenAI ResidualAttentionBlock -> transformers CLIPEncoderLayer."""
    for part in _PACKED:
        yield f"{src}.attn.in_proj_weight", f"{dst}.self_attn.{part}_proj.weight", part
        yield f"{src}.attn.in_proj_bias", f"{dst}.self_attn.{part}_proj.bias", part
    for a, b in (("attn.out_proj", "self_attn.out_proj"), ("ln_1", "layer_norm1"), ("ln_2", "layer_norm2"),
                 ("mlp.c_fc", "mlp.fc1"), ("mlp.c_proj", "mlp.fc2")):
        for p in ("weight", "bias"):
            yield f"{src}.{a}.{p}", f"{dst}.{b}.{p}", "id"


def _ast_layer_rules(src: str, dst: str) -> Iterator[tuple[str, str, Transform]]:
    """timm ViT Block -> transformers ASTLayer."""
    for part in _PACKED:
        yield f"{src}.attn.qkv.weight", f"{dst}.attention.{part}_proj.weight", part
        yield f"{src}.attn.qkv.bias", f"{dst}.attention.{part}_proj.bias", part
    for a, b in (("attn.proj", "attention.o_proj"), ("norm1", "layernorm_before"), ("norm2", "layernorm_after"),
                 ("mlp.fc1", "mlp.fc1"), ("mlp.fc2", "mlp.fc2")):
        for p in ("weight", "bias"):
            yield f"{src}.{a}.{p}", f"{dst}.{b}.{p}", "id"


def _new_module_rules(model: SAVEModel) -> Iterator[tuple[str, str, Transform]]:
    """The fusion/resampler leaf names are the authors' own, so these are prefix renames."""
    prefixes = {"Audio_Resampler.": "audio_resampler.", "transformerClip.": "audio_fusion.",
                "transformerClip_ASR.": "speech_fusion."}
    ours = model.state_dict()
    for theirs_prefix, our_prefix in prefixes.items():
        for key in ours:
            if key.startswith(our_prefix):
                yield theirs_prefix + key[len(our_prefix):], key, "id"


def key_rules(model: SAVEModel) -> list[tuple[str, str, Transform]]:
    """(authors' key, our key, transform) for every tensor of an AST-audio SAVE model."""
    cfg = model.config
    if cfg.audio.type != "ast":
        raise CheckpointMismatchError("the authors' code only trains the AST audio variant (config 'save-b32'/'b16')")
    text, vision, ast = "clip.model.text_model", "clip.model.vision_model", "audio_encoder.model"
    rules: list[tuple[str, str, Transform]] = [
        ("query_tokens", "query_tokens", "T"),  # stored [D, Q] by the authors
        ("frame_position_embeddings.weight", "frame_position_embeddings.weight", "id"),
        ("query_position_embeddings.weight", "query_position_embeddings.weight", "id"),
        ("clip.positional_embedding", f"{text}.embeddings.position_embedding.weight", "id"),
        ("clip.token_embedding.weight", f"{text}.embeddings.token_embedding.weight", "id"),
        ("clip.ln_final.weight", f"{text}.final_layer_norm.weight", "id"),
        ("clip.ln_final.bias", f"{text}.final_layer_norm.bias", "id"),
        ("clip.text_projection", "clip.model.text_projection.weight", "T"),
        ("clip.logit_scale", "clip.model.logit_scale", "id"),
        ("clip.visual.class_embedding", f"{vision}.embeddings.class_embedding", "id"),
        ("clip.visual.positional_embedding", f"{vision}.embeddings.position_embedding.weight", "id"),
        ("clip.visual.conv1.weight", f"{vision}.embeddings.patch_embedding.weight", "id"),
        ("clip.visual.ln_pre.weight", f"{vision}.pre_layrnorm.weight", "id"),
        ("clip.visual.ln_pre.bias", f"{vision}.pre_layrnorm.bias", "id"),
        ("clip.visual.ln_post.weight", f"{vision}.post_layernorm.weight", "id"),
        ("clip.visual.ln_post.bias", f"{vision}.post_layernorm.bias", "id"),
        ("clip.visual.proj", "clip.model.visual_projection.weight", "T"),
        ("clip.audio_projection", "audio_projection.weight", "T"),
        ("clip.audio.v.cls_token", f"{ast}.embeddings.cls_token", "id"),
        ("clip.audio.v.dist_token", f"{ast}.embeddings.distillation_token", "id"),
        ("clip.audio.v.pos_embed", f"{ast}.embeddings.position_embeddings", "id"),
        ("clip.audio.v.patch_embed.proj.weight", f"{ast}.embeddings.patch_embeddings.projection.weight", "id"),
        ("clip.audio.v.patch_embed.proj.bias", f"{ast}.embeddings.patch_embeddings.projection.bias", "id"),
        ("clip.audio.v.norm.weight", f"{ast}.layernorm.weight", "id"),
        ("clip.audio.v.norm.bias", f"{ast}.layernorm.bias", "id"),
    ]
    for j in range(cfg.clip.text_config["num_hidden_layers"]):
        rules += _clip_layer_rules(f"clip.transformer.resblocks.{j}", f"{text}.encoder.layers.{j}")
    for j in range(cfg.clip.vision_config["num_hidden_layers"]):
        rules += _clip_layer_rules(f"clip.visual.transformer.resblocks.{j}", f"{vision}.encoder.layers.{j}")
    for k in range(cfg.audio.config["num_hidden_layers"]):
        rules += _ast_layer_rules(f"clip.audio.v.blocks.{k}", f"{ast}.layers.{k}")
    rules += _new_module_rules(model)
    return rules


def to_authors_state_dict(model: SAVEModel) -> dict[str, Tensor]:
    """The inverse map: our model in the authors' layout (fp32), e.g. to evaluate it with their code."""
    ours = model.state_dict()
    theirs: dict[str, Tensor] = {}
    packed: dict[str, dict[str, Tensor]] = {}
    for src, dst, transform in key_rules(model):
        value = ours[dst].detach().cpu()
        if transform in _PACKED:
            packed.setdefault(src, {})[transform] = value
        else:
            theirs[src] = value.t().contiguous() if transform == "T" else value.clone()
    for src, parts in packed.items():
        theirs[src] = torch.cat([parts[p] for p in _PACKED])
    return theirs


def _is_ignored(key: str) -> bool:
    return any(re.fullmatch(p, key) for p in IGNORED_KEY_PATTERNS)


def convert_state_dict(theirs: dict[str, Tensor], model: SAVEModel) -> dict[str, Tensor]:
    """Map the authors' state dict onto ``model``'s keys, strictly. fp16 tensors become fp32."""
    theirs = {k.removeprefix("module."): v for k, v in theirs.items()}  # DDP-saved checkpoints
    ours = model.state_dict()
    rules = key_rules(model)
    converted: dict[str, Tensor] = {}
    used: set[str] = set()
    problems: list[str] = []
    for src, dst, transform in rules:
        if src not in theirs:
            problems.append(f"missing key {src!r} (needed for {dst!r})")
            continue
        used.add(src)
        value = apply_transform(transform, theirs[src]).to(torch.float32)
        if dst not in ours:
            problems.append(f"internal: no parameter {dst!r} in our model")
        elif value.shape != ours[dst].shape:
            problems.append(
                f"shape of {src!r}: {tuple(theirs[src].shape)} does not fit {dst!r} {tuple(ours[dst].shape)}")
        else:
            converted[dst] = value.contiguous()
    unexpected = sorted(k for k in theirs if k not in used and not _is_ignored(k))
    problems += [f"unexpected key {k!r}" for k in unexpected]
    unfilled = sorted(k for k in ours if k not in converted and not _is_buffer_default(model, k))
    problems += [f"our parameter {k!r} is not filled by any key" for k in unfilled if not any(
        p.startswith("missing") for p in problems)]
    if problems:
        shown = "\n  ".join(problems[:20])
        more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        raise CheckpointMismatchError(
            f"authors' checkpoint does not match config {model.config.name!r}:\n  {shown}{more}")
    return converted


def _is_buffer_default(model: SAVEModel, key: str) -> bool:
    """Non-learned buffers (e.g. position_ids) are rebuilt by the model, not read from checkpoints."""
    params = dict(model.named_parameters())
    return key not in params


def load_authors_state_dict(path: str | Path) -> dict[str, Tensor]:
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file gets the same clear error
        raise CheckpointMismatchError(f"cannot read {path} as a PyTorch state dict: {exc}") from exc
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise CheckpointMismatchError(f"{path} does not hold a flat state dict of tensors")
    return state


def authors_state_dict_to_model(
    theirs: dict[str, Tensor], config: str | SAVEConfig = "save-b32", source: str | None = None
) -> SAVEModel:
    cfg = config if isinstance(config, SAVEConfig) else get_config(config)
    model = SAVEModel(cfg, build_clip(cfg.clip, False), build_audio_encoder(cfg.audio, False))
    converted = convert_state_dict(theirs, model)
    model.load_state_dict(converted, strict=False)
    freeze_audio_encoder(model)
    model.fusion_enabled = True
    model.info = ModelInfo(cfg.name, None, None, fusion_enabled=True, checkpoint=source,
                           notes=["converted from the authors' checkpoint (fp16 CLIP/AST weights widened to fp32)"])
    model.eval()
    return model


def infer_config_name(theirs: dict[str, Tensor]) -> str:
    """save-b32 or save-b16 from the ViT patch size in the checkpoint."""
    conv = theirs.get("clip.visual.conv1.weight", theirs.get("module.clip.visual.conv1.weight"))
    if conv is None:
        raise CheckpointMismatchError("no 'clip.visual.conv1.weight': not a checkpoint of the authors' SAVE code")
    patch = conv.shape[-1]
    if patch == 32:
        return "save-b32"
    if patch == 16:
        return "save-b16"
    raise CheckpointMismatchError(f"unsupported ViT patch size {patch}")


def load_authors_checkpoint(
    path: str | Path, config: str | SAVEConfig | None = None, device: str | torch.device | None = None
) -> SAVEModel:
    """Read a ``pytorch_model.bin`` written by the authors' training code and return our model."""
    theirs = load_authors_state_dict(path)
    model = authors_state_dict_to_model(theirs, config or infer_config_name(theirs), source=str(Path(path).resolve()))
    return model.to(device) if device is not None else model
