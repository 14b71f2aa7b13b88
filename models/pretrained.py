"""Pretrained parts of a SAVE model (CLIP, AST or the Whisper encoder) from a hub id or a local folder, checked
against the config's dimensions. The factory and the checkpoint converter both build on it (open_clip's
``pretrained.py``), so neither imports the other's internals.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import TYPE_CHECKING, Any

from models.config import AudioSpec, ClipSpec, SAVEConfig

if TYPE_CHECKING:  # the model classes cost seconds to import: only a process that builds a model pays
    from transformers import CLIPModel
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    from models.encoders import AudioEncoder
    from models.save import SAVEModel


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


def _unreachable(source: str) -> str:
    return f"{source!r} is not a local folder, not in the Hugging Face cache, and the hub cannot be reached (offline?)"


def _hub_allowed() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() not in ("1", "true", "yes") and _hub_reachable()


def source_problem(source: str) -> str | None:
    """Why weights named by ``source`` (a local folder, a hub id, or the bundled Whisper) cannot be loaded here, or
    None when they can: a cheap look (no model class imported), so a process without weights finds out in
    milliseconds instead of seconds. Loading itself can still fail (a wrong architecture, a damaged file)."""
    from models.bundled import BUNDLED_PREFIX

    if source.startswith(BUNDLED_PREFIX) or Path(source).expanduser().is_dir():
        return None
    from huggingface_hub import try_to_load_from_cache

    if isinstance(try_to_load_from_cache(source, "config.json"), str):
        return None
    return None if _hub_allowed() else _unreachable(source)


def config_problem(config: SAVEConfig, clip_source: str | None = None, audio_source: str | None = None) -> str | None:
    """``source_problem`` of a config's pretrained parts (the sources given win over the config's)."""
    for source in (clip_source or config.clip.source, audio_source or config.audio.source):
        problem = source_problem(source) if source else None
        if problem:
            return problem
    return None


def model_problem(spec: str, clip_source: str | None = None, audio_source: str | None = None) -> str | None:
    """Why ``models.factory.load_model(spec, ...)`` cannot work here (``spec`` names no config, checkpoint or file;
    or the config's pretrained weights are out of reach: ``config_problem``), or None when it may."""
    from models.config import get_config

    path = Path(spec)
    if path.exists() and path.suffix != ".json":
        return None
    try:
        config = get_config(spec)
    except (ValueError, OSError) as exc:
        return str(exc)
    problem = config_problem(config, clip_source, audio_source)
    return f"cannot load the pretrained weights: {problem}" if problem else None


def from_pretrained(cls: Any, source: str, **kwargs: Any) -> Any:
    """``cls.from_pretrained`` for a hub id or a local folder: the cache first, then the hub if it answers."""
    if Path(source).expanduser().is_dir():
        return cls.from_pretrained(str(Path(source).expanduser()), **kwargs)
    try:
        return cls.from_pretrained(source, local_files_only=True, **kwargs)
    except OSError:
        if not _hub_allowed():
            raise OSError(_unreachable(source)) from None
    return cls.from_pretrained(source, **kwargs)


def build_clip(spec: ClipSpec, pretrained: bool) -> CLIPModel:
    from transformers import CLIPModel

    from models.encoders import clip_config_from_spec

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
    from transformers import WhisperModel

    from models.bundled import resolve_whisper_model

    resolved = resolve_whisper_model(source)
    folder = Path(resolved)
    if (folder / "model.bin").is_file():  # a CTranslate2 (faster-whisper) model folder
        from models.ctranslate2_whisper import whisper_encoder_from_ct2

        return whisper_encoder_from_ct2(folder)
    return from_pretrained(WhisperModel, resolved).get_encoder()


def build_audio_encoder(spec: AudioSpec, pretrained: bool) -> AudioEncoder:
    from transformers import ASTModel
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    from models.encoders import ASTAudioEncoder, WhisperAudioEncoder, ast_config_from_spec, whisper_config_from_spec
    source = spec.source if pretrained else None
    if spec.type == "ast":
        if not source:
            return ASTAudioEncoder(ASTModel(ast_config_from_spec(spec)))
        try:
            # timm's AST uses LayerNorm eps 1e-6 (reference §1.1); transformers' AST config says 1e-12.
            model = from_pretrained(ASTModel, source, layer_norm_eps=spec.config.get("layer_norm_eps", 1e-6))
        except (OSError, ValueError) as exc:
            raise WeightsUnavailableError(f"cannot load AST weights from {source!r}: {exc}") from exc
        _check_dims("AST", source, spec.config, model.config)
        return ASTAudioEncoder(model)
    if not source:
        return WhisperAudioEncoder(WhisperEncoder(whisper_config_from_spec(spec)))
    try:
        encoder = _whisper_encoder_from_source(source)
    except (OSError, ValueError, RuntimeError) as exc:
        raise WeightsUnavailableError(f"cannot load Whisper encoder weights from {source!r}: {exc}") from exc
    _check_dims("Whisper encoder", source, spec.config, encoder.config)
    return WhisperAudioEncoder(encoder)


def freeze_audio_encoder(model: SAVEModel) -> None:
    """The audio backbone is frozen except its final LayerNorm (reference §5.1)."""
    for name, param in model.audio_encoder.named_parameters():
        param.requires_grad = name.startswith("model.layernorm.") or name.startswith("model.layer_norm.")
