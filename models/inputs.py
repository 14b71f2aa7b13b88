"""Decoded media -> the tensors ``SAVEModel.encode_video`` takes; one definition for training and ingest."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from models.media import read_audio, read_frames
from models.preprocess import (
    AUDIO_SAMPLE_RATE,
    MAX_FRAMES,
    MAX_WORDS,
    preprocess_frames,
    tokenize_speech,
    waveform_to_fbank,
    whisper_log_mel,
)


@dataclass
class VideoInputs:
    """One video, ready for the model (no batch dimension)."""

    pixel_values: Tensor  # [T, 3, S, S]
    video_mask: Tensor  # [T]
    audio: Tensor  # fbank [1024, 128] or Whisper log-mel [n_mels, 3000]; zeros when there is no audio
    has_audio: bool
    speech_ids: Tensor  # [max_words]; all zeros when there is no speech (< 5 characters)


def audio_features(waveform: np.ndarray | None, audio_kind: str, n_mels: int = 80) -> tuple[Tensor, bool]:
    """The audio encoder's input. Missing audio is zeros, as the authors feed it (reference §2.3)."""
    if audio_kind == "fbank":
        return waveform_to_fbank(waveform, AUDIO_SAMPLE_RATE)
    if audio_kind == "whisper_mel":
        if waveform is None or len(waveform) == 0:
            return torch.zeros(n_mels, 3000), False
        return torch.from_numpy(whisper_log_mel(waveform, n_mels=n_mels)), True
    raise ValueError(f"unknown audio input kind {audio_kind!r}")


def build_video_inputs(
    frames: Sequence[np.ndarray],
    waveform: np.ndarray | None,
    transcript: str | None,
    audio_kind: str = "fbank",
    image_size: int = 224,
    max_frames: int = MAX_FRAMES,
    max_words: int = MAX_WORDS,
    n_mels: int = 80,
) -> VideoInputs:
    pixel_values, video_mask = preprocess_frames(frames, max_frames=max_frames, image_size=image_size)
    audio, has_audio = audio_features(waveform, audio_kind, n_mels)
    speech_ids, _ = tokenize_speech([transcript], max_words=max_words)
    return VideoInputs(pixel_values, video_mask, audio, has_audio, speech_ids[0])


def load_video_inputs(path: str | Path, transcript: str | None, audio_kind: str = "fbank", image_size: int = 224,
                      max_frames: int = MAX_FRAMES, n_mels: int = 80) -> VideoInputs:
    """Decode a video file (1 fps frames, 16 kHz mono audio) and build its inputs."""
    frames = read_frames(path, max_frames=max_frames)
    waveform = read_audio(path, sample_rate=AUDIO_SAMPLE_RATE)
    return build_video_inputs(frames, waveform, transcript, audio_kind, image_size, max_frames, n_mels=n_mels)


def collate_video_inputs(items: Sequence[VideoInputs]) -> dict[str, Tensor]:
    return {
        "pixel_values": torch.stack([i.pixel_values for i in items]),
        "video_mask": torch.stack([i.video_mask for i in items]),
        "audio": torch.stack([i.audio for i in items]),
        "audio_mask": torch.tensor([float(i.has_audio) for i in items]),
        "speech_ids": torch.stack([i.speech_ids for i in items]),
    }
