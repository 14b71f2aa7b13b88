"""The authors' SAVE forward pass (ruc-aimc-lab/SAVE), re-derived from save-reference.md only.

Why this exists: it is an independent oracle for ``models.convert`` + ``models.save``. It reads tensors
straight from an authors-keyed state dict (``clip.*`` OpenAI-CLIP names, ``clip.audio.v.*`` timm names,
``Audio_Resampler.*``, ``transformerClip*.*``, ``query_tokens`` stored [D, Q]) and is purely functional,
so nothing here shares code or module structure with ``models``. Everything runs in fp32; the authors'
fp16 CLIP branch (§1.3) is deliberately not emulated. Tensors are batch-first here, the authors'
are sequence-first; that does not change the numbers.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

StateDict = dict[str, Tensor]

# LayerNorm eps per family (§1.1, §6.8).
CLIP_LN_EPS = 1e-5
AST_LN_EPS = 1e-6
NEW_MODULE_LN_EPS = 1e-12
# AST patch stride (fstride = tstride = 10, §1.2).
AST_STRIDE = 10


@dataclass(frozen=True)
class Heads:
    """Attention head counts. The authors derive them as width // 64, which is 0 for tiny widths."""

    text: int = 8
    vision: int = 12
    audio: int = 12
    new_modules: int = 8  # resampler and gated fusion: the CLIP text head count


TINY_HEADS = Heads(text=4, vision=4, audio=4, new_modules=4)


# ---------------------------------------------------------------------------------------------- primitives
def layer_norm(x: Tensor, weight: Tensor, bias: Tensor, eps: float) -> Tensor:
    """Hand-written LN (biased variance), the TF-style formula of until_module.LayerNorm for any eps."""
    mean = x.mean(dim=-1, keepdim=True)
    var = (x - mean).pow(2).mean(dim=-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + eps) * weight + bias


def _ln(sd: StateDict, prefix: str, x: Tensor, eps: float) -> Tensor:
    return layer_norm(x, sd[f"{prefix}.weight"], sd[f"{prefix}.bias"], eps)


def quick_gelu(x: Tensor) -> Tensor:
    return x * torch.sigmoid(1.702 * x)


def exact_gelu(x: Tensor) -> Tensor:
    return 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0)))


def _linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    y = x @ weight.t()
    return y if bias is None else y + bias


def attention(
    query: Tensor,
    key_value: Tensor,
    packed_weight: Tensor,
    packed_bias: Tensor,
    out_weight: Tensor,
    out_bias: Tensor,
    heads: int,
    score_offset: Tensor | None = None,
) -> Tensor:
    """Multi-head attention with a packed [3W, W] q/k/v projection (rows q, k, v), batch-first.

    ``score_offset`` is added to the [B, H, Nq, Nk] scores before the softmax (causal or row masks).
    """
    wq, wk, wv = packed_weight.chunk(3, dim=0)
    bq, bk, bv = packed_bias.chunk(3, dim=0)
    b, nq, width = query.shape
    nk = key_value.shape[1]
    dh = width // heads
    q = _linear(query, wq, bq).view(b, nq, heads, dh).transpose(1, 2)
    k = _linear(key_value, wk, bk).view(b, nk, heads, dh).transpose(1, 2)
    v = _linear(key_value, wv, bv).view(b, nk, heads, dh).transpose(1, 2)
    scores = (q * dh**-0.5) @ k.transpose(-1, -2)
    if score_offset is not None:
        scores = scores + score_offset
    out = torch.softmax(scores, dim=-1) @ v
    return _linear(out.transpose(1, 2).reshape(b, nq, width), out_weight, out_bias)


def _mha(sd: StateDict, prefix: str, query: Tensor, key_value: Tensor, heads: int,
         score_offset: Tensor | None = None) -> Tensor:
    """nn.MultiheadAttention parameters as the authors' state dict stores them."""
    return attention(query, key_value, sd[f"{prefix}.in_proj_weight"], sd[f"{prefix}.in_proj_bias"],
                     sd[f"{prefix}.out_proj.weight"], sd[f"{prefix}.out_proj.bias"], heads, score_offset)


