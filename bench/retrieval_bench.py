"""Retrieval quality on real speech: R@1, R@5, MRR and moment accuracy of each ranking change, against the
previous rule and a plain baseline, on one collection, in one run.

    .venv/bin/python -m bench.retrieval_bench                # ingest, evaluate every variant, append to BENCHMARKS.md
    .venv/bin/python -m bench.retrieval_bench --no-append

Collection: real recordings from ``../shared/data/media`` wrapped into mp4 (as the tests do): 32 LJSpeech
sentences (three of them with white noise at 5 dB SNR), 5 LibriVox sentences, 5 "cards" utterances, the sonnet
reading, jfk, hotwords, multilingual.mp3, the real video clips (Megamind's dialogue, clips without speech), the
first 0.5 s of the two clips Whisper base misidentifies (language check only), and six clips of **synthetic**
British English (espeak-ng's regional voices; labelled ``british-*``) for accents and numbers. Queries:
``bench/data/retrieval_queries.tsv`` (66, written for this benchmark, none copied from a transcript).

Ingest runs the real worker in speech mode (no CLIP weights offline) with its defaults; every ranking variant
is then evaluated through ``indexer.evaluation`` (the code behind ``save-search evaluate-search``) on that
same collection. Variants that read un-normalised text recompute the passage embeddings first
(``reindex_text``: no audio decoded again). The baseline is written here on purpose, independent of the
service: MiniLM cosine of the query with each whole transcript, nothing else.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from bench.common import WORK, command_line, entry, md_table, publish, wait_for_quiet

ROOT = Path(__file__).resolve().parents[1]
MEDIA = ROOT.parent / "shared" / "data" / "media"
QUERIES = ROOT / "bench" / "data" / "retrieval_queries.tsv"
SYNTHETIC = [  # (file, espeak-ng voice, text): synthetic British English, accents and numbers
    ("british-rp.mp4", "en-gb-x-rp",
     "The council has approved plans for a new footbridge over the river, at a cost of twelve million pounds."),
    ("british-scotland.mp4", "en-gb-scotland",
     "Heavy snow has closed the A9 north of Perth, and drivers are advised to avoid the route until Tuesday."),
    ("british-welsh.mp4", "en-gb-x-gbcwmd",
     "Flights from Cardiff to Amsterdam were cancelled this morning because of strong winds."),
    ("british-lancashire.mp4", "en-gb-x-gbclan",
     "The museum will reopen in the autumn after a two year restoration of its Victorian glass roof."),
    ("british-gb.mp4", "en-gb",
     "Researchers say the colour of the sea near the harbour has changed since the nineteen eighties."),
    ("british-rp-train.mp4", "en-gb-x-rp",
     "The ten fifteen service to Leeds will now depart from platform four."),
]
NOISY = ("LJ001-0026", "LJ001-0027", "LJ001-0028")  # white noise at 5 dB SNR
EXCERPTS = ("ljspeech/LJ001-0011.wav", "librivox/sense_and_sensibility_01_austen_64kb-0890.wav")


def build_clips(out: Path) -> list[Path]:
    """The collection's media files (mp4 from real recordings, the real video clips, the synthetic voices)."""
    from tests.media_fixtures import read_mono_16k, speech_video

    out.mkdir(parents=True, exist_ok=True)
    speech = MEDIA / "speech"
    rng = np.random.default_rng(0)
    clips: list[Path] = []

    def wrap(audio, name: str, color=(40, 90, 160)) -> None:
        path = out / name
        if not path.exists():
            speech_video(audio, path, color=color)
        clips.append(path)

    for wav in sorted((speech / "ljspeech").glob("*.wav")):
        if wav.stem in NOISY:
            x = read_mono_16k(wav)
            noise = rng.standard_normal(len(x)).astype(np.float32) * np.sqrt(np.mean(x**2) / 10 ** (5 / 10))
            wrap(np.clip(x + noise, -1, 1), f"{wav.stem}.mp4")
        else:
            wrap(wav, f"{wav.stem}.mp4")
    for wav in sorted((speech / "librivox").glob("*.wav")):
        wrap(wav, f"austen-{wav.stem.rsplit('-', 1)[-1]}.mp4", color=(120, 60, 60))
    for wav in sorted((speech / "cards").glob("*.wav")):
        wrap(wav, f"cards-{wav.stem}.mp4", color=(20, 120, 20))
    wrap(speech / "sonnet" / "audio.mp3", "sonnet.mp4")
    for name in ("jfk.flac", "hotwords.mp3", "multilingual.mp3"):
        wrap(speech / name, f"{Path(name).stem}.mp4")
    for rel in EXCERPTS:
        wrap(read_mono_16k(speech / rel)[:8000], f"excerpt-{Path(rel).stem}.mp4")
    for name, voice, text in SYNTHETIC:
        path = out / name
        if not path.exists():
            with tempfile.TemporaryDirectory() as tmp:
                wav = Path(tmp) / "voice.wav"
                subprocess.run(["espeak-ng", "-v", voice, "-s", "150", "-w", str(wav), text], check=True)
                speech_video(wav, path, color=(90, 90, 20))
        clips.append(path)
    for video in sorted((MEDIA / "video").iterdir()):
        path = out / video.name
        if not path.exists():
            shutil.copy(video, path)
        clips.append(path)
    return clips


