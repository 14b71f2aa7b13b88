"""SAVE architecture configs as data (``models/configs/*.json``), like open_clip's model configs.

A config fixes the architecture completely (every sub-model's dimensions are written out), so a
model can be built with random weights without any hub access, and names where pretrained weights
come from (``source``: a hub id, a local folder, ``bundled:...`` or ``null`` for random).
"""

from __future__ import annotations

import copy
import json
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from importlib import resources
from pathlib import Path
from typing import Any, Literal

AudioEncoderType = Literal["ast", "whisper"]



class ModelMode(StrEnum):
    """What a video embedding is: a trained SAVE model's (fused), plain CLIP frames (no checkpoint), or none
    (``speech``: no visual weights; transcripts alone are searched)."""

    SAVE_FUSED = "save-fused"
    ZERO_SHOT_CLIP = "zero-shot-clip"
    SPEECH = "speech"


@dataclass
class ClipSpec:
    """CLIP towers: ``text_config`` / ``vision_config`` are transformers CLIP sub-config fields."""

    source: str | None
    projection_dim: int
    text_config: dict[str, Any]
    vision_config: dict[str, Any]


@dataclass
class AudioSpec:
    """Audio encoder: ``ast`` (transformers ASTModel) or ``whisper`` (transformers WhisperEncoder)."""

    type: AudioEncoderType
    source: str | None
    config: dict[str, Any]


@dataclass
class SAVEConfig:
    name: str
    embed_dim: int
    clip: ClipSpec
    audio: AudioSpec
    num_frames: int = 12
    max_words: int = 32
    num_audio_queries: int = 12
    fusion_layers: int = 4
    resampler_layers: int = 4
    temperature: float = 1.0
    description: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        text_width = self.clip.text_config["hidden_size"]
        if self.clip.projection_dim != self.embed_dim or text_width != self.embed_dim:
            # The fusion layers are initialised from CLIP text layers and run on projected features,
            # so the text width, the projection and the fusion width must coincide (as in ViT-B).
            raise ValueError(
                f"config {self.name!r}: embed_dim ({self.embed_dim}), clip.projection_dim "
                f"({self.clip.projection_dim}) and the CLIP text width ({text_width}) must be equal"
            )
        if self.fusion_layers > self.clip.text_config["num_hidden_layers"]:
            raise ValueError(f"config {self.name!r}: fusion_layers exceeds the CLIP text layers it copies")
        if self.audio.type not in ("ast", "whisper"):
            raise ValueError(f"config {self.name!r}: unknown audio encoder type {self.audio.type!r}")

    @property
    def image_size(self) -> int:
        return int(self.clip.vision_config.get("image_size", 224))

    @property
    def heads(self) -> int:
        """Heads of the new transformers: the CLIP text heads (width // 64 = 8 in the authors' code), so the
        layers copied from CLIP's text transformer compute the same function."""
        return int(self.clip.text_config["num_attention_heads"])

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SAVEConfig:
        data = copy.deepcopy(data)
        known = {f for f in cls.__dataclass_fields__}
        extra = {k: v for k, v in data.items() if k not in known}
        kwargs = {k: v for k, v in data.items() if k in known}
        kwargs["clip"] = ClipSpec(**kwargs["clip"])
        kwargs["audio"] = AudioSpec(**kwargs["audio"])
        kwargs.setdefault("extra", {}).update(extra)
        return cls(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def with_sources(self, clip: str | None = ..., audio: str | None = ...) -> SAVEConfig:  # type: ignore[assignment]
        """A copy whose weight sources are replaced (e.g. a local folder instead of a hub id)."""
        new = SAVEConfig.from_dict(self.to_dict())
        if clip is not ...:
            new.clip.source = clip
        if audio is not ...:
            new.audio.source = audio
        return new


def list_configs() -> list[str]:
    """Names of the configs shipped with the package."""
    folder = resources.files("models") / "configs"
    return sorted(p.name[: -len(".json")] for p in folder.iterdir() if p.name.endswith(".json"))


def get_config(name_or_path: str | Path) -> SAVEConfig:
    """Load a shipped config by name (``save-b32``) or any config JSON file by path."""
    path = Path(name_or_path)
    if path.suffix == ".json" and path.exists():
        return SAVEConfig.from_dict(json.loads(path.read_text()))
    candidate = resources.files("models") / "configs" / f"{name_or_path}.json"
    if not candidate.is_file():
        raise ValueError(f"unknown model config {str(name_or_path)!r}; available: {', '.join(list_configs())}")
    return SAVEConfig.from_dict(json.loads(candidate.read_text()))
