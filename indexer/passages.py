"""Passages: the pieces of a transcript that are embedded and searched by meaning.

Whisper cuts speech into segments of a few seconds, and a paraphrased query often covers two or three of them.
So a video's passages are every segment, every run of up to ``MAX_WINDOW`` adjacent segments that lasts at
most ``MAX_WINDOW_S`` (a long pause ends a thought), and the whole transcript (what the video is about; the
sentence encoder reads its first 256 tokens). Scoring takes the best passage per video; the moment shown and
played is the best *local* passage (up to ``MAX_WINDOW`` segments), never the whole transcript.

On-screen text (``indexer.inference.ocr`` spans, ``source`` = ``screen``) is cut the same way but on its own, after the
speech segments (idx n..n+m-1): a slide's lines read together, but never with what is said over them, because
each source scores its own search channel (``indexer.search.service``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from indexer.enums import Source
from indexer.storage.catalog import to_blob
from indexer.storage.db import Passage, Segment
from indexer.text import normalize

MAX_WINDOW = 3  # segments in the longest local passage
MAX_WINDOW_S = 30.0  # a window longer than this (a pause inside) is not a passage


@dataclass(frozen=True)
class Span:
    first: int  # index of the first segment
    last: int  # index of the last segment (inclusive)
    start: float
    end: float
    text: str
    source: str = Source.SPEECH

    @property
    def local(self) -> bool:
        """A moment worth playing: at most ``MAX_WINDOW`` segments (the whole transcript is not)."""
        return self.last - self.first < MAX_WINDOW


def spans(segments: Sequence[tuple[float, float, str]]) -> list[Span]:
    """The passages of a transcript given as (start, end, text) segments, shortest first."""
    out: list[Span] = []
    n = len(segments)
    for width in range(1, MAX_WINDOW + 1):
        for first in range(0, n - width + 1):
            last = first + width - 1
            start, end = segments[first][0], segments[last][1]
            if width > 1 and end - start > MAX_WINDOW_S:
                continue
            out.append(Span(first, last, start, end, _join(segments[first:last + 1])))
    if n > MAX_WINDOW:
        out.append(Span(0, n - 1, segments[0][0], segments[-1][1], _join(segments)))
    return [s for s in out if s.text]


def _join(segments: Sequence[tuple[float, float, str]]) -> str:
    return " ".join(t.strip() for _, _, t in segments if t.strip())


def encoder_input(text: str, normalized: bool) -> str:
    """What the sentence encoder reads for a passage or a query: the same transform on both sides."""
    return normalize(text) if normalized else text


def embed(sentences, items: Sequence[str], normalized: bool) -> np.ndarray:
    """Sentence embeddings of passages or queries ([N, dim] float32, unit length)."""
    if not items:
        return np.zeros((0, sentences.dim), np.float32)
    return sentences.encode([encoder_input(t, normalized) or t for t in items])


def screen_spans(speech_count: int, screen: Sequence[tuple[float, float, str]]) -> list[Span]:
    """The passages of on-screen text segments that follow ``speech_count`` speech segments of the same video."""
    return [Span(s.first + speech_count, s.last + speech_count, s.start, s.end, s.text, Source.SCREEN)
            for s in spans(screen)]


@dataclass
class EmbeddedTranscript:
    """What a video says and shows, ready to store: its segments, its passages and their sentence embeddings."""

    segments: list[tuple[float, float, str]]
    spans: list[Span]
    embeddings: np.ndarray  # [len(spans), dim]
    screen: list[tuple[float, float, str]] = field(default_factory=list)  # on-screen text, by start

    def rows(self) -> tuple[list, list]:
        """The ``Segment`` and ``Passage`` rows of a video (without ``video_id``: append them to the video)."""
        n = len(self.segments)
        segments = [Segment(idx=i, start_s=start, end_s=end, text=text, source=Source.SPEECH)
                    for i, (start, end, text) in enumerate(self.segments)]
        segments += [Segment(idx=n + i, start_s=start, end_s=end, text=text, source=Source.SCREEN)
                     for i, (start, end, text) in enumerate(self.screen)]
        passages = [Passage(first_idx=s.first, last_idx=s.last, start_s=s.start, end_s=s.end, embedding=to_blob(v),
                            source=s.source)
                    for s, v in zip(self.spans, self.embeddings, strict=True)]
        return segments, passages


def embed_transcript(sentences, segments: Sequence[tuple[float, float, str]], normalized: bool,
                     screen: Sequence[tuple[float, float, str]] = ()) -> EmbeddedTranscript:
    """Cut a transcript and the on-screen text into passages and embed them (the worker's ``sentences`` stage,
    ``reindex --text`` and ``reindex --ocr``)."""
    segments = [(float(a), float(b), t) for a, b, t in segments]
    shown = sorted(((float(a), float(b), t) for a, b, t in screen if t.strip()), key=lambda x: (x[0], x[1]))
    cut = spans(segments) + screen_spans(len(segments), shown)
    return EmbeddedTranscript(segments, cut, embed(sentences, [s.text for s in cut], normalized), shown)