def ingest(home: Path, clips: Sequence[Path], **settings_changes):
    """The real worker, speech mode, default settings (unless changed), over one bulk job; returns the loaded
    Services and the worker's seconds per stage."""
    from indexer.jobs import JobQueue
    from indexer.settings import Settings
    from indexer.worker import Services, Worker

    settings = Settings(home=home, **settings_changes)
    services = Services(settings)
    queue = JobQueue(services.sessions)
    worker = Worker(services, owner="retrieval-bench")
    worker.startup()
    queue.enqueue("bulk", [str(p) for p in clips])
    while worker.run_once():
        pass
    return services, dict(worker.stats)


def baseline(services, queries) -> list:
    """Plain MiniLM over whole transcripts: what anyone writes in an afternoon."""
    from sqlalchemy import select

    from indexer.db import Video
    from indexer.evaluation import QueryOutcome

    with services.sessions() as s:
        rows = s.execute(select(Video.id, Video.filename, Video.transcript).where(Video.status == "indexed")
                         .order_by(Video.id)).all()
    ids = np.array([r.id for r in rows])
    names = [r.filename for r in rows]
    has_text = np.array([bool(r.transcript.strip()) for r in rows])
    docs = services.sentences.encode([r.transcript or "-" for r in rows])
    q = services.sentences.encode([x.query for x in queries])
    sims = np.where(has_text[None, :], q @ docs.T, -1.0)
    out = []
    for i, x in enumerate(queries):
        order = np.lexsort((ids, -sims[i]))
        ranked = [names[j] for j in order]
        rank = ranked.index(x.expected) + 1 if x.expected in ranked else None
        out.append(QueryOutcome(x.query, x.expected, x.kind, rank, None, None, ranked[0]))
    return out


DEFAULT = "passages + coverage 0.1, moment = best segment (default)"


def variants():
    """(name, normalised encoder input, Ranking changes) in the order the table shows them."""
    return [
        ("previous rule: per segment max(cosine, bm25/(1+bm25))", False,
         dict(passages=False, lexical="max-fulltext")),
        ("dense only: segments", False, dict(passages=False, lexical="none")),
        ("+ passages (windows, whole transcript)", False, dict(passages=True, lexical="none")),
        ("+ passages, moment = best window", False, dict(passages=True, lexical="none", moment="passage")),
        ("+ lexical coverage 0.1 (segments only)", False, dict(passages=False, lexical="coverage",
                                                               lexical_weight=0.1)),
        ("passages + coverage 0.05", False, dict(passages=True, lexical="coverage", lexical_weight=0.05)),
        (DEFAULT, False, dict(passages=True, lexical="coverage", lexical_weight=0.1)),
        ("passages + coverage 0.1, moment = best window", False, dict(passages=True, lexical="coverage",
                                                                      lexical_weight=0.1, moment="passage")),
        ("passages + coverage 0.2", False, dict(passages=True, lexical="coverage", lexical_weight=0.2)),
        ("passages + coverage 0.3", False, dict(passages=True, lexical="coverage", lexical_weight=0.3)),
        ("passages + coverage 0.5", False, dict(passages=True, lexical="coverage", lexical_weight=0.5)),
        ("passages + coverage 0.1, normalised encoder input", True, dict(passages=True, lexical="coverage",
                                                                         lexical_weight=0.1)),
    ]


def reliability(pairs: list[tuple[float, bool]], ab: tuple[float, float]) -> list[list[object]]:
    """Rows (score range, results, share right) of the calibrated speech score, to show what a score means."""
    from indexer.search import calibrate

    p = calibrate(np.array([r for r, _ in pairs]), ab)
    right = np.array([t for _, t in pairs])
    rows = []
    for lo, hi in [(0.0, 0.2), (0.2, 0.4), (0.4, 0.6), (0.6, 0.8), (0.8, 1.01)]:
        m = (p >= lo) & (p < hi)
        rows.append([f"{lo:.1f}-{min(hi, 1.0):.1f}", int(m.sum()), float(right[m].mean()) if m.any() else float("nan")])
    return rows


