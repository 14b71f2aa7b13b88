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
HOLE_PAD_S = 0.2  # such a stretch is decoded with this much audio around it ...
# ... after widening it into the speech regions it lies in: up to HOLE_BEFORE_S before it, and up to HOLE_AFTER_S after
# it into the regions it lies in or touches. Its edges were cut WORD_PAD_S from a word's timing, and its end is the one
# to trust least (the word after a skipped utterance is the one stretched back over it), so a 0.9 s "five five"
# decoded as its hole alone lost its second "five". No more audio before it: with more of the sentence before it
# Whisper skips it again as the first decode did (measured on the 12 utterances the long-video bench lost, decoded
# alone: at least half of their words came back from their own regions +-0.2 s in 12, +-1 s in 11, +-2 s in 9, +-3 s
# in 8; no_speech/log-prob thresholds off, a prompt of the words before, or without timestamps gave the same as +-0.2).
HOLE_BEFORE_S = 1.0
HOLE_AFTER_S = 3.0
_TOUCH_S = 0.05  # a speech region this close after a stretch without words continues it (the VAD splits in pauses)
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
                before: float = HOLE_BEFORE_S, after: float = HOLE_AFTER_S,
                pad: float = HOLE_PAD_S) -> tuple[float, float]:
    """The audio decoded again for a stretch without words: the stretch widened to the speech regions it lies in (by
    at most ``before`` before it) or that it lies in or touches after it (by at most ``after``), plus ``pad``, within
    ``0 .. length``."""
    a, b = hole
    lo = min((r0 for r0, r1 in regions if r0 < b and r1 > a), default=a)
    hi = max((r1 for r0, r1 in regions if r0 <= b + _TOUCH_S and r1 > a), default=b)
    return max(0.0, max(lo, a - before) - pad), min(length, min(hi, b + after) + pad)


def new_words(words: Sequence[Any], window: tuple[float, float], known: Sequence[Any]) -> list[Any]:
    """The words of a second decode of ``window`` that the first decode did not have: ``known`` (the words found
    before) said anywhere in the window are matched in order (longest common subsequence of their letters) and left
    out, and so is a word whose middle lies outside the window or inside a known word that is not stretched (no longer
    than ``plausible_seconds``: the same word heard again, written differently, "there for" for "therefore")."""
    a, b = window
    placed = [(k.start, k.end) for k in known
              if k.start < b and k.end > a and k.end - k.start <= plausible_seconds(k.word)]
    new = [w for w in words if a <= (mid := (w.start + w.end) / 2) <= b and _letters(w.word)
           and not any(c <= mid <= d for c, d in placed)]
    old = [_letters(k.word) for k in known if k.start < b and k.end > a]
    mine = [_letters(w.word) for w in new]
    # lengths[i][j]: the longest common subsequence of mine[i:] and old[j:]
    lengths = [[0] * (len(old) + 1) for _ in range(len(mine) + 1)]
    for i in range(len(mine) - 1, -1, -1):
        for j in range(len(old) - 1, -1, -1):
            lengths[i][j] = (lengths[i + 1][j + 1] + 1 if mine[i] == old[j]
                             else max(lengths[i + 1][j], lengths[i][j + 1]))
    kept, i, j = [], 0, 0
    while i < len(mine):
        if j < len(old) and mine[i] == old[j]:
            i, j = i + 1, j + 1
        elif j < len(old) and lengths[i][j + 1] >= lengths[i + 1][j]:
            j += 1
        else:
            kept.append(new[i])
            i += 1
    return kept


def hole_segments(segments: Iterable[Any], window: tuple[float, float], known: Sequence[Any]) -> list[Any]:
    """A second decode's segments (faster-whisper's dataclasses) cut to the words of ``window`` that ``known`` does not
    hold (``new_words``); a segment without word timings is kept whole when it has text."""
    segments = list(segments)
    fresh = {id(w) for w in new_words([w for s in segments for w in (s.words or ())], window, known)}
    out = []
    for s in segments:
        if not s.words:
            out += [s] if s.text.strip() else []
        elif kept := [w for w in s.words if id(w) in fresh]:
            out.append(replace(s, start=kept[0].start, end=kept[-1].end, words=kept,
                               text="".join(w.word for w in kept)))
    return out


def unstretched(segment: Any, recovered: Sequence[Any]) -> Any:
    """``segment`` with each word that a ``recovered`` word lies inside (stretched back over what the first decode
    skipped) starting where the last of them ends, and the segment starting at its first word if that one moved, so
    that what follows a recovered utterance is not placed before it."""
    words = getattr(segment, "words", None)
    if not words or not recovered:
        return segment
    moved = []
    for w in words:
        ends = [r.end for r in recovered if r is not w and w.start < (r.start + r.end) / 2 < w.end]
        moved.append(replace(w, start=min(max(ends), w.end)) if ends else w)
    if all(m is w for m, w in zip(moved, words, strict=True)):
        return segment
    start = moved[0].start if moved[0] is not words[0] else segment.start
    return replace(segment, start=start, words=moved)


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
