"""Pretrained encoders on ``transformers`` classes, so hub ids and local folders both load.

Each wrapper returns what SAVE needs from its backbone and nothing more:
- ``ClipEncoders``: per-frame CLS features, query EOT features, and ALL token states for speech.
- ``ASTAudioEncoder``: the authors' 1213 AST tokens ((cls+dist)/2 then the 1212 patches, LayerNorm last).
- ``WhisperAudioEncoder``: the Whisper encoder's 1500 states (SAVE-2).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from transformers import ASTConfig, ASTModel, CLIPConfig, CLIPModel, WhisperConfig
from transformers.models.whisper.modeling_whisper import WhisperEncoder

from models.config import AudioSpec, ClipSpec


def clip_config_from_spec(spec: ClipSpec) -> CLIPConfig:
    return CLIPConfig(
        text_config=dict(spec.text_config),
        vision_config={**spec.vision_config, "projection_dim": spec.projection_dim},
        projection_dim=spec.projection_dim,
    )


class ClipEncoders(nn.Module):
    """CLIP image and text towers (transformers ``CLIPModel``) used the way the authors use them."""

    def __init__(self, model: CLIPModel) -> None:
        super().__init__()
        self.model = model

    @property
    def logit_scale(self) -> nn.Parameter:
        return self.model.logit_scale

    def encode_images(self, pixel_values: Tensor) -> Tensor:
        """[N, 3, S, S] -> [N, D]: post-LN CLS token projected (the authors apply ln_post to all tokens
        and take token 0, which is the same)."""
        vision = self.model.vision_model(pixel_values=pixel_values)
        return self.model.visual_projection(vision.pooler_output)

    def encode_tokens(self, input_ids: Tensor) -> Tensor:
        """[N, L] -> [N, L, D]: every position after ``ln_final`` and the text projection.

        No padding mask, only the causal one, exactly like OpenAI CLIP: pads (id 0) are real tokens
        to this encoder and the authors' speech branch attends to them (reference §2.4).
        """
        hidden = self.model.text_model(input_ids=input_ids).last_hidden_state
        return self.model.text_projection(hidden)

    def encode_text(self, input_ids: Tensor) -> Tensor:
        """[N, L] -> [N, D]: the state at argmax(input_ids), the EOT token (id 49407), as in OpenAI CLIP."""
        hidden = self.model.text_model(input_ids=input_ids).last_hidden_state
        eot = hidden[torch.arange(hidden.shape[0], device=hidden.device), input_ids.argmax(dim=-1)]
        return self.model.text_projection(eot)


def ast_config_from_spec(spec: AudioSpec) -> ASTConfig:
    return ASTConfig(**spec.config)


class ASTAudioEncoder(nn.Module):
    """AST tokens as the authors' ``clip.encode_audio`` builds them, before the audio projection.

    transformers' ASTModel normalises every token and then averages cls/dist; the authors average
    cls and dist first and normalise afterwards (§1.2), so the layers are run here directly.
    Input: fbank [B, 1024, 128] (time, mel). Output: [B, 1 + patches, hidden].
    """

    input_kind = "fbank"

    def __init__(self, model: ASTModel) -> None:
        super().__init__()
        self.model = model

    @property
    def hidden_size(self) -> int:
        return int(self.model.config.hidden_size)

    def forward(self, fbank: Tensor) -> Tensor:
        hidden = self.model.embeddings(fbank)
        for layer in self.model.layers:
            hidden = layer(hidden, None)
            if isinstance(hidden, tuple):
                hidden = hidden[0]
        tokens = torch.cat([(hidden[:, :1] + hidden[:, 1:2]) / 2, hidden[:, 2:]], dim=1)
        return self.model.layernorm(tokens)


def whisper_config_from_spec(spec: AudioSpec) -> WhisperConfig:
    cfg: dict[str, Any] = dict(spec.config)
    return WhisperConfig(**cfg)


class WhisperAudioEncoder(nn.Module):
    """Whisper encoder states (SAVE-2). Input: log-mel [B, n_mels, 3000]. Output: [B, 1500, d_model].

    The encoder's own final LayerNorm plays the role of AST's ``v.norm``.
    """

    input_kind = "whisper_mel"

    def __init__(self, encoder: WhisperEncoder) -> None:
        super().__init__()
        self.model = encoder

    @property
    def hidden_size(self) -> int:
        return int(self.model.config.d_model)

    def forward(self, features: Tensor) -> Tensor:
        return self.model(input_features=features).last_hidden_state


AudioEncoder = ASTAudioEncoder | WhisperAudioEncoder
