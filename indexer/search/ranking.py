"""How search ranks: each channel's raw score mapped to a probability (``calibrate``), the ``Ranking`` choices the
retrieval benchmark measures, the several moments of a video (``choose_moments``), and the result types.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace

import numpy as np

from indexer.enums import Source
from indexer.settings import Settings


@dataclass
class Moment:
    start: float
    end: float
    text: str
    source: str = Source.SPEECH  # said (speech) or shown (screen)


@dataclass
class ScoredMoment(Moment):
    """One of a result's ``moments``: a passage and its channel's calibrated score for it."""

    score: float = 0.0


@dataclass
class SearchResult:
    video_id: int
    filename: str
    score: float
    visual_score: float | None
    speech_score: float | None
    duration: float
    transcript: str
    segment: Moment | None
    language: str | None = None
    thumbnail_path: str | None = None
    raw_speech: float | None = None  # before calibration (for evaluate-search --fit-calibration)
    raw_visual: float | None = None
    screen_score: float | None = None
    raw_screen: float | None = None
    moments: list[ScoredMoment] = field(default_factory=list)  # moments[0] is ``segment`` (same passage)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Ranking:
    """How candidates are scored. The defaults come from ``Settings`` (measured: BENCHMARKS.md); the other
    values exist so the retrieval benchmark can measure each change against what it replaced.

    - ``passages``: score windows and the whole transcript, not only single segments.
    - ``moment``: the moment is the best single ``segment`` (a clause piece, ``indexer.inference.asr.clause_pieces``),
      the best local ``passage`` (windows included: they win on context and start too early, measured), or the best
      segment inside the best local passage (``segment-in-window``: the window finds the place, the segment the
      clause; where a paraphrase spans two clause pieces, a single piece elsewhere can outscore each of them), or
      the best segment grown into the best window holding it when that window scores higher
      (``segment-grown``, the default: a paraphrase of a whole sentence starts where the sentence starts), by more
      than ``grow_margin`` (a query for one line scores a window around it a little higher too). Measured
      (BENCHMARKS.md, "Retrieval quality on real speech" and "Long videos"): with margin 0.04 the sonnet lines keep
      the best segment's 5/8 (no margin: 3/8) and the long video's said-once sentences go 4/13 -> 8/13.
    - ``lexical``: ``coverage`` (cosine + lexical_weight * IDF-weighted share of query words said),
      ``max-fulltext`` (the previous rule: per segment max(cosine, bm25 / (1 + bm25))) or ``none`` (dense only).
    - ``screen``: on-screen text is its own ``channel`` (own calibration, fused), read ``as-speech`` (its passages
      join the speech channel: the simplest alternative, measured against) or ``off`` (ignored).
    - ``speech_calibration``, ``visual_calibration``, ``screen_calibration``: (a, b) of
      ``p = sigmoid(a * raw + b)``. The visual default
      (50, -12.5) puts p = 0.5 at a cosine of 0.25 and moves one logit per 0.02 of cosine: CLIP ViT-B text-frame
      cosines are typically ~0.30 for a matching and ~0.20 for an unrelated caption; it is a prior, not a
      measurement (no CLIP weights here): fit yours with ``save-search evaluate-search --fit-calibration``.
    """

    passages: bool = True
    moment: str = "segment-grown"
    grow_margin: float = 0.04
    lexical: str = "coverage"
    lexical_weight: float = 0.1
    normalize_sentence_input: bool = False
    speech_calibration: tuple[float, float] = (13.9, -9.5)
    visual_calibration: tuple[float, float] = (50.0, -12.5)
    screen: str = "channel"
    screen_calibration: tuple[float, float] = (13.1, -7.7)

    @classmethod
    def from_settings(cls, settings: Settings) -> Ranking:
        s = settings.search
        return cls(lexical_weight=s.lexical_weight, normalize_sentence_input=s.normalize_sentence_input,
                   speech_calibration=s.speech_calibration, visual_calibration=s.visual_calibration,
                   screen_calibration=s.screen_calibration)

    def with_(self, **changes) -> Ranking:
        return replace(self, **changes)


def calibrate(raw: np.ndarray | float, ab: Sequence[float]) -> np.ndarray:
    """``sigmoid(a * raw + b)``: a channel's raw score as the probability that the video is the one asked for."""
    a, b = ab
    return 1.0 / (1.0 + np.exp(-(a * np.asarray(raw, dtype=np.float64) + b)))


@dataclass
class ScoredCandidate:
    """A candidate's scores, before its row is loaded for display."""

    video_id: int
    score: float
    visual_score: float | None
    speech_score: float | None
    passage_id: int | None  # the moment
    raw_speech: float | None = None
    raw_visual: float | None = None
    screen_score: float | None = None
    raw_screen: float | None = None


@dataclass
class SearchPage:
    results: list[SearchResult]
    total_candidates: int
    mode: str
    offset: int = 0
    as_of: int = 0  # the largest video id considered: later pages of the same query use the same set
    notes: list[str] = field(default_factory=list)