def _mlp(sd: StateDict, prefix: str, x: Tensor) -> Tensor:
    """CLIP-style MLP: c_proj(QuickGELU(c_fc(x)))."""
    h = quick_gelu(_linear(x, sd[f"{prefix}.c_fc.weight"], sd[f"{prefix}.c_fc.bias"]))
    return _linear(h, sd[f"{prefix}.c_proj.weight"], sd[f"{prefix}.c_proj.bias"])


def _count(sd: StateDict, pattern: str) -> int:
    """Number of layers i for which a key matches ``pattern`` (with ``{i}`` as the layer index)."""
    regex = re.compile(re.escape(pattern).replace(r"\{i\}", r"(\d+)"))
    found = {int(m.group(1)) for k in sd if (m := regex.fullmatch(k))}
    return max(found) + 1 if found else 0


def l2_normalize(x: Tensor) -> Tensor:
    """x / ||x||, without an eps, as the authors write it."""
    return x / x.norm(dim=-1, keepdim=True)


# ---------------------------------------------------------------------------------------------- CLIP
def _clip_block(sd: StateDict, prefix: str, x: Tensor, heads: int, score_offset: Tensor | None) -> Tensor:
    """OpenAI ResidualAttentionBlock: pre-LN (eps 1e-5), attention, QuickGELU MLP."""
    h = _ln(sd, f"{prefix}.ln_1", x, CLIP_LN_EPS)
    x = x + _mha(sd, f"{prefix}.attn", h, h, heads, score_offset)
    return x + _mlp(sd, f"{prefix}.mlp", _ln(sd, f"{prefix}.ln_2", x, CLIP_LN_EPS))


def encode_text_hidden(sd: StateDict, ids: Tensor, heads: int = TINY_HEADS.text) -> Tensor:
    """§2.1 steps 2-4 / §2.4: all positions after ln_final and text_projection, [B, L, D].

    Only the causal mask: pads (id 0) are ordinary tokens, which is what the speech branch sees.
    """
    seq = ids.shape[1]
    x = sd["clip.token_embedding.weight"][ids] + sd["clip.positional_embedding"][:seq]
    causal = torch.full((seq, seq), float("-inf")).triu(1)
    for j in range(_count(sd, "clip.transformer.resblocks.{i}.ln_1.weight")):
        x = _clip_block(sd, f"clip.transformer.resblocks.{j}", x, heads, causal)
    x = _ln(sd, "clip.ln_final", x, CLIP_LN_EPS)
    return x @ sd["clip.text_projection"]


def encode_text(sd: StateDict, ids: Tensor, heads: int = TINY_HEADS.text) -> Tensor:
    """§2.1 step 5: the hidden state at argmax(ids) (the EOT id 49407), [B, D], not normalised."""
    hidden = encode_text_hidden(sd, ids, heads)
    return hidden[torch.arange(ids.shape[0]), ids.argmax(dim=-1)]


def encode_image(sd: StateDict, pixels: Tensor, heads: int = TINY_HEADS.vision) -> Tensor:
    """§2.2: conv1 -> [class; patches] + pos -> ln_pre -> blocks -> ln_post -> token 0 @ proj, [N, D]."""
    conv = sd["clip.visual.conv1.weight"]
    x = F.conv2d(pixels, conv, stride=conv.shape[-1])  # no bias
    x = x.flatten(2).transpose(1, 2)  # [N, grid*grid, W]
    cls = sd["clip.visual.class_embedding"].expand(x.shape[0], 1, -1)
    x = torch.cat([cls, x], dim=1) + sd["clip.visual.positional_embedding"]
    x = _ln(sd, "clip.visual.ln_pre", x, CLIP_LN_EPS)
    for j in range(_count(sd, "clip.visual.transformer.resblocks.{i}.ln_1.weight")):
        x = _clip_block(sd, f"clip.visual.transformer.resblocks.{j}", x, heads, None)
    x = _ln(sd, "clip.visual.ln_post", x, CLIP_LN_EPS)
    return x[:, 0] @ sd["clip.visual.proj"]


