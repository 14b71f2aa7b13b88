"""The models only ingest runs: speech recognition and on-screen text. Loaded on first use, so a process that
never ingests (an API replica, a command-line search) never loads them; ``Services`` holds what every process
shares."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from indexer.enums import OcrStatus
from indexer.settings import Settings

if TYPE_CHECKING:
    from indexer.inference.asr import Transcriber
    from indexer.inference.ocr import ScreenReader

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ScreenText:
    """The outcome of reading a video's on-screen text: (start, end, text) spans, and the ``Video.ocr_status`` /
    ``ocr_error`` note (status None: not read, OCR is off)."""

    spans: list[tuple[float, float, str]]
    status: OcrStatus | None
    error: str | None = None


class IngestRuntimes:
    """The transcriber and the OCR reader of one worker (or ``reindex --ocr``); either can be given (tests,
    benchmarks), else it is built from the settings when first used."""

    def __init__(self, settings: Settings, transcriber: Transcriber | None = None,
                 screen_reader: ScreenReader | None = None) -> None:
        self.settings = settings
        self._transcriber = transcriber
        self._screen_reader = screen_reader
        self._lock = threading.Lock()

    @property
    def transcriber(self) -> Transcriber:
        with self._lock:
            if self._transcriber is None:
                from indexer.inference.asr import Transcriber

                self._transcriber = Transcriber.from_settings(self.settings)
            return self._transcriber

    @property
    def screen_reader(self) -> ScreenReader:
        """The OCR model (never built while ``SAVE_SEARCH_OCR=0``: ``read_screen`` does not ask for it)."""
        with self._lock:
            if self._screen_reader is None:
                from indexer.inference.ocr import ScreenReader

                self._screen_reader = ScreenReader(self.settings)
            return self._screen_reader

    def read_screen(self, path: Path, duration_s: float | None, force: bool = False) -> ScreenText:
        """A video's on-screen text (``force``: even with ``SAVE_SEARCH_OCR=0``, for ``reindex --ocr``). OCR is an
        extra: any failure is logged and noted, never raised, so the video is still indexed with what it says
        (``save-search reindex --ocr`` tries again)."""
        if not (self.settings.ocr.enabled or force):
            return ScreenText([], None)
        try:
            spans = self.screen_reader.read(path, duration_s)
        except Exception as exc:  # noqa: BLE001 - a broken OCR must never fail the video
            log.warning("on-screen text of %s could not be read: %s", path, exc, exc_info=True)
            return ScreenText([], OcrStatus.FAILED, f"{type(exc).__name__}: {exc}")
        return ScreenText([(s.start_s, s.end_s, s.text) for s in spans], OcrStatus.READ)
