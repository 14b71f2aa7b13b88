"""Clause pieces: Whisper segments cut at clause punctuation with word timings, so moments are the clause meant."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from indexer.inference.asr import MIN_CLAUSE_S, clause_pieces


@dataclass
class Word:  # faster-whisper's Word: the text keeps its leading space
    start: float
    end: float
    word: str


def _words(spec: list[tuple[float, float, str]]) -> list[Word]:
    return [Word(*w) for w in spec]


def test_a_segment_is_cut_after_clause_punctuation() -> None:
    words = _words([(0.0, 0.5, " From"), (0.5, 1.2, " fairest"), (1.2, 2.0, " creatures,"), (2.4, 3.0, " that"),
                    (3.0, 4.1, " beauty's"), (4.1, 5.0, " rose."), (5.2, 5.9, " But"), (5.9, 7.0, " thou,")])
    pieces = clause_pieces(0.0, 7.2, " From fairest creatures, that beauty's rose. But thou,", words)
    assert pieces == [(0.0, 2.0, "From fairest creatures,"), (2.4, 5.0, "that beauty's rose."),
                      (5.2, 7.2, "But thou,")]
    assert " ".join(p[2] for p in pieces) == "From fairest creatures, that beauty's rose. But thou,"


def test_short_clauses_stay_with_their_neighbours() -> None:
    words = _words([(0.0, 0.4, " Yes,"), (0.5, 0.9, " well,"), (1.0, 2.6, " that"), (2.6, 3.0, " is"),
                    (3.0, 3.3, " it.")])
    # "Yes," alone would be 0.4 s and "it." is at the end: one piece at most every MIN_CLAUSE_S.
    pieces = clause_pieces(0.0, 3.3, " Yes, well, that is it.", words)
    assert all(b - a >= MIN_CLAUSE_S for a, b, _ in pieces[:-1])
    assert " ".join(p[2] for p in pieces) == "Yes, well, that is it."
    assert clause_pieces(1.0, 2.0, " Hi.", None) == [(1.0, 2.0, "Hi.")]  # no word timings: unchanged
    assert clause_pieces(1.0, 2.0, " Hi.", []) == [(1.0, 2.0, "Hi.")]


MEDIA = Path(__file__).resolve().parents[2] / "shared" / "data" / "media"


@pytest.mark.slow
@pytest.mark.skipif(not (MEDIA / "speech" / "sonnet").is_dir(), reason="real recordings not found")
def test_sonnet_lines_become_pieces_near_their_timings() -> None:
    """The 53 s reading comes out of Whisper base as 7 segments of two lines each; with clause pieces most line
    starts of sonnet.json have a piece starting within 1 s."""
    import json

    from indexer.inference.asr import Transcriber

    lines = json.loads((MEDIA / "speech" / "sonnet" / "sonnet.json").read_text())["fragments"]
    starts = [float(f["begin"]) for f in lines[1:]]  # the first fragment is the spoken title "1"
    whole = Transcriber(split_clauses=False).transcribe(MEDIA / "speech" / "sonnet" / "audio.mp3")
    pieces = Transcriber().transcribe(MEDIA / "speech" / "sonnet" / "audio.mp3")

    def near(segments) -> int:
        return sum(any(abs(s.start - t) <= 1.0 for s in segments) for t in starts)

    assert len(pieces.segments) > len(whole.segments)
    assert near(pieces.segments) >= 10 > near(whole.segments), (near(pieces.segments), near(whole.segments))
