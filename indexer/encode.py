"""Encode stage: the SAVE model, loaded once, encoding videos in batches and queries for search.

If the visual weights cannot be loaded (no hub access, missing folder) the service runs in *speech mode*:
transcripts are still indexed and searched, and the reason is reported (log, /readyz, CLI). Never silent.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from models.factory import WeightsUnavailableError, load_model
from models.inputs import VideoInputs, collate_video_inputs
from models.preprocess import tokenize
from models.save import SAVEModel, VideoEmbedding

from .settings import Settings

log = logging.getLogger(__name__)


@dataclass
class ModelStatus:
    mode: str  # save-fused | zero-shot-clip | speech
    reason: str
    model_version: str | None
    details: dict


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


class VisualEncoder:
    """Owns the SAVE model (or knows why there is none)."""

    def __init__(self, settings: Settings, model: SAVEModel | None = None) -> None:
        self.device = resolve_device(settings.device)
        self.model: SAVEModel | None = model
        self.reason = ""
        if self.model is None:
            try:
                self.model = load_model(settings.model, clip_source=settings.clip_source,
                                        audio_source=settings.audio_source, device=self.device)
            except (WeightsUnavailableError, FileNotFoundError, OSError, ValueError) as exc:
                self.reason = (f"visual model {settings.model!r} could not be loaded ({exc}); running in speech "
                               f"mode: transcripts are indexed and searched, visual search is off")
                log.warning(self.reason)
        if self.model is not None:
            self.model.to(self.device).eval()
            info = self.model.info
            self.reason = "; ".join(info.notes) if info.notes else f"trained SAVE model ({info.mode})"
            log.info("visual model loaded: %s (%s) on %s", info.config_name, info.mode, self.device)

    @property
    def available(self) -> bool:
        return self.model is not None

    def status(self) -> ModelStatus:
        if self.model is None:
            return ModelStatus("speech", self.reason, None, {})
        info = self.model.info
        return ModelStatus(info.mode, self.reason, info.version(), info.to_dict())

    @property
    def audio_kind(self) -> str:
        return self.model.audio_input_kind if self.model is not None else "fbank"

    @property
    def image_size(self) -> int:
        return self.model.config.image_size if self.model is not None else 224

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=torch.float16, enabled=self.device.type == "cuda")

    @torch.no_grad()
    def encode_videos(self, items: Sequence[VideoInputs]) -> VideoEmbedding:
        """One batched forward pass for several videos; results on CPU in fp32."""
        assert self.model is not None
        batch = {k: v.to(self.device) for k, v in collate_video_inputs(items).items()}
        with self._autocast():
            emb = self.model.encode_video(batch["pixel_values"], batch["video_mask"], batch["audio"],
                                          batch["speech_ids"])
        return VideoEmbedding(emb.frames.float().cpu(), emb.mask.cpu(), emb.pooled.float().cpu())

    @torch.no_grad()
    def encode_queries(self, texts: Sequence[str]) -> torch.Tensor:
        assert self.model is not None
        ids, _ = tokenize(list(texts), max_words=self.model.config.max_words)
        with self._autocast():
            return self.model.encode_text(ids.to(self.device)).float().cpu()

    @torch.no_grad()
    def score(self, query: torch.Tensor, frames: np.ndarray, masks: np.ndarray, pooled: np.ndarray) -> np.ndarray:
        """Exact SAVE similarity of one query against stored candidates, as a cosine-like number.

        The model's logit is divided by its logit scale, so scores are comparable across checkpoints and
        can be fused with transcript scores in [0, 1].
        """
        assert self.model is not None
        # torch converts fp16 -> fp32 with vector instructions, numpy's astype element by element (~1.6x slower).
        video = VideoEmbedding(torch.from_numpy(frames).to(torch.float32), torch.from_numpy(masks).to(torch.int64),
                               torch.from_numpy(pooled).to(torch.float32))
        logits = self.model.similarity(query.to(torch.float32), video)
        return (logits / self.model.logit_scale.exp().cpu()).numpy()[0]
