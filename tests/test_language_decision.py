"""The language decision without a model: when an uncertain detection is checked by decoding the candidate
languages, which decode wins, and what it costs (counted in decoded windows of a fake lazy Whisper).

The real-recording checks (the misdetected 0.5 s excerpts, jfk, multilingual.mp3) are in tests/test_asr.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from faster_whisper.transcribe import Segment as FwSegment
from faster_whisper.transcribe import Word

from indexer.inference.asr import SAMPLE_RATE, Transcriber
from indexer.inference.language import (
    DEFAULT_MIN_LANGUAGE_PROBABILITY,
    LANGUAGE_METHODS,
    SWITCH_MARGIN,
    DecodeScore,
    choose_decode,
    decide_language,
    score_decode,
    trial_segments,
)


def seg(logprob: float, n_tokens: int = 10, cr: float = 1.5, no_speech: float = 0.05, seek: int = 0,
        start: float = 0.0, end: float = 2.0, text: str = "words") -> SimpleNamespace:
    return SimpleNamespace(avg_logprob=logprob, tokens=list(range(n_tokens)), compression_ratio=cr,
                           no_speech_prob=no_speech, seek=seek, start=start, end=end, text=text)


# -- decide_language ----------------------------------------------------------------------------------

def test_confident_detection_is_kept_without_candidates() -> None:
    d = decide_language([("cy", 0.95), ("en", 0.04)], [])
    assert (d.language, d.method, d.candidates, d.redecode) == ("cy", "detected", (), False)
    assert d.reason == "detected cy (0.95)"
    assert DEFAULT_MIN_LANGUAGE_PROBABILITY > 0.85  # the Welsh misdetection of British English reached 0.85


def test_uncertain_detection_opens_a_comparison_of_the_top_candidates() -> None:
    # unsorted on purpose; en at 0.08 is a candidate (the misdetected 0.5 s excerpt), ja at 0.02 is not
    probs = [("en", 0.08), ("tr", 0.79), ("ja", 0.02), ("de", 0.06), ("fr", 0.05)]
    d = decide_language(probs, [])
    assert d.method == "compared" and d.language == "tr" and d.detected == "tr"
    assert [lang for lang, _ in d.candidates] == ["tr", "en", "de"]  # at most three, most probable first
    assert "uncertain" in d.reason
    lone = decide_language([("en", 0.6), ("de", 0.03)], [])  # nothing else plausible: nothing to compare
    assert lone.method == "detected" and lone.candidates == () and lone.language == "en"
    off = decide_language([("cy", 0.62), ("en", 0.32)], [], min_probability=0.0)  # threshold 0: rule off
    assert off.candidates == () and off.language == "cy"


def test_expected_languages_still_decide_when_set() -> None:
    forced = decide_language([("cy", 0.62), ("en", 0.32)], ["en"])
    assert (forced.language, forced.redecode, forced.method, forced.candidates) == ("en", True, "expected", ())
    kept = decide_language([("en", 0.4), ("ar", 0.35)], ["en"])
    assert (kept.language, kept.redecode, kept.method, kept.candidates) == ("en", False, "expected", ())


# -- scoring and choosing -------------------------------------------------------------------------------

def test_score_is_token_weighted_and_flags_loops_and_silence() -> None:
    s = score_decode("en", [seg(-0.2, 30), seg(-1.0, 10)])
    assert s.mean_logprob == pytest.approx((30 * -0.2 + 10 * -1.0) / 40) and s.tokens == 40 and s.usable
    loop = score_decode("cy", [seg(-0.1, 80, cr=3.1), seg(-0.5, 10)])
    assert loop.looped == pytest.approx(80 / 90) and not loop.usable
    silent = score_decode("en", [seg(-0.9, 5, no_speech=0.9)])
    assert not silent.usable and "no speech" in silent.describe()
    empty = score_decode("ko", [])
    assert empty.tokens == 0 and not empty.usable and "nothing decoded" in empty.describe()


def _open(probs: list[tuple[str, float]]):
    d = decide_language(probs, [])
    assert d.method == "compared"
    return d


def test_a_much_better_decode_replaces_the_detection() -> None:
    """The user's case: British English detected as Welsh (0.62), the English decode scores -0.50."""
    d = _open([("cy", 0.62), ("en", 0.32)])
    final = choose_decode(d, [DecodeScore("cy", -1.96, 40, 0, 0.1), DecodeScore("en", -0.50, 35, 0, 0.1)])
    assert (final.language, final.detected, final.redecode, final.method) == ("en", "cy", True, "compared")
    assert final.probability == pytest.approx(0.32)  # detection's probability of the language kept
    assert final.reason == ("detected cy (0.62, uncertain); compared cy -1.96 vs en -0.50 mean log-prob: kept en")