# ---------------------------------------------------------------------------------------------- AST
def _ast_block(sd: StateDict, prefix: str, x: Tensor, heads: int) -> Tensor:
    """timm 0.4.5 Block: fused qkv attention and an exact-erf GELU MLP, LN eps 1e-6."""
    h = _ln(sd, f"{prefix}.norm1", x, AST_LN_EPS)
    x = x + attention(h, h, sd[f"{prefix}.attn.qkv.weight"], sd[f"{prefix}.attn.qkv.bias"],
                      sd[f"{prefix}.attn.proj.weight"], sd[f"{prefix}.attn.proj.bias"], heads)
    h = _ln(sd, f"{prefix}.norm2", x, AST_LN_EPS)
    h = exact_gelu(_linear(h, sd[f"{prefix}.mlp.fc1.weight"], sd[f"{prefix}.mlp.fc1.bias"]))
    return x + _linear(h, sd[f"{prefix}.mlp.fc2.weight"], sd[f"{prefix}.mlp.fc2.bias"])


def ast_tokens(sd: StateDict, fbank: Tensor, heads: int = TINY_HEADS.audio) -> Tensor:
    """§1.2 AST forward: [B, 1024, 128] -> [B, 1213, H] = [(cls+dist)/2; 1212 patches], before v.norm."""
    x = fbank.unsqueeze(1).transpose(2, 3)  # [B, 1, 128 (freq), 1024 (time)]
    x = F.conv2d(x, sd["clip.audio.v.patch_embed.proj.weight"], sd["clip.audio.v.patch_embed.proj.bias"],
                 stride=(AST_STRIDE, AST_STRIDE))
    x = x.flatten(2).transpose(1, 2)  # [B, 12*101, H], freq-major
    b = x.shape[0]
    cls = sd["clip.audio.v.cls_token"].expand(b, -1, -1)
    dist = sd["clip.audio.v.dist_token"].expand(b, -1, -1)
    x = torch.cat([cls, dist, x], dim=1) + sd["clip.audio.v.pos_embed"]
    for k in range(_count(sd, "clip.audio.v.blocks.{i}.norm1.weight")):
        x = _ast_block(sd, f"clip.audio.v.blocks.{k}", x, heads)
    return torch.cat([(x[:, :1] + x[:, 1:2]) / 2, x[:, 2:]], dim=1)


def encode_audio(sd: StateDict, fbank: Tensor, heads: int = TINY_HEADS.audio) -> Tensor:
    """``clip.encode_audio``: AST tokens -> v.norm (eps 1e-6) -> @ audio_projection, [B, 1213, D]."""
    tokens = _ln(sd, "clip.audio.v.norm", ast_tokens(sd, fbank, heads), AST_LN_EPS)
    return tokens @ sd["clip.audio_projection"]