def run(args: argparse.Namespace, command: str) -> str:
    from indexer import evaluation
    from indexer.reindex import rebuild_indexes, reindex_text
    from indexer.search import Ranking, SearchService

    work = WORK / "retrieval"
    if args.fresh:
        shutil.rmtree(work / "home", ignore_errors=True)
    clips = build_clips(work / "clips")
    queries = evaluation.read_queries(args.queries)
    load = wait_for_quiet()
    services, stats = ingest(work / "home", clips)
    languages = _languages(services)

    rows = []
    base = evaluation.summarize(baseline(services, queries))
    rows.append(_row("baseline: MiniLM over whole transcripts", base))
    reports = {}
    current_norm = None
    for name, normalized, changes in variants():
        if normalized != current_norm:
            services.settings.normalize_sentence_input = normalized
            reindex_text(services)
            rebuild_indexes(services)
            current_norm = normalized
        ranking = Ranking.from_settings(services.settings).with_(normalize_sentence_input=normalized, **changes)
        report = evaluation.evaluate(SearchService(services, ranking=ranking), queries)
        reports[name] = report
        rows.append(_row(name, report))
        print(rows[-1], flush=True)
    if current_norm != services.settings.__class__().normalize_sentence_input:  # leave the collection as ingested
        services.settings.normalize_sentence_input = not current_norm
        reindex_text(services)
        rebuild_indexes(services)
    default = reports[DEFAULT]
    # Moments with whole Whisper segments (no clause pieces): the sonnet again, in a collection of its own.
    moment_queries = [q for q in queries if q.kind == "moment"]
    whole, _ = ingest(work / "home-whole-segments", [c for c in clips if c.name == "sonnet.mp4"],
                                asr_split_clauses=False)
    whole_report = evaluation.evaluate(SearchService(whole), moment_queries)
    clause_report = evaluation.evaluate(SearchService(services), moment_queries)
    pairs = evaluation.calibration_pairs(default.outcomes)
    fit = evaluation.fit_calibration(pairs)
    body = [
        f"{len(clips)} clips ({sum(1 for c in clips if c.name.startswith('british-'))} synthetic), "
        f"{len(queries)} queries (`{QUERIES.relative_to(ROOT)}`), speech mode, "
        + (f"ingest {stats['asr']:.0f} s of ASR. " if stats.get("asr") else
           "the collection of an earlier run of this command (`--fresh` ingests again). ")
        + f"Moments: right when the returned moment starts within "
        f"{evaluation.MOMENT_TOLERANCE_S} s of where the answer starts (sonnet line timings).",
        "",
        md_table(["variant", "R@1", "R@5", "MRR", "moments", "R@1 number", "R@1 adversarial", "R@1 accent",
                  "R@1 paraphrase"], rows),
        "",
        f"Moments of the {len(moment_queries)} sonnet-line queries, default ranking: "
        f"{clause_report.moment_accuracy:.3f} with clause pieces (word timestamps, the default) vs "
        f"{whole_report.moment_accuracy:.3f} with whole Whisper segments (`SAVE_SEARCH_ASR_SPLIT_CLAUSES=0`).",
        "",
        f"Speech calibration fitted on the default variant's results: a = {fit[0]:.2f}, b = {fit[1]:.2f} "
        f"(`SAVE_SEARCH_SPEECH_CALIBRATION`). What a speech_score means with that map:",
        "",
        md_table(["speech_score", "results", "share that were the right video"], reliability(pairs, fit)),
        "",
        "Transcript languages of the hard clips (the default language rule):",
        "",
        md_table(["clip", "language", "p", "method", "decision"], languages),
        "",
        "Queries the default does not put first:",
        "",
        *[f"- [{o.rank or '-'}] {o.query!r}: wanted {o.expected}, got {o.top}"
          for o in default.outcomes if o.rank != 1],
    ]
    return entry("Retrieval quality on real speech", command, load, "\n".join(body))


def _row(name: str, report) -> list[object]:
    def kind(k: str) -> object:
        m = report.by_kind.get(k)
        return m["r1"] if m else float("nan")

    moments = report.moment_accuracy if report.moment_accuracy is not None else float("nan")
    return [name, report.r1, report.r5, report.mrr, moments, kind("number"), kind("adversarial"), kind("accent"),
            kind("paraphrase")]


def _languages(services) -> list[list[object]]:
    from sqlalchemy import select

    from indexer.db import Video

    with services.sessions() as s:
        rows = s.execute(select(Video.filename, Video.language, Video.language_probability, Video.language_method,
                                Video.language_decision).order_by(Video.filename)).all()
    keep = ("british-", "excerpt-", "LJ001-0026", "LJ001-0027", "LJ001-0028", "multilingual", "Megamind", "cards-")
    return [[r.filename, r.language or "-", round(r.language_probability or 0.0, 2), r.language_method or "-",
             r.language_decision or "-"] for r in rows if r.filename.startswith(keep)]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--queries", type=Path, default=QUERIES)
    parser.add_argument("--fresh", action="store_true", help="Ingest again even if a previous run's collection "
                                                              "is there.")
    parser.add_argument("--no-append", action="store_true", help="Print only; do not append to BENCHMARKS.md.")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    publish(run(args, command_line("bench.retrieval_bench", argv)), append=not args.no_append)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