def test_a_slightly_better_decode_does_not() -> None:
    """On a word or two every language fits about as well (measured: en -0.72 vs zh -0.67 for "five")."""
    d = _open([("en", 0.67), ("zh", 0.2)])
    close = [DecodeScore("en", -0.72, 3, 0, 0.1), DecodeScore("zh", -0.72 + SWITCH_MARGIN - 0.01, 2, 0, 0.1)]
    final = choose_decode(d, close)
    assert final.language == "en" and not final.redecode and final.probability == pytest.approx(0.67)
    assert "kept en" in final.reason
    assert choose_decode(d, close, margin=0.0).language == "zh"  # the margin is what keeps it


def test_a_tie_goes_to_english_and_a_clear_loss_does_not() -> None:
    """The 0.5 s excerpt of LJ001-0011 ("it is of the f"): tr 0.79, and the decodes tie (measured -0.90 vs
    -0.84). Real speech in another language decodes far worse in English, so it stays as detected."""
    d = _open([("tr", 0.79), ("en", 0.08)])
    tie = [DecodeScore("tr", -0.90, 6, 0, 0.1), DecodeScore("en", -0.84 - 0.3, 7, 0, 0.1)]  # en even a bit worse
    assert choose_decode(d, tie).language == "en"
    assert choose_decode(d, tie, prefer=None).language == "tr"  # without the preference: the detection
    welsh = _open([("cy", 0.6), ("en", 0.3)])
    real_welsh = [DecodeScore("cy", -0.45, 40, 0, 0.1), DecodeScore("en", -0.45 - SWITCH_MARGIN - 0.2, 50, 0, 0.1)]
    assert choose_decode(welsh, real_welsh).language == "cy"
    no_english = _open([("de", 0.5), ("nl", 0.3)])  # English not a candidate: a tie keeps the detection
    assert choose_decode(no_english, [DecodeScore("de", -0.6, 9, 0, 0.1), DecodeScore("nl", -0.5, 9, 0, 0.1)]
                         ).language == "de"


def test_unusable_decodes_do_not_win() -> None:
    d = _open([("cy", 0.5), ("en", 0.4), ("ga", 0.1)])
    looping = DecodeScore("en", -0.05, 100, 0.9, 0.1)  # a repetition loop scores a flattering log-prob
    final = choose_decode(d, [DecodeScore("cy", -1.5, 30, 0, 0.1), looping, DecodeScore("ga", -1.9, 30, 0, 0.1)])
    assert final.language == "cy"
    # the detected language's own decode is unusable: the best usable one wins without a margin
    final = choose_decode(d, [DecodeScore("cy", -0.3, 30, 0.8, 0.1), DecodeScore("en", -1.0, 30, 0, 0.1),
                              DecodeScore("ga", -1.2, 30, 0, 0.1)])
    assert final.language == "en"
    none = choose_decode(d, [DecodeScore("cy", float("-inf"), 0, 0, 0), DecodeScore("en", float("-inf"), 0, 0, 0)])
    assert none.language == "cy" and "no usable decode" in none.reason and not none.redecode
    assert {final.method, none.method} <= set(LANGUAGE_METHODS)


def test_trial_reads_the_first_window_only() -> None:
    pulled: list[int] = []

    def gen() -> Iterator[SimpleNamespace]:
        for i, (seek, start, end) in enumerate([(0, 0, 8), (0, 8, 21.5), (2150, 21.5, 30), (4000, 30, 40)]):
            pulled.append(i)
            yield seg(-0.3, seek=seek, start=start, end=end)

    g = gen()
    assert [s.end for s in trial_segments(g)] == [8, 21.5]  # 21.5 s after the first start: that window is done
    assert pulled == [0, 1]
    assert [s.end for s in g] == [30, 40]  # the rest is still there for the winner
    short = trial_segments(iter([seg(-0.3, end=1.0), seg(-0.3, start=1.0, end=2.0)]))
    assert len(short) == 2  # a short clip: the whole decode
    later = trial_segments(iter([seg(-0.3, seek=0, end=3.0), seg(-0.3, seek=300, start=3, end=5), seg(-0.3, seek=300)]))
    assert len(later) == 2  # stops as soon as a second window shows up


# -- the transcriber's cost, with a fake Whisper ---------------------------------------------------------