# ---------------------------------------------------------------------------------------------- new modules
def audio_resampler(sd: StateDict, audio: Tensor, heads: int = TINY_HEADS.new_modules) -> Tensor:
    """§2.3 Audio_Resampler: queries = query_tokensᵀ + query pos; per block self-attn -> cross-attn to
    ln_3(audio) with the same ln_3 on the queries -> MLP; LN eps 1e-12; no final LN. Returns [B, Q, D]."""
    queries = sd["query_tokens"].t()  # stored [D, Q]
    queries = queries + sd["query_position_embeddings.weight"][: queries.shape[0]]
    x = queries.unsqueeze(0).expand(audio.shape[0], -1, -1)
    for i in range(_count(sd, "Audio_Resampler.resblocks.{i}.ln_1.weight")):
        p = f"Audio_Resampler.resblocks.{i}"
        h = _ln(sd, f"{p}.ln_1", x, NEW_MODULE_LN_EPS)
        x = x + _mha(sd, f"{p}.attn", h, h, heads)  # the all-zero mask is omitted
        q = _ln(sd, f"{p}.ln_3", x, NEW_MODULE_LN_EPS)
        m = _ln(sd, f"{p}.ln_3", audio, NEW_MODULE_LN_EPS)
        x = x + _mha(sd, f"{p}.cross_attn", q, m, heads)
        x = x + _mlp(sd, f"{p}.mlp", _ln(sd, f"{p}.ln_2", x, NEW_MODULE_LN_EPS))
    return x


def _gate(sd: StateDict, prefix: str, tag: str, gate_input: Tensor) -> Tensor:
    """tanh(proj(QuickGELU(fc(g_in)))), bias-free: one scalar per video, [B, 1]."""
    h = quick_gelu(_linear(gate_input, sd[f"{prefix}.{tag}_fc.weight"]))
    return torch.tanh(_linear(h, sd[f"{prefix}.{tag}_proj.weight"]))


def gated_fusion(
    sd: StateDict,
    name: str,
    frames: Tensor,
    memory: Tensor,
    video_mask: Tensor,
    heads: int = TINY_HEADS.new_modules,
    row_offset_mask: bool = False,
) -> tuple[Tensor, Tensor, Tensor]:
    """§2.5 Transformer_Gate ``name`` (transformerClip / transformerClip_ASR).

    Per block: gates from the block input ([mean over all frames; mean over all memory rows]);
    x += α·CrossAttn(ln_3(x), raw memory); x += β·cross_ff(ln_4(x)); x += SelfAttn(ln_1(x)) unmasked;
    x += MLP(ln_2(x)). With ``row_offset_mask`` the authors' −1e4 offset on padded query rows is added
    to the cross-attention scores; it is constant along the key axis, so it cancels in the softmax.
    Returns the fused frames [B, T, D] and the gates α, β as [B, layers].
    """
    offset = None
    if row_offset_mask:
        ext = (1.0 - video_mask.float()) * -1000000.0 / 100.0  # [B, T]
        offset = ext[:, None, :, None]  # broadcast over heads and keys
    x = frames
    alphas, betas = [], []
    for i in range(_count(sd, f"{name}.resblocks.{{i}}.ln_1.weight")):
        p = f"{name}.resblocks.{i}"
        gate_input = torch.cat([x.mean(dim=1), memory.mean(dim=1)], dim=-1)
        alpha = _gate(sd, f"{p}.attn_gate", "ag", gate_input)
        beta = _gate(sd, f"{p}.ff_gate", "fg", gate_input)
        q = _ln(sd, f"{p}.ln_3", x, NEW_MODULE_LN_EPS)
        x = x + alpha[:, :, None] * _mha(sd, f"{p}.cross_attn", q, memory, heads, offset)
        h = _ln(sd, f"{p}.ln_4", x, NEW_MODULE_LN_EPS)
        h = _linear(quick_gelu(_linear(h, sd[f"{p}.cross_ff.cross_fc.weight"])), sd[f"{p}.cross_ff.cross_proj.weight"])
        x = x + beta[:, :, None] * h
        h = _ln(sd, f"{p}.ln_1", x, NEW_MODULE_LN_EPS)
        x = x + _mha(sd, f"{p}.attn", h, h, heads)
        x = x + _mlp(sd, f"{p}.mlp", _ln(sd, f"{p}.ln_2", x, NEW_MODULE_LN_EPS))
        alphas.append(alpha.view(-1))
        betas.append(beta.view(-1))
    return x, torch.stack(alphas, dim=1), torch.stack(betas, dim=1)


