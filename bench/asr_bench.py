"""Transcript quality and speed: WER and real-time factor of the pipeline's transcriber, of what it ran before, and
of plain faster-whisper, on the real read-speech clips with reference transcripts (LJSpeech: 32 sentences,
LibriVox: 5 sentences), clip by clip and joined into one stream.

    .venv/bin/python -m bench.asr_bench
    .venv/bin/python -m bench.asr_bench --no-append --threads 2

WER is ``indexer.inference.asr_quality.corpus_wer`` (plain normalisation, not Whisper's English normaliser: numbers
such as "1480" vs "fourteen eighty" count as errors). The real-time factor is transcription seconds / audio
seconds (lower is faster), measured after one warm-up clip per variant; CPU time next to it (the machine is shared).
The long-video side by side (ingest vs plain faster-whisper on 30 min and 2 h) is ``bench.long_video_bench``.
"""

from __future__ import annotations

import argparse
import logging
import re
import resource
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bench.harness import MEDIA, command_line, entry, md_table, publish, wait_for_quiet

SPEECH = MEDIA / "speech"


def ljspeech() -> list[tuple[Path, str]]:
    from tests.media_fixtures import ljspeech_transcripts

    return [(SPEECH / "ljspeech" / f"{key}.wav", text) for key, text in sorted(ljspeech_transcripts().items())]


def librivox() -> list[tuple[Path, str]]:
    """``<s> text </s> (file-id)`` lines (the CMU Sphinx test format)."""
    out = []
    for line in (SPEECH / "librivox" / "transcription").read_text().splitlines():
        m = re.match(r"\s*<s>(.*)</s>\s*\((.+)\)\s*$", line)
        if m:
            out.append((SPEECH / "librivox" / f"{m.group(2).strip()}.wav", m.group(1).strip()))
    return out


@dataclass
class Result:
    label: str
    mode: str
    corpus: str
    clips: int
    audio_s: float
    seconds: float
    cpu: float
    wer: float

    @property
    def rtf(self) -> float:
        return self.seconds / self.audio_s

    @property
    def cpu_rtf(self) -> float:
        return self.cpu / self.audio_s


def variants(threads: int) -> dict[str, Callable[[np.ndarray], str]]:
    """Label -> audio -> transcript text: the pipeline's transcriber, what the pipeline did before (sequential
    float32 decode with word timestamps, no previous-text conditioning), and plain faster-whisper (int8, VAD,
    beam 5: the simplest alternative)."""
    from faster_whisper import WhisperModel

    from indexer.inference.asr import Transcriber
    from models.bundled import WHISPER_BASE_NAME, resolve_whisper_model

    base = resolve_whisper_model(WHISPER_BASE_NAME)
    pipeline = Transcriber(device="cpu", cpu_threads=threads)
    previous = WhisperModel(base, device="cpu", compute_type="default", cpu_threads=threads)
    plain = WhisperModel(base, device="cpu", compute_type="int8", cpu_threads=threads)

    def text(segments) -> str:
        return " ".join(s.text.strip() for s in segments)

    return {
        "pipeline (batched clips, int8, beam 5, words)": lambda audio: pipeline.transcribe(audio).text,
        "previous pipeline (sequential, float32, beam 5, words)": lambda audio: text(previous.transcribe(
            audio, vad_filter=True, beam_size=5, condition_on_previous_text=False, word_timestamps=True)[0]),
        "plain faster-whisper (int8, VAD, beam 5)": lambda audio: text(plain.transcribe(
            audio, vad_filter=True, beam_size=5)[0]),
    }


def evaluate(label: str, transcribe: Callable[[np.ndarray], str], corpora: dict[str, list[tuple[Path, str]]],
             joined: bool) -> list[Result]:
    """Per corpus: every clip on its own, or (``joined``) all of them in one stream with 1 s of silence between
    (what a long recording looks like to the decoder; references joined the same way)."""
    from faster_whisper.audio import decode_audio

    from indexer.inference.asr_quality import corpus_wer

    first = next(iter(corpora.values()))[0][0]
    transcribe(decode_audio(str(first), sampling_rate=16000))  # warm-up, not counted
    results = []
    for corpus, items in corpora.items():
        audios = [(decode_audio(str(path), sampling_rate=16000), reference) for path, reference in items]
        if joined:
            gap = np.zeros(16000, np.float32)
            audios = [(np.concatenate([x for a, _ in audios for x in (a, gap)]), " ".join(r for _, r in audios))]
        pairs, seconds, cpu, audio_s = [], 0.0, 0.0, 0.0
        for audio, reference in audios:
            start, start_cpu = time.perf_counter(), _cpu()
            pairs.append((reference, transcribe(audio)))
            seconds += time.perf_counter() - start
            cpu += _cpu() - start_cpu
            audio_s += len(audio) / 16000
        results.append(Result(label, "joined" if joined else "clip by clip", corpus, len(items), audio_s, seconds,
                              cpu, corpus_wer(pairs)))
        r = results[-1]
        print(f"{label} {r.mode} {corpus}: WER {100 * r.wer:.2f} %, RTF {r.rtf:.3f}, CPU/audio {r.cpu_rtf:.3f}",
              flush=True)
    return results


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2, help="faster-whisper cpu_threads")
    parser.add_argument("--no-append", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    corpora = {"LJSpeech": ljspeech(), "LibriVox": librivox()}
    load = wait_for_quiet()
    results: list[Result] = []
    for label, transcribe in variants(args.threads).items():
        for joined in (False, True):
            results += evaluate(label, transcribe, corpora, joined)
    rows = [[r.label, r.mode, r.corpus, r.clips, r.audio_s, f"{100 * r.wer:.2f}", r.seconds, f"{r.rtf:.3f}",
             f"{r.cpu_rtf:.3f}"] for r in results]
    body = "\n".join([
        "The bundled Whisper base, faster-whisper cpu_threads "
        f"{args.threads}, no expected language; WER by `indexer.inference.asr_quality.corpus_wer` (plain "
        "normalisation); RTF = transcription wall s / audio s, CPU RTF = process CPU s / audio s, after one warm-up "
        "clip. 'clip by clip': each recording on its own; 'joined': the corpus as one stream with 1 s pauses (a "
        "long recording, where batching clips pays). The pipeline is `indexer.inference.asr.Transcriber` with its "
        "defaults (what ingest runs); 'previous pipeline' is what it ran before the long-videos work.",
        "",
        md_table(["variant", "mode", "corpus", "clips", "audio s", "WER %", "wall s", "RTF", "CPU RTF"], rows),
    ])
    text = entry("Transcript quality and speed: the pipeline vs plain faster-whisper",
                 command_line("bench.asr_bench", argv), load, body)
    publish(text, write=not args.no_append)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
