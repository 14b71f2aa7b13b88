"""What every model runtime shares (ASR, OCR, the visual and sentence encoders): the one rule that picks a device,
and loading on first use, once, under a lock, so that a process pays only for the models it actually runs and
threads that ask at the same time share one load."""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from typing import Generic, TypeVar

Model = TypeVar("Model")


def resolve_device(requested: str = "auto") -> str:
    """``auto``: the first CUDA device when torch sees one, else the CPU; ``cpu``, ``cuda`` and ``cuda:N`` are
    kept as they are."""
    if requested == "auto":
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    return requested


def device_kind_and_index(device: str) -> tuple[str, int]:
    """``cuda:1`` -> (``cuda``, 1), ``cpu`` -> (``cpu``, 0): how CTranslate2 and onnxruntime name a device."""
    kind, _, index = device.partition(":")
    return kind, int(index or 0)


class InferenceModel(ABC, Generic[Model]):
    """A model runtime: ``model`` loads it on first use (``load``), once, under a lock; ``device`` is the resolved
    device (``resolve_device``)."""

    def __init__(self, device: str = "auto") -> None:
        self.requested_device = device
        self.device = resolve_device(device)
        self._model: Model | None = None
        self._loaded = False  # a load may yield None (e.g. no visual weights): loaded once all the same
        self._load_lock = threading.Lock()

    @abstractmethod
    def load(self) -> Model:
        """Build the model (expensive: weights from disk, sessions, warm-up). Called at most once."""

    @property
    def model(self) -> Model:
        if not self._loaded:
            with self._load_lock:
                if not self._loaded:
                    self._model = self.load()
                    self._loaded = True
        return self._model  # type: ignore[return-value]

    def preload(self, model: Model) -> None:
        """Use an already built model (tests, benchmarks) instead of loading one."""
        with self._load_lock:
            self._model, self._loaded = model, True

    @property
    def loaded(self) -> bool:
        return self._loaded
