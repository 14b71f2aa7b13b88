"""Which language a file is transcribed in: small multilingual Whisper models sometimes label short, noisy or
accented English as another language (British broadcast English as Welsh ``cy``) and then write the transcript in
that language. ``decide_language`` turns Whisper's detection into a decision (used as it is when confident, checked
when not, or restricted to ``expected_languages``); an uncertain one is settled by decoding the first window in
each candidate language and keeping the decode Whisper scores better (``score_decode``, ``choose_decode``).
Measured in docs/asr-language.md.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

# An expected language below this detection probability is named as improbable in the decision.
_IMPROBABLE = 0.01
# Below this top detection probability, the candidate languages are decoded and compared (measured,
# docs/asr-language.md: Welsh detections of British English reached p=0.85).
DEFAULT_MIN_LANGUAGE_PROBABILITY = 0.9
# Candidates compared: the top languages with at least this probability (a misdetected 0.5 s excerpt
# gave English only 0.08), at most this many (each extra one costs a trial decode of ~30 s of speech).
_CANDIDATE_FLOOR = 0.05
_MAX_CANDIDATES = 3
# Candidate decodes closer than this (mean log-probability per token) are a tie (measured, docs/asr-language.md).
SWITCH_MARGIN = 1.0
# Ties within that margin go to this language when it is a candidate (see choose_decode).
PREFERRED_LANGUAGE = "en"
# A trial decode reads the first window's segments, up to this much audio from the first one.
_TRIAL_SECONDS = 20.0
# Whisper's own thresholds: a compression ratio above 2.4 is a repetition loop; no-speech above 0.6.
_MAX_COMPRESSION_RATIO = 2.4
_NO_SPEECH = 0.6


LANGUAGE_METHODS = ("given", "english-only", "detected", "expected", "compared", "none")


@dataclass(frozen=True)
class LanguageDecision:
    """The language to decode a file in, decided once from its first speech.

    ``candidates`` (most probable first, with their detection probabilities) is non-empty while the
    decision is still open: those languages must be decoded and compared (:func:`choose_decode`).
    """

    language: str | None
    probability: float
    detected: str | None
    redecode: bool
    reason: str
    method: str = "detected"
    candidates: tuple[tuple[str, float], ...] = ()


def decide_language(all_language_probs: Sequence[tuple[str, float]], expected_languages: Sequence[str],
                    min_probability: float = DEFAULT_MIN_LANGUAGE_PROBABILITY) -> LanguageDecision:
    """Choose the decoding language from Whisper's language probabilities (most probable first).

    With no expected languages, a detection with probability >= ``min_probability`` is kept; below it the
    decision stays open (``candidates``: the top languages with probability >= ``_CANDIDATE_FLOOR``, at
    most ``_MAX_CANDIDATES``), because an uncertain detection is where Whisper labels accented or very
    short English as Welsh, Turkish or Arabic, and a decode in each candidate says which is right. With a
    single candidate there is nothing to compare and the detection is kept.

    Otherwise the expected languages are a whitelist: a detected language among them is kept; any other
    is replaced by the expected language that detection found most probable, whether the detection was
    confident or not, because a confident misdetection of short English is exactly the failure this
    guards against. Forcing a language on speech that really is in another language makes Whisper
    translate or garble it, so the reason then says that the expected language was improbable.
    """
    if not all_language_probs:
        raise ValueError("no language probabilities")
    ranked = sorted(all_language_probs, key=lambda lp: -lp[1])
    probs = dict(ranked)
    top, p = ranked[0]
    uncertain = p < min_probability
    detected = f"detected {top} ({p:.2f}{', uncertain' if uncertain else ''})"
    if not expected_languages:
        if not uncertain:
            return LanguageDecision(top, p, top, False, detected, "detected")
        candidates = tuple((lang, float(q)) for lang, q in ranked[:_MAX_CANDIDATES] if q >= _CANDIDATE_FLOOR)
        if len(candidates) < 2:
            return LanguageDecision(top, p, top, False, f"{detected}; no other candidate language", "detected")
        return LanguageDecision(top, p, top, False, detected, "compared", candidates)
    if top in expected_languages:
        return LanguageDecision(top, p, top, False, f"{detected}, an expected language", "expected")
    best = max(expected_languages, key=lambda lang: probs.get(lang, 0.0))
    pb = probs.get(best, 0.0)
    reason = f"{detected}: not an expected language; forced {best} (p={pb:.2f})"
    if pb < _IMPROBABLE:
        reason += ", which detection found improbable: the audio may really be in another language"
    return LanguageDecision(best, pb, top, True, reason, "expected")


@dataclass(frozen=True)
class DecodeScore:
    """How Whisper rates its own decode of some speech in one language (the trial of :func:`choose_decode`).

    ``mean_logprob``: token-weighted mean of the segments' ``avg_logprob`` (a wrong language reads as
    near-random tokens: about -2 against -0.3 to -0.5 for the right one); ``looped``: share of tokens in
    segments whose compression ratio exceeds Whisper's own 2.4 (a repetition loop scores a deceptively
    good log-probability); ``no_speech``: token-weighted mean no-speech probability.
    """

    language: str
    mean_logprob: float
    tokens: int
    looped: float
    no_speech: float

    @property
    def usable(self) -> bool:
        """Whether this decode is evidence at all: it wrote something that is not a loop or a silence."""
        return self.tokens > 0 and self.looped < 0.5 and self.no_speech <= _NO_SPEECH

    def describe(self) -> str:
        if self.tokens == 0:
            return f"{self.language} (nothing decoded)"
        flags = " looped" if self.looped >= 0.5 else " no speech" if self.no_speech > _NO_SPEECH else ""
        return f"{self.language} {self.mean_logprob:.2f}{flags}"


def score_decode(language: str, segments: Sequence[Any]) -> DecodeScore:
    """Score faster-whisper segments (``avg_logprob``, ``compression_ratio``, ``no_speech_prob``,
    ``tokens``): every token counts the same, so a long segment outweighs a stray short one."""
    weights = [max(len(getattr(s, "tokens", ()) or ()), 1) for s in segments]
    total = sum(weights)
    if not total:
        return DecodeScore(language, float("-inf"), 0, 0.0, 0.0)
    mean = sum(w * float(s.avg_logprob) for w, s in zip(weights, segments, strict=True)) / total
    looped = sum(w for w, s in zip(weights, segments, strict=True)
                 if float(s.compression_ratio) > _MAX_COMPRESSION_RATIO) / total
    no_speech = sum(w * float(s.no_speech_prob) for w, s in zip(weights, segments, strict=True)) / total
    return DecodeScore(language, mean, total, looped, no_speech)


def choose_decode(decision: LanguageDecision, scores: Sequence[DecodeScore], margin: float = SWITCH_MARGIN,
                  prefer: str | None = PREFERRED_LANGUAGE) -> LanguageDecision:
    """Close an open decision from the candidates' trial decodes (mean log-probability per token).

    Decodes within ``margin`` of each other are a tie: on a clipped word or two every language "fits"
    about as well (English -0.72 vs Chinese -0.67 for the single word "five"; English -0.84 vs Turkish
    -0.90 for "it is of the f"), while a wrong-language decode of real speech is far worse (Welsh -1.96
    vs English -0.50). A tie goes to ``prefer`` (English: the service's text side, MiniLM and the
    full-text stop words, is English, and a wrong-language transcript is unsearchable) when it is a
    candidate, otherwise to the detected language; outside a tie the best decode wins. Only usable
    decodes compete (:attr:`DecodeScore.usable`); when none is, the detection stands.
    """
    probs = dict(decision.candidates)
    usable = {sc.language: sc for sc in scores if sc.usable}
    compared = " vs ".join(sc.describe() for sc in scores)
    lang = decision.detected
    if usable:
        best = max(usable.values(), key=lambda sc: sc.mean_logprob)  # max keeps the first of equals
        lang = best.language
        for tie in (prefer, decision.detected):
            if tie in usable and usable[tie].mean_logprob >= best.mean_logprob - margin:
                lang = tie
                break
        note = f"kept {lang}"
    else:
        note = f"no usable decode: kept {lang}"
    reason = f"{decision.reason}; compared {compared} mean log-prob: {note}"
    return LanguageDecision(lang, probs.get(lang or "", decision.probability), decision.detected,
                            lang != decision.detected, reason, "compared")


def trial_segments(segments: Iterator[Any]) -> list[Any]:
    """The segments of a lazy decode's first window: read until one ends ``_TRIAL_SECONDS`` after the
    first began (Whisper yields a window's segments together; stopping there decodes no further window),
    or one comes from a later window (``seek`` moved on), or the decode ends."""
    out: list[Any] = []
    for seg in segments:
        out.append(seg)
        if seg.seek != out[0].seek or seg.end - out[0].start >= _TRIAL_SECONDS:
            break
    return out
