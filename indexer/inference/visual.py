"""Encode stage: the SAVE model, loaded once, encoding videos in batches and queries for search.

If the visual weights cannot be loaded (no hub access, missing folder) the service runs in *speech mode*:
transcripts are still indexed and searched, and the reason is reported (log, /readyz, CLI). Never silent.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from indexer.inference.base import InferenceModel
from indexer.settings import Settings
from models.config import ModelMode
from models.pretrained import WeightsUnavailableError, model_problem

if TYPE_CHECKING:
    from models.inputs import VideoInputs
    from models.save import SAVEModel, VideoEmbedding

log = logging.getLogger(__name__)


@dataclass
class ModelStatus:
    mode: ModelMode
    reason: str
    model_version: str | None
    details: dict


class VisualEncoder(InferenceModel["SAVEModel | None"]):
    """Owns the SAVE model (or knows why there is none: then ``model`` is None and ``reason`` says why)."""

    def __init__(self, settings: Settings, model: SAVEModel | None = None) -> None:
        super().__init__(settings.device)
        self.settings = settings.visual
        self.reason = ""
        if model is not None:
            self.preload(self._ready(model))

    def load(self) -> SAVEModel | None:
        settings = self.settings
        # Without weights, say so before importing the model code (seconds: a speech-mode search never pays them).
        problem = model_problem(settings.model, settings.clip_source, settings.audio_source)
        try:
            if problem:
                raise WeightsUnavailableError(problem)
            from models.factory import load_model

            model = load_model(settings.model, clip_source=settings.clip_source, audio_source=settings.audio_source,
                               device=self.device)
        except (WeightsUnavailableError, FileNotFoundError, OSError, ValueError) as exc:
            self.reason = (f"visual model {settings.model!r} could not be loaded ({exc}); running in speech "
                           f"mode: transcripts are indexed and searched, visual search is off")
            log.warning(self.reason)
            return None
        return self._ready(model)

    def _ready(self, model: SAVEModel) -> SAVEModel:
        model.to(self.device).eval()
        info = model.info
        self.reason = "; ".join(info.notes) if info.notes else f"trained SAVE model ({info.mode})"
        log.info("visual model loaded: %s (%s) on %s", info.config_name, info.mode, self.device)
        return model

    @property
    def available(self) -> bool:
        return self.model is not None

    def status(self) -> ModelStatus:
        if self.model is None:
            return ModelStatus(ModelMode.SPEECH, self.reason, None, {})
        info = self.model.info
        return ModelStatus(info.mode, self.reason, info.version(), info.to_dict())

    @property
    def audio_kind(self) -> str:
        return self.model.audio_input_kind if self.model is not None else "fbank"

    @property
    def image_size(self) -> int:
        return self.model.config.image_size if self.model is not None else 224

    def _autocast(self):
        kind = torch.device(self.device).type
        return torch.autocast(kind, dtype=torch.float16, enabled=kind == "cuda")

    @torch.no_grad()
    def encode_videos(self, items: Sequence[VideoInputs]) -> VideoEmbedding:
        """One batched forward pass for several videos; results on CPU in fp32."""
        from models.inputs import collate_video_inputs
        from models.save import VideoEmbedding

        assert self.model is not None
        batch = {k: v.to(self.device) for k, v in collate_video_inputs(items).items()}
        with self._autocast():
            emb = self.model.encode_video(batch["pixel_values"], batch["video_mask"], batch["audio"],
                                          batch["speech_ids"])
        return VideoEmbedding(emb.frames.float().cpu(), emb.mask.cpu(), emb.pooled.float().cpu())

    @torch.no_grad()
    def encode_queries(self, texts: Sequence[str]) -> torch.Tensor:
        from models.preprocess import tokenize

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
        from models.save import VideoEmbedding

        assert self.model is not None
        # torch converts fp16 -> fp32 with vector instructions, numpy's astype element by element (~1.6x slower).
        video = VideoEmbedding(torch.from_numpy(frames).to(torch.float32), torch.from_numpy(masks).to(torch.int64),
                               torch.from_numpy(pooled).to(torch.float32))
        logits = self.model.similarity(query.to(torch.float32), video)
        return (logits / self.model.logit_scale.exp().cpu()).numpy()[0]