@dataclass
class FakeWhisper:
    """Mimics what the transcriber asks of faster-whisper: ``detect_language`` (no decode), ``transcribe`` of one
    stretch (a trial or a re-decode: one 30 s window per 30 s) and the batched pipeline's ``transcribe`` of clips
    (``clip_timestamps``: one window per clip). Each window yields two segments scored by the language's
    log-probability, with word timings covering it (words of a plausible length, as Whisper's: a word stretched over
    seconds is what a skipped utterance looks like, and the transcriber would decode it again)."""

    probs: list[tuple[str, float]]
    logprob: dict[str, float]
    calls: list[dict[str, Any]] = field(default_factory=list)
    windows: list[str] = field(default_factory=list)  # one entry per decoded window: its language
    detections: int = 0
    model: SimpleNamespace = field(default_factory=lambda: SimpleNamespace(is_multilingual=True))

    def detect_language(self, audio: np.ndarray) -> tuple[str, float, list[tuple[str, float]]]:
        self.detections += 1
        return self.probs[0][0], self.probs[0][1], self.probs

    def _window(self, lang: str, start: float, end: float) -> list[SimpleNamespace]:
        self.windows.append(lang)
        mid = (start + end) / 2
        return [FwSegment(id=0, seek=int(start * 100), start=a, end=b, text=f"{lang} {x}", tokens=list(range(10)),
                          avg_logprob=self.logprob[lang], compression_ratio=1.5, no_speech_prob=0.05,
                          words=words(a, b, f"{lang}{x}"), temperature=0.0)
                for a, b, x in ((start, mid, "a"), (mid, end, "b"))]

    def transcribe(self, audio: np.ndarray, language: str | None = None, **kwargs: Any):
        self.calls.append({"language": language, **kwargs})
        assert language is not None  # the transcriber always decides first
        clips = kwargs.get("clip_timestamps")
        spans = ([(c["start"], c["end"]) for c in clips] if clips else
                 [(t, min(t + 30.0, len(audio) / SAMPLE_RATE)) for t in np.arange(0, len(audio) / SAMPLE_RATE, 30.0)])
        return (s for a, b in spans for s in self._window(language, float(a), float(b))), SimpleNamespace()


def words(start: float, end: float, text: str) -> list[Word]:
    """Words of 0.3 s, one every 0.4 s from ``start`` to ``end``."""
    return [Word(start=float(t), end=min(float(t) + 0.3, end), word=f" {text}", probability=0.9)
            for t in np.arange(start, end, 0.4)]


def fake_transcriber(model: FakeWhisper, speech_s: float, **kwargs: Any) -> Transcriber:
    """A transcriber over the fake, its VAD hearing ``speech_s`` seconds of speech from the start."""
    t = Transcriber("fake", device="cpu", split_clauses=False, **kwargs)
    t.preload(model)  # instead of loading a Whisper model
    t._batched = model  # the batched pipeline too
    t._speech_regions = lambda audio: [(0.0, speech_s)]  # type: ignore[method-assign]
    return t


AUDIO = np.zeros(100 * SAMPLE_RATE, dtype=np.float32)  # the fake does not listen


def test_confident_detection_decodes_once() -> None:
    model = FakeWhisper([("en", 0.97), ("cy", 0.02)], {"en": -0.3, "cy": -2.0})
    t = fake_transcriber(model, 95.0).transcribe(AUDIO)
    assert model.windows == ["en"] * 4  # 95 s of speech: four clips, each decoded once, all English
    assert model.detections == 1 and [c["language"] for c in model.calls] == ["en"]  # one batched call
    assert (t.language, t.language_method, t.redecoded) == ("en", "detected", False)
    assert t.speech_seconds == t.transcribed_seconds == 95.0 and t.redecoded_regions == t.empty_regions == 0


def test_uncertain_detection_pays_one_trial_window_per_other_candidate() -> None:
    model = FakeWhisper([("cy", 0.62), ("en", 0.32), ("ga", 0.04)], {"en": -0.5, "cy": -1.96})
    t = fake_transcriber(model, 95.0).transcribe(AUDIO)
    assert (t.language, t.detected_language, t.redecoded, t.language_method) == ("en", "cy", True, "compared")
    assert t.language_probability == pytest.approx(0.32)
    assert t.language_decision == "detected cy (0.62, uncertain); compared cy -1.96 vs en -0.50 mean log-prob: kept en"
    assert model.windows == ["cy", "en", "en", "en", "en"]  # Welsh's trial of the first clip is the only waste
    assert t.text.split() == ["en", "a", "en", "b"] * 4 and len(t.segments) == 8


def test_short_uncertain_clip_costs_one_extra_decode_and_keeps_a_good_detection() -> None:
    model = FakeWhisper([("en", 0.55), ("de", 0.30)], {"en": -0.4, "de": -0.6})
    t = fake_transcriber(model, 4.0).transcribe(AUDIO)
    assert model.windows == ["en", "de"]  # the winner's trial is the transcript: no third decode
    assert (t.language, t.redecoded, t.language_method) == ("en", False, "compared")
    caps = [c.get("max_new_tokens") for c in model.calls]
    assert caps and all(c is not None and c < 448 for c in caps)  # the trial decodes respect the token cap


def test_expected_languages_win_over_the_comparison() -> None:
    model = FakeWhisper([("cy", 0.62), ("en", 0.32)], {"en": -0.5, "cy": -1.96})
    t = fake_transcriber(model, 4.0, expected_languages=["en"]).transcribe(AUDIO)
    assert model.windows == ["en"] and (t.language, t.language_method, t.redecoded) == ("en", "expected", True)
