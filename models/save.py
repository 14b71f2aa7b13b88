"""SAVEModel: CLIP frames + audio tokens + speech tokens, fused into a query-independent video representation.

Two modes, chosen by whether a trained SAVE checkpoint was loaded (``fusion_enabled``):
- fused (trained checkpoint): Z = 0.5*AV + 0.5*SV + V, normalised per frame, scored with SAVE's
  LSE + global similarity;
- zero-shot (no checkpoint): the untrained fusion would only add noise, so the video is the plain
  CLIP frame features (no position embedding, no fusion) scored as zero-shot CLIP.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import CLIPModel

from models.config import ModelMode, SAVEConfig
from models.encoders import ASTAudioEncoder, AudioEncoder, ClipEncoders
from models.fusion import AudioResampler, GatedFusionTransformer
from models.similarity import masked_mean_pool, save_similarity, zero_shot_similarity

# clip.logit_scale is clamped to ln(100) after every optimiser step (reference §5.3).
MAX_LOGIT_SCALE = float(torch.log(torch.tensor(100.0)))


@dataclass
class ModelInfo:
    """What produced a model's embeddings: recorded next to every stored embedding."""

    config_name: str
    clip_source: str | None
    audio_source: str | None
    fusion_enabled: bool
    checkpoint: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def mode(self) -> ModelMode:
        return ModelMode.SAVE_FUSED if self.fusion_enabled else ModelMode.ZERO_SHOT_CLIP

    def version(self) -> str:
        """Stable identifier of the embedding space (changes whenever embeddings would)."""
        return f"{self.config_name}|clip={self.clip_source}|audio={self.audio_source}|ckpt={self.checkpoint}"

    def to_dict(self) -> dict[str, Any]:
        return {"config_name": self.config_name, "clip_source": self.clip_source,
                "audio_source": self.audio_source, "fusion_enabled": self.fusion_enabled,
                "checkpoint": self.checkpoint, "mode": self.mode, "notes": list(self.notes)}


@dataclass
class VideoEmbedding:
    """What the index stores per video: normalised per-frame features, their mask and the pooled vector."""

    frames: Tensor  # [B, T, D], L2-normalised per frame
    mask: Tensor  # [B, T], 1 for real frames
    pooled: Tensor  # [B, D], L2-normalised masked mean of ``frames``

    def to(self, device: torch.device | str) -> VideoEmbedding:
        return VideoEmbedding(self.frames.to(device), self.mask.to(device), self.pooled.to(device))

    def __len__(self) -> int:
        return self.frames.shape[0]


@dataclass
class VideoFeatures:
    """Intermediate video-side tensors that training needs besides the final embedding."""

    embedding: VideoEmbedding
    visual: Tensor  # V = CLIP frame features (+ frame position embeddings in fused mode), [B, T, D]
    audio_tokens: Tensor | None  # resampler output qa, [B, Q, D]
    audio_gates: Tensor | None  # [B, layers, 2]
    speech_gates: Tensor | None


