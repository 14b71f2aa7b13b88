"""Factory functions: config -> SAVEModel, with weights from a hub id, a local folder, our checkpoint or
the authors' checkpoint (open_clip's ``create_model`` pattern)."""

from __future__ import annotations

import json
import logging
import os
import socket
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from transformers import ASTModel, CLIPModel, WhisperModel
from transformers.models.whisper.modeling_whisper import WhisperEncoder

from .config import AudioSpec, ClipSpec, SAVEConfig, get_config
from .encoders import (
    ASTAudioEncoder,
    AudioEncoder,
    WhisperAudioEncoder,
    ast_config_from_spec,
    clip_config_from_spec,
    whisper_config_from_spec,
)
from .save import ModelInfo, SAVEModel

log = logging.getLogger(__name__)

CHECKPOINT_WEIGHTS = "model.safetensors"
CHECKPOINT_CONFIG = "config.json"
CHECKPOINT_METADATA = "metadata.json"
FORMAT_VERSION = 1


ZERO_SHOT_NOTE = ("no trained SAVE checkpoint loaded: the video representation is the plain CLIP frame features "
                  "(no position embedding, no fusion) and scores are zero-shot CLIP; audio and speech do not "
                  "change visual scores until a trained checkpoint is loaded")


class WeightsUnavailableError(RuntimeError):
    """Pretrained weights could not be loaded (no hub access, missing folder, wrong architecture)."""


def _check_dims(kind: str, source: str, expected: dict[str, Any], loaded: Any) -> None:
    wrong = {k: (v, getattr(loaded, k, None)) for k, v in expected.items()
             if k in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                      "patch_size", "image_size", "d_model", "encoder_layers", "num_mel_bins")
             and getattr(loaded, k, v) != v}
    if wrong:
        details = ", ".join(f"{k}: config {a} vs weights {b}" for k, (a, b) in wrong.items())
        raise WeightsUnavailableError(f"{kind} weights at {source!r} do not match the model config ({details})")


def _hub_reachable(host: str = "huggingface.co", timeout: float = 3.0) -> bool:
    """A quick look before asking the hub: without it, transformers retries for ~30 s before failing."""
    endpoint = os.environ.get("HF_ENDPOINT", f"https://{host}")
    host = endpoint.split("://", 1)[-1].split("/", 1)[0].split(":", 1)[0]
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def from_pretrained(cls: Any, source: str, **kwargs: Any) -> Any:
    """``cls.from_pretrained`` for a hub id or a local folder: the cache first, then the hub if it answers."""
    if Path(source).expanduser().is_dir():
        return cls.from_pretrained(str(Path(source).expanduser()), **kwargs)
    try:
        return cls.from_pretrained(source, local_files_only=True, **kwargs)
    except OSError:
        if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes") or not _hub_reachable():
            raise OSError(f"{source!r} is not a local folder, not in the Hugging Face cache, and the hub "
                          "cannot be reached (offline?)") from None
    return cls.from_pretrained(source, **kwargs)


def build_clip(spec: ClipSpec, pretrained: bool) -> CLIPModel:
    if not (pretrained and spec.source):
        return CLIPModel(clip_config_from_spec(spec))
    try:
        model = from_pretrained(CLIPModel, spec.source)
    except (OSError, ValueError) as exc:
        raise WeightsUnavailableError(f"cannot load CLIP weights from {spec.source!r}: {exc}") from exc
    _check_dims("CLIP text", spec.source, spec.text_config, model.config.text_config)
    _check_dims("CLIP vision", spec.source, spec.vision_config, model.config.vision_config)
    return model


def _whisper_encoder_from_source(source: str) -> WhisperEncoder:
    from .bundled import resolve_whisper_model

    resolved = resolve_whisper_model(source)
    folder = Path(resolved)
    if (folder / "model.bin").is_file():  # a CTranslate2 (faster-whisper) model folder
        from .ctranslate2_whisper import whisper_encoder_from_ct2

        return whisper_encoder_from_ct2(folder)
    return from_pretrained(WhisperModel, resolved).get_encoder()


def build_audio_encoder(spec: AudioSpec, pretrained: bool) -> AudioEncoder:
    load = pretrained and spec.source
    if spec.type == "ast":
        if not load:
            return ASTAudioEncoder(ASTModel(ast_config_from_spec(spec)))
        try:
            # timm's AST uses LayerNorm eps 1e-6 (reference §1.1); transformers' AST config says 1e-12.
            model = from_pretrained(ASTModel, spec.source, layer_norm_eps=spec.config.get("layer_norm_eps", 1e-6))
        except (OSError, ValueError) as exc:
            raise WeightsUnavailableError(f"cannot load AST weights from {spec.source!r}: {exc}") from exc
        _check_dims("AST", spec.source, spec.config, model.config)
        return ASTAudioEncoder(model)
    if not load:
        return WhisperAudioEncoder(WhisperEncoder(whisper_config_from_spec(spec)))
    try:
        encoder = _whisper_encoder_from_source(spec.source)
    except (OSError, ValueError, RuntimeError) as exc:
        raise WeightsUnavailableError(f"cannot load Whisper encoder weights from {spec.source!r}: {exc}") from exc
    _check_dims("Whisper encoder", spec.source, spec.config, encoder.config)
    return WhisperAudioEncoder(encoder)


def freeze_audio_encoder(model: SAVEModel) -> None:
    """The audio backbone is frozen except its final LayerNorm (reference §5.1)."""
    for name, param in model.audio_encoder.named_parameters():
        param.requires_grad = name.startswith("model.layernorm.") or name.startswith("model.layer_norm.")


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
        from .convert import load_authors_checkpoint

        return load_authors_checkpoint(path, device=device)
    return create_model(spec, pretrained=True, clip_source=clip_source, audio_source=audio_source, device=device)
