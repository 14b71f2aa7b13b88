"""Factory functions: config -> SAVEModel, with weights from a hub id, a local folder, our checkpoint or
the authors' checkpoint (open_clip's ``create_model`` pattern)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from models.config import SAVEConfig, get_config
from models.convert import load_authors_checkpoint
from models.pretrained import build_audio_encoder, build_clip, freeze_audio_encoder
from models.save import ModelInfo, SAVEModel

log = logging.getLogger(__name__)

CHECKPOINT_WEIGHTS = "model.safetensors"
CHECKPOINT_CONFIG = "config.json"
CHECKPOINT_METADATA = "metadata.json"
FORMAT_VERSION = 1


ZERO_SHOT_NOTE = ("no trained SAVE checkpoint loaded: the video representation is the plain CLIP frame features "
                  "(no position embedding, no fusion) and scores are zero-shot CLIP; audio and speech do not "
                  "change visual scores until a trained checkpoint is loaded")


def create_model(
    config: str | Path | SAVEConfig,
    pretrained: bool = True,
    clip_source: str | None = None,
    audio_source: str | None = None,
    device: str | torch.device | None = None,
) -> SAVEModel:
    """Build a SAVE model from a config. With ``pretrained`` the CLIP and audio weights come from their
    sources (hub id or local folder; ``clip_source``/``audio_source`` override the config). The new
    modules are initialised as the authors do; no SAVE checkpoint means zero-shot CLIP mode."""
    cfg = config if isinstance(config, SAVEConfig) else get_config(config)
    cfg = cfg.with_sources(clip=clip_source if clip_source is not None else cfg.clip.source,
                           audio=audio_source if audio_source is not None else cfg.audio.source)
    clip = build_clip(cfg.clip, pretrained)
    audio = build_audio_encoder(cfg.audio, pretrained)
    model = SAVEModel(cfg, clip, audio)
    freeze_audio_encoder(model)
    model.info = ModelInfo(cfg.name, cfg.clip.source if pretrained else None,
                           cfg.audio.source if pretrained else None, fusion_enabled=False, notes=[ZERO_SHOT_NOTE])
    model.eval()
    return model.to(device) if device is not None else model


def save_checkpoint(model: SAVEModel, folder: str | Path, extra: dict[str, Any] | None = None) -> Path:
    """Write our checkpoint folder: config.json, model.safetensors (every weight), metadata.json."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / CHECKPOINT_CONFIG).write_text(json.dumps(model.config.to_dict(), indent=2))
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(state, str(folder / CHECKPOINT_WEIGHTS))
    info = getattr(model, "info", None)
    metadata = {"format_version": FORMAT_VERSION, "fusion_enabled": bool(model.fusion_enabled),
                "model": info.to_dict() if info else None, **(extra or {})}
    (folder / CHECKPOINT_METADATA).write_text(json.dumps(metadata, indent=2))
    return folder


def is_checkpoint(path: str | Path) -> bool:
    path = Path(path)
    return path.is_dir() and (path / CHECKPOINT_WEIGHTS).is_file() and (path / CHECKPOINT_CONFIG).is_file()


def load_checkpoint(folder: str | Path, device: str | torch.device | None = None) -> SAVEModel:
    """Load a checkpoint written by ``save_checkpoint`` (strict: every key must match)."""
    folder = Path(folder)
    if not is_checkpoint(folder):
        raise FileNotFoundError(f"{folder} is not a SAVE checkpoint folder (needs {CHECKPOINT_CONFIG} and "
                                f"{CHECKPOINT_WEIGHTS})")
    cfg = SAVEConfig.from_dict(json.loads((folder / CHECKPOINT_CONFIG).read_text()))
    metadata_path = folder / CHECKPOINT_METADATA
    metadata = json.loads(metadata_path.read_text()) if metadata_path.exists() else {}
    model = SAVEModel(cfg, build_clip(cfg.clip, False), build_audio_encoder(cfg.audio, False))
    missing, unexpected = model.load_state_dict(load_file(str(folder / CHECKPOINT_WEIGHTS)), strict=False)
    if missing or unexpected:
        raise ValueError(f"checkpoint {folder} does not match config {cfg.name!r}: "
                         f"missing {missing[:5]}, unexpected {unexpected[:5]}")
    freeze_audio_encoder(model)
    model.fusion_enabled = bool(metadata.get("fusion_enabled", True))
    source = metadata.get("model") or {}
    model.info = ModelInfo(cfg.name, source.get("clip_source"), source.get("audio_source"),
                           model.fusion_enabled, checkpoint=str(folder.resolve()))
    model.eval()
    return model.to(device) if device is not None else model


def load_model(
    spec: str | Path,
    clip_source: str | None = None,
    audio_source: str | None = None,
    device: str | torch.device | None = None,
) -> SAVEModel:
    """One entry point for every way of naming a model: our checkpoint folder, the authors'
    ``pytorch_model.bin``, or a config name / JSON (pretrained encoders, zero-shot mode)."""
    path = Path(spec)
    if is_checkpoint(path):
        return load_checkpoint(path, device)
    if path.is_file() and path.suffix in (".bin", ".pt", ".pth") or path.name.startswith("pytorch_model.bin"):
        return load_authors_checkpoint(path, device=device)
    return create_model(spec, pretrained=True, clip_source=clip_source, audio_source=audio_source, device=device)