class SAVEModel(nn.Module):
    def __init__(self, config: SAVEConfig, clip: CLIPModel, audio_encoder: AudioEncoder) -> None:
        super().__init__()
        self.config = config
        width = config.embed_dim
        heads = config.heads
        self.clip = ClipEncoders(clip)
        self.audio_encoder = audio_encoder
        self.audio_projection = nn.Linear(audio_encoder.hidden_size, width, bias=False)
        self.query_tokens = nn.Parameter(torch.empty(config.num_audio_queries, width))
        self.query_position_embeddings = nn.Embedding(config.num_audio_queries, width)
        self.frame_position_embeddings = nn.Embedding(config.clip.text_config["max_position_embeddings"], width)
        self.audio_resampler = AudioResampler(width, heads, config.resampler_layers)
        self.audio_fusion = GatedFusionTransformer(width, heads, config.fusion_layers)
        self.speech_fusion = GatedFusionTransformer(width, heads, config.fusion_layers)
        # False until a trained SAVE checkpoint is loaded or training starts (see module docstring).
        self.fusion_enabled = False
        self.info = ModelInfo(config.name, None, None, fusion_enabled=False)
        self.init_new_modules()

    # ------------------------------------------------------------------ initialisation
    def new_modules(self) -> list[nn.Module]:
        return [self.query_position_embeddings, self.frame_position_embeddings, self.audio_resampler,
                self.audio_fusion, self.speech_fusion]

    @torch.no_grad()
    def init_new_modules(self) -> None:
        """The authors' initialisation (reference §1.5): N(0, 0.02) Linear/Embedding weights, zero biases,
        xavier MHA in-projections, unit LayerNorms, orthogonal queries, then CLIP text layers 0..3 copied into
        the self-attention/MLP of all three new transformers and the CLIP text positional embedding into
        the frame position embeddings."""
        for module in self.new_modules():
            for sub in module.modules():
                if isinstance(sub, nn.Linear | nn.Embedding):
                    sub.weight.normal_(0.0, 0.02)
                    bias = getattr(sub, "bias", None)
                    if bias is not None:
                        bias.zero_()
                elif isinstance(sub, nn.MultiheadAttention):
                    nn.init.xavier_uniform_(sub.in_proj_weight)
                    sub.in_proj_bias.zero_()
                    sub.out_proj.weight.normal_(0.0, 0.02)
                    sub.out_proj.bias.zero_()
                elif isinstance(sub, nn.LayerNorm):
                    sub.weight.fill_(1.0)
                    sub.bias.zero_()
        nn.init.orthogonal_(self.query_tokens)
        self.audio_projection.weight.normal_(0.0, self.audio_encoder.hidden_size**-0.5)
        self.copy_clip_text_layers()

    @torch.no_grad()
    def copy_clip_text_layers(self) -> None:
        text = self.clip.model.text_model
        self.frame_position_embeddings.weight.copy_(text.embeddings.position_embedding.weight)
        targets = [(self.audio_fusion.resblocks, self.config.fusion_layers),
                   (self.speech_fusion.resblocks, self.config.fusion_layers),
                   (self.audio_resampler.resblocks, self.config.resampler_layers)]
        for blocks, count in targets:
            for j in range(count):
                src = text.encoder.layers[j]
                dst: Any = blocks[j]  # a ResamplerBlock or GatedFusionBlock: attn, ln_1, ln_2, mlp
                attn = src.self_attn
                dst.attn.in_proj_weight.copy_(torch.cat([attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight]))
                dst.attn.in_proj_bias.copy_(torch.cat([attn.q_proj.bias, attn.k_proj.bias, attn.v_proj.bias]))
                dst.attn.out_proj.load_state_dict(attn.out_proj.state_dict())
                dst.ln_1.load_state_dict(src.layer_norm1.state_dict())
                dst.ln_2.load_state_dict(src.layer_norm2.state_dict())
                dst.mlp.c_fc.load_state_dict(src.mlp.fc1.state_dict())
                dst.mlp.c_proj.load_state_dict(src.mlp.fc2.state_dict())

    # ------------------------------------------------------------------ properties
    @property
    def logit_scale(self) -> nn.Parameter:
        return self.clip.logit_scale

    @property
    def audio_input_kind(self) -> str:
        return self.audio_encoder.input_kind

    @property
    def device(self) -> torch.device:
        return self.query_tokens.device

    # ------------------------------------------------------------------ encoders
    def encode_text(self, input_ids: Tensor) -> Tensor:
        """Query side: [N, L] token ids -> [N, D] CLIP EOT features (not normalised)."""
        return self.clip.encode_text(input_ids).float()

    def frame_features(self, pixel_values: Tensor) -> Tensor:
        """[B, T, 3, S, S] -> [B, T, D] CLIP CLS features per frame (not normalised)."""
        b, t = pixel_values.shape[:2]
        feats = self.clip.encode_images(pixel_values.flatten(0, 1))
        return feats.float().view(b, t, -1)

    def audio_tokens(self, audio: Tensor) -> Tensor:
        """Audio encoder -> projection -> resampler: [B, Q, D] audio tokens."""
        encoded = self.audio_encoder(audio)
        memory = self.audio_projection(encoded).float()
        positions = torch.arange(self.config.num_audio_queries, device=memory.device)
        queries = (self.query_tokens + self.query_position_embeddings(positions)).unsqueeze(0)
        return self.audio_resampler(queries.expand(memory.shape[0], -1, -1), memory)

    def speech_tokens(self, speech_ids: Tensor) -> Tensor:
        """Transcript ids [B, L] -> all L projected CLIP text states [B, L, D] (pads included, as the authors)."""
        return self.clip.encode_tokens(speech_ids).float()

    def empty_audio(self, batch: int) -> Tensor:
        """Missing audio is fed as zeros (not masked), as the authors do (reference §2.3, §6.5)."""
        cfg = self.audio_encoder.model.config
        if isinstance(self.audio_encoder, ASTAudioEncoder):
            shape = (batch, cfg.max_length, cfg.num_mel_bins)
        else:
            shape = (batch, cfg.num_mel_bins, 2 * cfg.max_source_positions)
        return torch.zeros(shape, device=self.device)

    def empty_speech(self, batch: int) -> Tensor:
        return torch.zeros(batch, self.config.max_words, dtype=torch.long, device=self.device)

    def video_features(
        self,
        pixel_values: Tensor,
        video_mask: Tensor,
        audio: Tensor | None = None,
        speech_ids: Tensor | None = None,
    ) -> VideoFeatures:
        """Everything the video side computes; ``encode_video`` keeps only the embedding."""
        clip_frames = self.frame_features(pixel_values)
        batch = clip_frames.shape[0]
        if not self.fusion_enabled:
            frames = F.normalize(clip_frames, dim=-1)
            embedding = VideoEmbedding(frames, video_mask, masked_mean_pool(frames, video_mask))
            return VideoFeatures(embedding, clip_frames, None, None, None)
        positions = torch.arange(clip_frames.shape[1], device=clip_frames.device)
        visual = clip_frames + self.frame_position_embeddings(positions)
        audio = self.empty_audio(batch) if audio is None else audio
        speech_ids = self.empty_speech(batch) if speech_ids is None else speech_ids
        qa = self.audio_tokens(audio)
        av, av_ag, av_fg = self.audio_fusion(visual, qa)
        sv, sv_ag, sv_fg = self.speech_fusion(visual, self.speech_tokens(speech_ids))
        # Code-faithful fusion (reference §2.6): AV and SV already carry V, which is added once more.
        fused = F.normalize(0.5 * av + 0.5 * sv + visual, dim=-1)
        embedding = VideoEmbedding(fused, video_mask, masked_mean_pool(fused, video_mask))
        return VideoFeatures(embedding, visual, qa, torch.stack([av_ag, av_fg], -1), torch.stack([sv_ag, sv_fg], -1))

    def encode_video(
        self,
        pixel_values: Tensor,
        video_mask: Tensor,
        audio: Tensor | None = None,
        speech_ids: Tensor | None = None,
    ) -> VideoEmbedding:
        """Video side, computed once per video and independent of any query (what the index stores)."""
        return self.video_features(pixel_values, video_mask, audio, speech_ids).embedding

    def similarity(self, text_features: Tensor, video: VideoEmbedding) -> Tensor:
        """[Nt, Nv] logits; rows are texts, columns videos."""
        scale = self.logit_scale.exp()
        if not self.fusion_enabled:
            return zero_shot_similarity(text_features, video.pooled, scale)
        return save_similarity(text_features, video.frames, video.mask, video.pooled, scale,
                               self.config.temperature)

    @torch.no_grad()
    def clamp_logit_scale(self) -> None:
        self.logit_scale.clamp_(max=MAX_LOGIT_SCALE)

    def forward(
        self,
        input_ids: Tensor,
        pixel_values: Tensor,
        video_mask: Tensor,
        audio: Tensor | None = None,
        speech_ids: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """Training forward: logits plus what the margin and the distillation need (reference §3)."""
        text = self.encode_text(input_ids)
        feats = self.video_features(pixel_values, video_mask, audio, speech_ids)
        logits = self.similarity(text, feats.embedding)
        visual_norm = F.normalize(feats.visual, dim=-1)
        out = {
            "logits": logits,
            "logit_scale": self.logit_scale.exp(),
            "text_features": F.normalize(text, dim=-1),
            "video_global": masked_mean_pool(visual_norm, video_mask),
            "frame_features": visual_norm,
        }
        if feats.audio_tokens is not None:
            out["audio_tokens"] = feats.audio_tokens
        return out
