"""Language decision of Whisper base on English speech: how often detection is wrong, how often comparing the
candidate languages' decodes fixes it, and what the comparison costs in ASR time, for a range of thresholds.

    .venv/bin/python -m bench.language_bench                 # all sets; writes its BENCHMARKS.md section
    .venv/bin/python -m bench.language_bench --no-append --quick

Sets (English unless named): every real clip in media/speech (LJSpeech, LibriVox, cards, jfk, hotwords, the
sonnet); the first 0.5 s of each (where Whisper base misdetects); the short clips (<= 5 s) and jfk with white
noise at 5 and 0 dB SNR; **synthetic** accented English (espeak-ng's British regional voices reading LJSpeech and
LibriVox sentences: synthetic speech, labelled so everywhere); and non-English speech that must be left alone
(the German part of multilingual.mp3, real; espeak-ng German, French, Spanish and Welsh, synthetic).

Each clip is processed the way ``indexer.inference.asr.Transcriber`` does it (VAD, beam 5, the token cap): one
detection pass, then a trial decode (the first window, ``indexer.inference.language.trial_segments``) in each
candidate language (the top ones with probability >= 0.05, at most 3) for every clip whose top probability is below
the highest threshold swept, scored with ``indexer.inference.language.score_decode`` and decided with
``choose_decode``. Each decode is timed, so the cost of any threshold follows from one run: without the rule a clip
costs detection + the top language's decode; with it, an uncertain clip also pays the other candidates' trial
decodes. The multilingual clip also goes through the real
``Transcriber`` end to end.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import shutil
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bench.harness import MEDIA, WORK, command_line, entry, md_table, publish, wait_for_quiet

SPEECH = MEDIA / "speech"
SR = 16_000
THRESHOLDS = (0.5, 0.7, 0.8, 0.85, 0.9, 0.95, 0.97)
MARGINS = (0.0, 0.25, 0.5, 0.75, 1.0)
SYNTHETIC_SENTENCES = 2  # per voice (the machine is shared: each clip costs up to 3 decodes)
BRITISH_VOICES = ("en-gb", "en-gb-scotland", "en-gb-x-rp", "en-gb-x-gbclan", "en-gb-x-gbcwmd")
# Non-English sentences for espeak-ng (synthetic): the rule must leave confidently detected languages alone.
FOREIGN = {
    "de": ["Der Zug nach Berlin fährt heute eine Stunde später ab.",
           "Wir haben gestern im Garten einen kleinen Vogel gesehen."],
    "fr": ["Le train pour Paris part avec une heure de retard aujourd'hui.",
           "Nous avons vu un petit oiseau dans le jardin hier soir."],
    "es": ["El tren a Madrid sale hoy con una hora de retraso.",
           "Ayer vimos un pájaro pequeño en el jardín de la casa."],
    "cy": ["Mae'r trên i Gaerdydd yn gadael awr yn hwyr heddiw.",
           "Gwelon ni aderyn bach yn yr ardd ddoe."],
}
GERMAN_FROM_S = 30.0  # multilingual.mp3: English first, German from about here (checked by its transcript)


@dataclass
class Clip:
    set: str
    name: str
    audio: np.ndarray
    language: str  # what is really spoken


@dataclass
class Measured:
    clip: Clip  # the audio is dropped when saved
    top: str
    p: float
    probs: list[tuple[str, float]]
    detect_s: float
    top_full_s: float  # the top language's whole decode (what the transcriber does without the rule)
    trial_s: dict[str, float] = field(default_factory=dict)
    scores: dict[str, object] = field(default_factory=dict)
    texts: dict[str, str] = field(default_factory=dict)

    def decide(self, threshold: float, margin: float | None = None, prefer: str | None = "en"
               ) -> tuple[str, bool, float]:
        """(language kept, compared?, ASR seconds) under ``threshold`` (and the switch ``margin``)."""
        from indexer.inference.language import SWITCH_MARGIN, choose_decode, decide_language

        d = decide_language(self.probs, (), threshold)
        base = self.detect_s + self.top_full_s
        if not d.candidates:
            return d.language or "", False, base
        final = choose_decode(d, [self.scores[lang] for lang, _ in d.candidates],  # type: ignore[misc]
                              SWITCH_MARGIN if margin is None else margin, prefer)
        extra = sum(self.trial_s[lang] for lang, _ in d.candidates if lang != self.top)
        return final.language or "", True, base + extra


def english_clips() -> list[tuple[str, Path]]:
    clips = sorted((SPEECH / "ljspeech").glob("*.wav")) + sorted((SPEECH / "librivox").glob("*.wav"))
    clips += sorted((SPEECH / "cards").glob("*.wav"))
    clips += [SPEECH / "jfk.flac", SPEECH / "hotwords.mp3", SPEECH / "sonnet" / "audio.mp3"]
    return [(str(p.relative_to(SPEECH)), p) for p in clips]


def load(path: Path) -> np.ndarray:
    from faster_whisper import decode_audio

    return decode_audio(str(path), sampling_rate=SR)


def with_noise(audio: np.ndarray, snr_db: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    rms = float(np.sqrt(np.mean(audio.astype(np.float64) ** 2)))
    noise = rng.standard_normal(len(audio)) * rms / 10 ** (snr_db / 20)
    return np.clip(audio + noise, -1.0, 1.0).astype(np.float32)


def sentences() -> list[str]:
    """Short LJSpeech and LibriVox reference sentences for the synthetic voices."""
    from tests.media_fixtures import ljspeech_transcripts

    lj = [t for _, t in sorted(ljspeech_transcripts().items()) if 40 <= len(t) <= 110][:3]
    lv = []
    for line in (SPEECH / "librivox" / "transcription").read_text().splitlines():
        m = re.match(r"\s*<s>(.*)</s>", line)
        if m and len(m.group(1)) <= 110:
            lv.append(m.group(1).strip().lower())
    return lj + lv[:1]


def espeak(text: str, voice: str, out: Path) -> np.ndarray:
    subprocess.run(["espeak-ng", "-v", voice, "-w", str(out), text], check=True, capture_output=True)
    return load(out)


SETS = ("whole", "excerpt", "noise", "synthetic", "german")


def build_sets(quick: bool, sets: Sequence[str] = SETS) -> list[Clip]:
    """The clips of ``sets``, in that order (a run stopped early has measured the first sets)."""
    by_set: dict[str, list[Clip]] = {name: [] for name in SETS}
    english = english_clips()
    if quick:
        english = english[:3] + english[-6:]
    whole = {rel: load(p) for rel, p in english}
    by_set["whole"] = [Clip("real: whole clips", rel, a, "en") for rel, a in whole.items()]
    by_set["excerpt"] = [Clip("real: first 0.5 s", rel, a[:SR // 2], "en") for rel, a in whole.items()]
    # noisy: the shortest real clips (cards, hotwords) and jfk (the machine is shared; each clip costs up to 3 decodes)
    short = [rel for rel in whole if rel.startswith("cards/") or rel in ("jfk.flac", "hotwords.mp3")]
    for snr in (5, 0):
        by_set["noise"] += [Clip(f"real + white noise {snr} dB SNR", rel, with_noise(whole[rel], snr, i), "en")
                            for i, rel in enumerate(short)]
    if "synthetic" in sets and shutil.which("espeak-ng"):
        tmp = WORK / "language_bench"
        tmp.mkdir(parents=True, exist_ok=True)
        texts = sentences()[: 2 if quick else SYNTHETIC_SENTENCES]
        for voice in BRITISH_VOICES[: 2 if quick else None]:
            for i, text in enumerate(texts):
                by_set["synthetic"].append(Clip("SYNTHETIC: espeak-ng British voices", f"{voice} #{i}",
                                                espeak(text, voice, tmp / f"{voice}-{i}.wav"), "en"))
        for lang, lines in FOREIGN.items():
            for i, text in enumerate(lines[:1]):
                by_set["synthetic"].append(Clip("SYNTHETIC: espeak-ng non-English", f"{lang} #{i}",
                                                espeak(text, lang, tmp / f"{lang}-{i}.wav"), lang))
        shutil.rmtree(tmp, ignore_errors=True)
    elif "synthetic" in sets:
        logging.warning("espeak-ng not found: the synthetic sets are skipped")
    multi = load(SPEECH / "multilingual.mp3")
    by_set["german"] = [Clip("real: non-English", "multilingual.mp3 German part", multi[int(GERMAN_FROM_S * SR):],
                             "de")]
    return [clip for name in sets for clip in by_set[name]]


def measure(model, clip: Clip, max_threshold: float) -> Measured:
    from indexer.inference.asr import token_cap
    from indexer.inference.language import decide_language, score_decode, trial_segments

    common = dict(vad_filter=True, beam_size=5, condition_on_previous_text=False)
    start = time.perf_counter()
    _, info = model.transcribe(clip.audio, language=None, **common)  # VAD + features + detection
    detect_s = time.perf_counter() - start
    probs = sorted(info.all_language_probs or [(info.language, info.language_probability)], key=lambda x: -x[1])
    top, p = probs[0]
    cap = token_cap(info.duration_after_vad)
    d = decide_language(probs, (), max_threshold)
    langs = [lang for lang, _ in d.candidates] or [top]
    m = Measured(clip, top, float(p), [(k, float(v)) for k, v in probs], detect_s, 0.0)
    for lang in langs:
        start = time.perf_counter()
        gen = iter(model.transcribe(clip.audio, language=lang, max_new_tokens=cap, **common)[0])
        trial = trial_segments(gen)
        m.trial_s[lang] = time.perf_counter() - start
        m.scores[lang] = score_decode(lang, trial)
        if lang == top:
            rest = list(gen)
            m.top_full_s = time.perf_counter() - start
            trial += rest
        m.texts[lang] = " ".join(s.text.strip() for s in trial)
    return m


def summary(results: list[Measured], threshold: float) -> list[list[object]]:
    rows = []
    for name in dict.fromkeys(r.clip.set for r in results):
        rs = [r for r in results if r.clip.set == name]
        decided = [r.decide(threshold) for r in rs]
        wrong_before = sum(r.top != r.clip.language for r in rs)
        wrong_after = sum(lang != r.clip.language for r, (lang, _, _) in zip(rs, decided, strict=True))
        fixed = sum(r.top != r.clip.language and lang == r.clip.language
                    for r, (lang, _, _) in zip(rs, decided, strict=True))
        broken = sum(r.top == r.clip.language and lang != r.clip.language
                     for r, (lang, _, _) in zip(rs, decided, strict=True))
        paid = sum(c for _, c, _ in decided)
        before = sum(r.detect_s + r.top_full_s for r in rs)
        after = sum(s for _, _, s in decided)
        rows.append([name, len(rs), wrong_before, paid, fixed, broken, wrong_after, before, after,
                     f"{100 * (after / before - 1):+.0f} %"])
    return rows


def sweep(results: list[Measured]) -> list[list[object]]:
    english = [r for r in results if r.clip.language == "en"]
    other = [r for r in results if r.clip.language != "en"]
    rows = []
    for t in THRESHOLDS:
        de = [r.decide(t) for r in english]
        do = [r.decide(t) for r in other]
        before = sum(r.detect_s + r.top_full_s for r in english)
        after = sum(s for _, _, s in de)
        other_wrong = sum(lang != r.clip.language for r, (lang, _, _) in zip(other, do, strict=True))
        rows.append([t, len(english), sum(lang != "en" for lang, _, _ in de), sum(c for _, c, _ in de),
                     f"{100 * (after / before - 1):+.0f} %", f"{other_wrong} of {len(other)}"])
    return rows


def margin_sweep(results: list[Measured], threshold: float) -> list[list[object]]:
    rows = []
    for margin, prefer in [(m, p) for p in ("en", None) for m in MARGINS]:
        decided = [(r, r.decide(threshold, margin, prefer)) for r in results]
        fixed = sum(r.top != r.clip.language and lang == r.clip.language for r, (lang, _, _) in decided)
        broken = sum(r.top == r.clip.language and lang != r.clip.language for r, (lang, _, _) in decided)
        wrong = sum(lang != r.clip.language for r, (lang, _, _) in decided)
        rows.append([margin, prefer or "detected", sum(c for _, (_, c, _) in decided), fixed, broken, wrong,
                     sum(r.top != r.clip.language for r in results)])
    return rows


def save(results: list[Measured], e2e: list[list[object]], load_avg: float, path: Path) -> None:
    from dataclasses import asdict

    rows = [dict(set=r.clip.set, name=r.clip.name, language=r.clip.language, top=r.top, p=r.p, probs=r.probs[:5],
                 detect_s=r.detect_s, top_full_s=r.top_full_s, trial_s=r.trial_s,
                 scores={k: asdict(v) for k, v in r.scores.items()}, texts=r.texts)  # type: ignore[call-overload]
            for r in results]
    path.write_text(json.dumps({"clips": rows, "end_to_end": e2e, "load": load_avg}, ensure_ascii=False, indent=1))


def replay(path: Path) -> tuple[list[Measured], list[list[object]], float]:
    from indexer.inference.language import DecodeScore

    out = []
    saved = json.loads(path.read_text())
    for d in saved["clips"]:
        m = Measured(Clip(d["set"], d["name"], np.zeros(0, np.float32), d["language"]), d["top"], d["p"],
                     [tuple(x) for x in d["probs"]], d["detect_s"], d["top_full_s"], d["trial_s"],
                     {k: DecodeScore(**v) for k, v in d["scores"].items()}, d["texts"])
        out.append(m)
    return out, saved["end_to_end"], float(saved.get("load", "nan"))


def detail(results: list[Measured], threshold: float) -> list[list[object]]:
    rows = []
    for r in results:
        lang, compared, _ = r.decide(threshold)
        if not compared and r.top == r.clip.language:
            continue
        scores = ", ".join(f"{s.describe()}" for s in r.scores.values())  # type: ignore[attr-defined]
        text = r.texts.get(lang, "")
        rows.append([r.clip.set, r.clip.name, f"{r.top} {r.p:.2f}", scores if compared else "(not compared)", lang,
                     (text[:60] + "...") if len(text) > 60 else text])
    return rows


def end_to_end(threshold: float) -> list[list[object]]:
    """multilingual.mp3 (English, then German) through the real Transcriber, rule on."""
    from indexer.inference.asr import Transcriber

    out = []
    t = Transcriber(device="cpu", cpu_threads=2, min_language_probability=threshold)
    for name, audio in (("multilingual.mp3", load(SPEECH / "multilingual.mp3")),
                        ("multilingual.mp3 German part", load(SPEECH / "multilingual.mp3")[int(GERMAN_FROM_S * SR):])):
        start = time.perf_counter()
        r = t.transcribe(audio)
        took = time.perf_counter() - start
        out.append([name, r.language, r.language_method, r.language_decision, f"{took:.1f}",
                    r.text[-70:].replace("|", "/")])
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threshold", type=float, default=None,
                        help="threshold for the per-set table (default: indexer.inference.asr's default)")
    parser.add_argument("--quick", action="store_true", help="a few clips per set (smoke run, not appended)")
    parser.add_argument("--no-append", action="store_true")
    parser.add_argument("--sets", default=",".join(SETS), help=f"comma-separated subset of {','.join(SETS)}")
    parser.add_argument("--save", type=Path, help="also write the per-clip measurements (JSON) here")
    parser.add_argument("--replay", type=Path, help="render the tables from a --save file, decoding nothing")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    from faster_whisper import WhisperModel

    from indexer.inference.language import DEFAULT_MIN_LANGUAGE_PROBABILITY
    from models.bundled import WHISPER_BASE_NAME, resolve_whisper_model

    threshold = args.threshold if args.threshold is not None else DEFAULT_MIN_LANGUAGE_PROBABILITY
    if args.replay:
        results, e2e, load_avg = replay(args.replay)
    else:
        clips = build_sets(args.quick, [x.strip() for x in args.sets.split(",") if x.strip()])
        print(f"{len(clips)} clips", flush=True)
        load_avg = wait_for_quiet()
        model = WhisperModel(resolve_whisper_model(WHISPER_BASE_NAME), device="cpu", compute_type="default",
                             cpu_threads=2)
        model.transcribe(clips[0].audio[:SR], language="en", vad_filter=True)  # warm-up
        results = []
        for i, clip in enumerate(clips):
            results.append(measure(model, clip, max(THRESHOLDS)))
            r = results[-1]
            print(f"[{i + 1}/{len(clips)}] {clip.set} | {clip.name}: {r.top} {r.p:.2f} "
                  + " ".join(s.describe() for s in r.scores.values()), flush=True)  # type: ignore[attr-defined]
            if args.save:  # after every clip: a run stopped early still leaves its measurements
                save(results, [], load_avg, args.save)
        e2e = end_to_end(threshold)
        if args.save:
            save(results, e2e, load_avg, args.save)
    body = "\n".join(([
        "Rendered with `--replay` from the per-clip measurements that one `--save` run of this script wrote "
        "(decisions recomputed with the current rule; timings are that run's).", ""] if args.replay else []) + [
        "Whisper base (bundled), CPU, 2 threads, VAD, beam 5, token cap, no expected languages. 'wrong' = the "
        "language kept is not the one spoken. 'pay' = top detection probability below the threshold and a second "
        "candidate >= 0.05, so the other candidates' first windows are decoded too. ASR s = detection pass + decodes "
        "(per-decode timings of this run; the rule's cost is the other candidates' trial decodes). **SYNTHETIC** "
        "rows are espeak-ng speech, not recordings.",
        "",
        f"Per set, threshold {threshold}:",
        "",
        md_table(["set", "clips", "detection wrong", "pay (compared)", "fixed by rule", "broken by rule",
                  "wrong with rule", "ASR s without", "ASR s with", "extra"], summary(results, threshold)),
        "",
        "Threshold sweep (English clips of all sets; last column: non-English clips whose language the rule "
        "changes wrongly):",
        "",
        md_table(["threshold", "English clips", "wrong with rule", "pay", "extra ASR time", "non-English wrong"],
                 sweep(results)),
        "",
        f"Margin sweep at threshold {threshold} (all clips, English and not): candidate decodes whose trial mean "
        "log-probs are within the margin are a tie, which goes to English when it is a candidate (the default) or "
        "to the detected language:",
        "",
        md_table(["margin", "tie goes to", "compared", "fixed", "broken", "wrong with rule", "wrong detections"],
                 margin_sweep(results, threshold)),
        "",
        f"Clips compared or misdetected at threshold {threshold} (trial mean log-prob per candidate):",
        "",
        md_table(["set", "clip", "detected", "trial scores", "kept", "text kept"], detail(results, threshold)),
        "",
    ] + (["End to end through `Transcriber` (rule on):", "",
           md_table(["audio", "language", "method", "decision", "s", "end of text"], e2e)] if e2e else []))
    text = entry("Language decision on English speech: detection vs comparing candidate decodes",
                 command_line("bench.language_bench", argv), load_avg, body)
    publish(text, write=not (args.no_append or args.quick))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