# ---------------------------------------------------------------------------------------------- video side
@dataclass
class AuthorsVideo:
    """Every intermediate of the authors' video side that is worth comparing."""

    frames: Tensor  # CLIP CLS features F, [B, T, D]
    visual: Tensor  # V = F + frame_position_embeddings, [B, T, D]
    audio: Tensor  # A = encode_audio, [B, 1213, D]
    audio_tokens: Tensor  # qa, [B, Q, D]
    speech: Tensor  # S, [B, L, D]
    av: Tensor
    sv: Tensor
    av_gates: Tensor  # [B, layers, 2] (α, β)
    sv_gates: Tensor
    fused: Tensor  # Ẑ, per-frame normalised, [B, T, D]
    pooled: Tensor  # z̄, normalised masked mean, [B, D]


def authors_video(
    sd: StateDict,
    pixels: Tensor,
    video_mask: Tensor,
    fbank: Tensor,
    asr_ids: Tensor,
    heads: Heads = TINY_HEADS,
    row_offset_mask: bool = False,
) -> AuthorsVideo:
    """§2.2-§2.6: Z = 0.5·AV + 0.5·SV + V, Ẑ per frame, z̄ = normalised masked mean (denominator ≥ 1)."""
    b, t = pixels.shape[:2]
    frames = encode_image(sd, pixels.flatten(0, 1), heads.vision).view(b, t, -1)
    visual = frames + sd["frame_position_embeddings.weight"][:t]
    audio = encode_audio(sd, fbank, heads.audio)
    qa = audio_resampler(sd, audio, heads.new_modules)
    speech = encode_text_hidden(sd, asr_ids, heads.text)
    av, av_a, av_b = gated_fusion(sd, "transformerClip", visual, qa, video_mask, heads.new_modules, row_offset_mask)
    sv, sv_a, sv_b = gated_fusion(sd, "transformerClip_ASR", visual, speech, video_mask, heads.new_modules,
                                  row_offset_mask)
    fused = l2_normalize(0.5 * av + 0.5 * sv + visual)
    weights = video_mask.float().unsqueeze(-1)
    mean = (fused * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)
    return AuthorsVideo(frames, visual, audio, qa, speech, av, sv, torch.stack([av_a, av_b], -1),
                        torch.stack([sv_a, sv_b], -1), fused, l2_normalize(mean))


def authors_logits(
    sd: StateDict, text: Tensor, fused: Tensor, video_mask: Tensor, pooled: Tensor, temperature: float = 1.0
) -> Tensor:
    """§2.7 in the authors' exp-sum form: ((1/λ)·log Σ_f m_f·exp(λ·s·⟨t̂, Ẑ_f⟩) + s·⟨t̂, z̄⟩) / 2, [Nt, Nv]."""
    scale = sd["clip.logit_scale"].exp()
    t_hat = l2_normalize(text)
    cos = torch.einsum("id,jfd->ijf", t_hat, fused)
    local = torch.log((torch.exp(temperature * scale * cos) * video_mask.float()[None]).sum(dim=-1)) / temperature
    global_term = scale * t_hat @ pooled.t()
    return (local + global_term) / 2


def authors_similarity(
    sd: StateDict,
    caption_ids: Tensor,
    pixels: Tensor,
    video_mask: Tensor,
    fbank: Tensor,
    asr_ids: Tensor,
    heads: Heads = TINY_HEADS,
    temperature: float = 1.0,
    row_offset_mask: bool = False,
) -> Tensor:
    """Caption ids [Nt, L], video [Nv, T, 3, S, S] + mask [Nv, T], fbank [Nv, 1024, 128], ASR ids [Nv, L]
    -> logits [Nt, Nv] (texts are rows)."""
    video = authors_video(sd, pixels, video_mask, fbank, asr_ids, heads, row_offset_mask)
    text = encode_text(sd, caption_ids, heads.text)
    return authors_logits(sd, text, video.fused, video_mask, video.pooled, temperature)
