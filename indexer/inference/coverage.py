"""Speech coverage: VAD speech regions joined into decode clips, and the stretches of speech that a decode left
without a word (what is decoded again on its own so that no speech is lost silently)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import replace
from typing import Any

# Speech regions: the VAD settings faster-whisper's batched pipeline uses (pauses of 160 ms split regions), joined into
# clips of at most Whisper's 30 s window; a longer pause starts a new clip (what lies between is not decoded).
VAD_MIN_SILENCE_MS = 160
CLIP_MAX_S = 30.0
CLIP_GAP_S = 2.0
# Speech this long without a word within WORD_PAD_S is decoded again on its own (what a decode skipped). Half a
# second, not the ~1 s first planned: on the 30-minute benchmark the utterances still lost were a short "five
# five" (0.9 s of speech), recovered at 0.5 (BENCHMARKS.md, "Long videos").
HOLE_MIN_S = 0.5
WORD_PAD_S = 0.5
HOLE_GAP_S = 5.0  # stretches without words this close (and nothing said between them) are decoded together
HOLE_PAD_S = 0.2  # such a stretch is decoded with this much audio around it (less than WORD_PAD_S: no word twice)
# ... after widening it by up to this much into the speech regions it lies in: its edges were cut WORD_PAD_S from a
# word's timing (or inside a stretched word), so a 0.9 s "five five" decoded as its hole alone lost its second "five".
# More audio around it than its own speech regions makes Whisper skip it again, as the first decode did (measured on
# the long-video bench's card calls: their region +-0.2 s gave the words in 10 of 10, +-2 s in 6, +-3 s in 5).
HOLE_EXTEND_S = 1.0
# A word's timing covers at most its last WORD_BASE_S + WORD_S_PER_CHAR per letter: Whisper's alignment stretches the
# first word after an utterance it skipped back over that utterance (" as" over 1.5 s of "five five", " then" over
# 3.7 s of a whole sentence), and a stretched word's true place is at its end, where the next word follows.
WORD_BASE_S = 0.2
WORD_S_PER_CHAR = 0.08


def merge_regions(regions: Sequence[tuple[float, float]], max_s: float = CLIP_MAX_S,
                  max_gap_s: float = CLIP_GAP_S) -> list[tuple[float, float]]:
    """Speech regions joined into clips of at most ``max_s`` seconds (Whisper's window), a pause longer than
    ``max_gap_s`` starting a new clip (a clip is one contiguous slice: what lies between its regions is decoded
    too, so music or noise between speech stays out). A region longer than ``max_s`` is cut into pieces."""
    clips: list[tuple[float, float]] = []
    for a, b in regions:
        while b - a > max_s:
            clips.append((a, a + max_s))
            a += max_s
        if clips and b - clips[-1][0] <= max_s and a - clips[-1][1] <= max_gap_s:
            clips[-1] = (clips[-1][0], b)
        else:
            clips.append((a, b))
    return clips


def join_holes(holes: Sequence[tuple[float, float]], spans: Sequence[tuple[float, float]],
               max_s: float = CLIP_MAX_S, max_gap_s: float = HOLE_GAP_S) -> list[tuple[float, float]]:
    """Stretches without words joined into spans of at most ``max_s`` seconds when the pause between two is at
    most ``max_gap_s`` and holds no word (decoding it again then repeats nothing already said)."""
    out: list[tuple[float, float]] = []
    for a, b in holes:
        if out and b - out[-1][0] <= max_s and a - out[-1][1] <= max_gap_s \
                and not any(c < a and d > out[-1][1] for c, d in spans):
            out[-1] = (out[-1][0], b)
        else:
            out.append((a, b))
    return out


def word_spans(segments: Iterable[Any]) -> list[tuple[float, float]]:
    """Where words were found: each word's time (at most its plausible length, ending where it ends), or a
    segment's when it has no word timings."""
    spans = []
    for s in segments:
        words = getattr(s, "words", None)
        if words:
            spans += [(max(float(w.start), float(w.end) - plausible_seconds(w.word)), float(w.end)) for w in words]
        elif s.text.strip():
            spans.append((float(s.start), float(s.end)))
    return spans


def plausible_seconds(word: str) -> float:
    """The longest a word is taken to last: generous for speech, short of a skipped utterance."""
    return WORD_BASE_S + WORD_S_PER_CHAR * sum(c.isalnum() for c in word)


def hole_window(hole: tuple[float, float], regions: Sequence[tuple[float, float]], length: float,
                extend: float = HOLE_EXTEND_S, pad: float = HOLE_PAD_S) -> tuple[float, float]:
    """The audio decoded again for a stretch without words: the stretch widened to the speech regions it lies in
    (by at most ``extend`` each side), plus ``pad``, within ``0 .. length``."""
    a, b = hole
    lo = min((r0 for r0, r1 in regions if r0 < b and r1 > a), default=a)
    hi = max((r1 for r0, r1 in regions if r0 < b and r1 > a), default=b)
    return max(0.0, max(lo, a - extend) - pad), min(length, min(hi, b + extend) + pad)


def new_words(words: Sequence[Any], hole: tuple[float, float], known: Sequence[Any],
              pad: float = WORD_PAD_S) -> list[Any]:
    """The words of a second decode that belong to the stretch ``hole``: the middle of each within ``pad`` of it
    (the stretch lies at least ``pad`` from every word found before), and not a word of ``known`` (the first
    decode's words) said again where that one's timing overlaps it."""
    a, b = hole

    def same(w: Any, k: Any) -> bool:
        return _letters(w.word) == _letters(k.word) and k.start < w.end and k.end > w.start

    return [w for w in words if a - pad <= (w.start + w.end) / 2 <= b + pad and not any(same(w, k) for k in known)]


def hole_segments(segments: Iterable[Any], hole: tuple[float, float], known: Sequence[Any]) -> list[Any]:
    """A second decode's segments (faster-whisper's dataclasses) cut to their words inside ``hole`` that ``known``
    does not hold (``new_words``); a segment without word timings is kept whole when it has text."""
    out = []
    for s in segments:
        if not s.words:
            out += [s] if s.text.strip() else []
        elif kept := new_words(s.words, hole, known):
            out.append(replace(s, start=kept[0].start, end=kept[-1].end, words=kept,
                               text="".join(w.word for w in kept)))
    return out


def _letters(word: str) -> str:
    return "".join(c for c in word.lower() if c.isalnum())


def _gaps(regions: Sequence[tuple[float, float]], spans: Sequence[tuple[float, float]],
          pad: float) -> list[tuple[float, float]]:
    """The parts of ``regions`` farther than ``pad`` from every span."""
    covered = sorted((a - pad, b + pad) for a, b in spans)
    out = []
    for a, b in regions:
        t = a
        for c, d in covered:
            if d <= t:
                continue
            if c >= b:
                break
            if c > t:
                out.append((t, c))
            t = max(t, d)
            if t >= b:
                break
        if t < b:
            out.append((t, b))
    return out


def uncovered(regions: Sequence[tuple[float, float]], spans: Sequence[tuple[float, float]],
              min_s: float = HOLE_MIN_S, pad: float = WORD_PAD_S) -> list[tuple[float, float]]:
    """Stretches of speech of at least ``min_s`` seconds without a word (within ``pad``): what a decode
    skipped, to be decoded again on its own."""
    return [(a, b) for a, b in _gaps(regions, spans, pad) if b - a >= min_s]


def covered_seconds(regions: Sequence[tuple[float, float]], spans: Sequence[tuple[float, float]],
                    pad: float = WORD_PAD_S) -> float:
    """Seconds of speech with a word within ``pad``."""
    return sum(b - a for a, b in regions) - sum(b - a for a, b in _gaps(regions, spans, pad))
