"""Word error rate, to measure the speech stage against reference transcripts.

Kept dependency-free (no jiwer) so tests and benchmarks can score transcripts anywhere the
worker runs. The normalisation is deliberately plain, so numbers are comparable between runs
but are *not* Whisper's ``EnglishTextNormalizer`` numbers (which also spell out numbers,
unify British/American spellings, expand contractions, ...): expect slightly higher WER here.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Sequence

__all__ = ["corpus_wer", "normalize_text", "word_edits", "word_error_rate"]

# Apostrophes inside a word are dropped ("don't" -> "dont", "beauty's" -> "beautys") rather than
# split, so that a reference and a hypothesis that differ only in apostrophe style still match.
_APOSTROPHES = re.compile(r"['\u2018\u2019\u02bc`]")
_NUMBER_SEP = re.compile(r"(?<=\d)[.,](?=\d)")


def normalize_text(s: str) -> str:
    """Lowercase, drop punctuation, collapse whitespace.

    What it does, exactly:
    - Unicode NFKC, then lowercase (``casefold``);
    - apostrophes (straight and curly) are removed without a space: ``don't`` -> ``dont``;
    - a ``.`` or ``,`` between two digits is kept, so numbers stay as written: ``3.5``, ``1,000``;
    - every other character that is neither a letter, a digit nor whitespace (punctuation,
      symbols, hyphens) becomes a space: ``self-substantial`` -> ``self substantial``;
    - runs of whitespace become one space, and the ends are stripped.

    What it does not do: numbers stay as written (``15`` and ``fifteen`` differ), no spelling
    variants, no contraction or abbreviation expansion (``mr`` and ``mister`` differ), accents kept.
    """
    s = unicodedata.normalize("NFKC", s).casefold()
    s = _APOSTROPHES.sub("", s)
    s = "".join(ch if ch.isalnum() or ch.isspace() or _NUMBER_SEP.match(s, i) else " " for i, ch in enumerate(s))
    return " ".join(s.split())


def word_edits(reference: str, hypothesis: str) -> tuple[int, int]:
    """(substitutions + deletions + insertions, reference word count) after :func:`normalize_text`."""
    ref = normalize_text(reference).split()
    hyp = normalize_text(hypothesis).split()
    return _levenshtein(ref, hyp), len(ref)


def word_error_rate(reference: str, hypothesis: str) -> float:
    """Word-level Levenshtein distance divided by the number of reference words.

    Can exceed 1.0 (many insertions). An empty reference scores 0.0 against an empty hypothesis and
    1.0 against anything else, so that a hallucination on silence is not silently perfect.
    """
    edits, n = word_edits(reference, hypothesis)
    if n == 0:
        return 0.0 if edits == 0 else 1.0
    return edits / n


def corpus_wer(pairs: Iterable[tuple[str, str]]) -> float:
    """Total edits over total reference words for ``(reference, hypothesis)`` pairs.

    This weights long utterances more than a mean of per-utterance WERs would, which is the usual
    way ASR results are reported.
    """
    edits = words = 0
    for reference, hypothesis in pairs:
        e, n = word_edits(reference, hypothesis)
        edits, words = edits + e, words + n
    if words == 0:
        return 0.0 if edits == 0 else 1.0
    return edits / words


def _levenshtein(ref: Sequence[str], hyp: Sequence[str]) -> int:
    """Minimum substitutions + deletions + insertions turning ``ref`` into ``hyp`` (two-row DP)."""
    if not ref:
        return len(hyp)
    if not hyp:
        return len(ref)
    prev = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, start=1):
        cur = [i] + [0] * len(hyp)
        for j, h in enumerate(hyp, start=1):
            cur[j] = min(prev[j] + 1,  # deletion of r
                         cur[j - 1] + 1,  # insertion of h
                         prev[j - 1] + (r != h))  # match or substitution
        prev = cur
    return prev[-1]
