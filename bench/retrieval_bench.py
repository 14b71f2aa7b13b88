"""Retrieval quality on real speech: R@1, R@5, MRR and moment accuracy of each ranking change, against the
previous rule and a plain baseline, on one collection, in one run.

    .venv/bin/python -m bench.retrieval_bench                # ingest, evaluate every variant, write BENCHMARKS.md
    .venv/bin/python -m bench.retrieval_bench --no-append
    .venv/bin/python -m bench.retrieval_bench --screen      # on-screen text: its own collection and table

Collection: real recordings from ``../shared/data/media`` wrapped into mp4 (as the tests do): 32 LJSpeech
sentences (three of them with white noise at 5 dB SNR), 5 LibriVox sentences, 5 "cards" utterances, the sonnet
reading, jfk, hotwords, multilingual.mp3, the real video clips (Megamind's dialogue, clips without speech), the
first 0.5 s of the two clips Whisper base misidentifies (language check only), and six clips of **synthetic**
British English (espeak-ng's regional voices; labelled ``british-*``) for accents and numbers. Queries:
``bench/data/retrieval_queries.tsv`` (66, written for this benchmark, none copied from a transcript).

Ingest runs the real worker in speech mode (no CLIP weights offline) with its defaults; every ranking variant
is then evaluated through ``indexer.search.evaluation`` (the code behind ``save-search evaluate-search``) on that
same collection. Variants that read un-normalised text recompute the passage embeddings first
(``reindex_text``: no audio decoded again). The baseline is written here on purpose, independent of the
service: MiniLM cosine of the query with each whole transcript, nothing else.

``--screen``: text shown on screen. Its collection is ``SCREEN_CLIPS`` (slides, captions, lower thirds drawn with
``tests.media_fixtures.text_video`` over the real clips of ``../shared/data/media/video``, several sizes and
contrasts; five with a real speech track: the "cards" and LibriVox recordings) among the 32 LJSpeech clips;
queries: the ``screen`` kind of the queries file (paraphrases of what is shown, with the stretch where it is
visible) and the LJSpeech paraphrases (speech must not get worse). Ingest runs with OCR on (the default), so
the worker's OCR share of ingest time comes with it. Variants: no OCR channel, on-screen text read as speech
(one channel: the simplest alternative), the screen channel (own calibration), and a plain baseline (MiniLM
over each video's transcript and on-screen text joined). The main run leaves the ``screen`` queries out.
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

from bench.harness import WORK, command_line, entry, md_table, publish, wait_for_quiet

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


# (file, real clip under it, seconds, what is shown, speech track under media/speech or None)
SCREEN_CLIPS = [
    ("screen-budget.mp4", "boat.mp4", 10.0, [
        (2.0, 8.0, "City budget 2027: libraries get 4 million more", "slide", "large", "high")],
     "cards/001.wav"),
    ("screen-mayor.mp4", "birthday.mp4", 12.0, [
        (1.0, 6.0, "Maria Lopez, Mayor of Springfield", "lower_third", "medium", "high"),
        (6.0, 11.0, "Bridge repairs start on Monday", "lower_third", "medium", "high")], None),
    ("screen-recipe.mp4", "bigbuckbunny.mp4", 15.0, [
        (0.0, 5.0, "Step 1: whisk two eggs with sugar", "caption", "medium", "high"),
        (5.0, 10.0, "Step 2: fold in 200 g of flour", "caption", "medium", "high"),
        (10.0, 15.0, "Step 3: bake at 180 degrees for 25 minutes", "caption", "medium", "high")],
     "librivox/sense_and_sensibility_01_austen_64kb-0870.wav"),
    ("screen-score.mp4", "applausing.mp4", 8.0, [
        (1.0, 7.0, "FINAL SCORE Rovers 3 United 1", "lower_third", "large", "high")], None),
    ("screen-skate.mp4", "skateboarding_dog.mp4", 9.0, [
        (2.0, 8.0, "Our dog learned to ride a skateboard in two weeks", "caption", "small", "high")], None),
    ("screen-storm.mp4", "boat.mp4", 10.0, [
        (0.0, 10.0, "BREAKING: Storm closes all schools in the county", "lower_third", "medium", "high")],
     "cards/003.wav"),
    ("screen-bike.mp4", "IronMan.mp4", 9.0, [
        (1.0, 8.0, "Introducing the Aurora X2 electric bicycle", "slide", "large", "low")], None),
    ("screen-lecture.mp4", "silence_girl.mp4", 11.0, [
        (0.0, 11.0, "Lecture 5: Photosynthesis converts light into chemical energy", "slide", "medium", "high")],
     "librivox/sense_and_sensibility_01_austen_64kb-0880.wav"),
    ("screen-floor.mp4", "dog_barking.mp4", 8.0, [
        (2.0, 7.0, "Warning: wet floor, please use the side entrance", "caption", "medium", "low")], None),
    ("screen-ocean.mp4", "boat.mp4", 10.0, [
        (3.0, 8.0, "I never thought I would see the ocean again", "caption", "small", "low")], None),
    ("screen-gutenberg.mp4", "bigbuckbunny.mp4", 10.0, [
        (2.0, 9.0, "Gutenberg printed the first Bible with movable type around 1455", "slide", "medium", "high")],
     "cards/005.wav"),
    ("screen-train.mp4", "birthday.mp4", 9.0, [
        (1.0, 8.0, "The train to Edinburgh departs from platform 9", "caption", "large", "high")], None),
]


def build_screen_clips(out: Path) -> list[Path]:
    """The on-screen text clips of ``--screen`` (``SCREEN_CLIPS``) and the 32 LJSpeech clips among them."""
    from tests.media_fixtures import TextShown, speech_video, text_video

    out.mkdir(parents=True, exist_ok=True)
    clips = []
    for name, clip, seconds, shown, speech in SCREEN_CLIPS:
        path = out / name
        if not path.exists():
            text_video(path, [TextShown(*x) for x in shown], seconds, clip=clip,
                       speech=MEDIA / "speech" / speech if speech else None)
        clips.append(path)
    for wav in sorted((MEDIA / "speech" / "ljspeech").glob("*.wav")):
        path = out / f"{wav.stem}.mp4"
        if not path.exists():
            speech_video(wav, path)
        clips.append(path)
    return clips


def ingest(home: Path, clips: Sequence[Path], **settings_changes):
    """The real worker, speech mode, default settings (unless changed), over one bulk job; returns the loaded
    Services and the worker's seconds per stage."""
    from indexer.ingest.jobs import JobQueue
    from indexer.ingest.worker import Worker
    from indexer.services import Services
    from indexer.settings import Settings

    settings = Settings(home=home, **settings_changes)
    services = Services(settings)
    queue = JobQueue(services.sessions)
    worker = Worker(services, owner="retrieval-bench")
    worker.startup()
    queue.enqueue("bulk", [str(p) for p in clips])
    while worker.run_once():
        pass
    return services, dict(worker.stats)


def baseline(services, queries, with_screen_text: bool = False) -> list:
    """Plain MiniLM over whole transcripts (``with_screen_text``: and all the video's on-screen text after it):
    what anyone writes in an afternoon."""
    from sqlalchemy import select

    from indexer.enums import Source
    from indexer.search.evaluation import QueryOutcome
    from indexer.storage.db import Segment, Video

    with services.sessions() as s:
        rows = s.execute(select(Video.id, Video.filename, Video.transcript).where(Video.status == "indexed")
                         .order_by(Video.id)).all()
        shown: dict[int, list[str]] = {}
        if with_screen_text:
            for vid, text in s.execute(select(Segment.video_id, Segment.text).where(Segment.source == Source.SCREEN)
                                       .order_by(Segment.video_id, Segment.idx)):
                shown.setdefault(vid, []).append(text)
    ids = np.array([r.id for r in rows])
    names = [r.filename for r in rows]
    documents = [" ".join([r.transcript, *shown.get(r.id, [])]).strip() for r in rows]
    has_text = np.array([bool(d) for d in documents])
    docs = services.sentences.encode([d or "-" for d in documents])
    q = services.sentences.encode([x.query for x in queries])
    sims = np.where(has_text[None, :], q @ docs.T, -1.0)
    out = []
    for i, x in enumerate(queries):
        order = np.lexsort((ids, -sims[i]))
        ranked = [names[j] for j in order]
        rank = ranked.index(x.expected) + 1 if x.expected in ranked else None
        out.append(QueryOutcome(x.query, x.expected, x.kind, rank, None, None, ranked[0]))
    return out


DEFAULT = "passages + coverage 0.1, moment = best segment grown into a window better by > 0.04 (default)"


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
        ("passages + coverage 0.1, moment = best segment (default until 2026-12-08)", False,
         dict(passages=True, lexical="coverage", lexical_weight=0.1, moment="segment", grow_margin=0.0)),
        ("passages + coverage 0.1, moment = best window", False, dict(passages=True, lexical="coverage",
                                                                      lexical_weight=0.1, moment="passage")),
        ("passages + coverage 0.1, moment = best segment of the best window", False,
         dict(passages=True, lexical="coverage", lexical_weight=0.1, moment="segment-in-window")),
        ("passages + coverage 0.1, moment = best segment grown into a better window", False,
         dict(passages=True, lexical="coverage", lexical_weight=0.1, moment="segment-grown", grow_margin=0.0)),
        ("passages + coverage 0.1, moment = best segment grown into a window better by > 0.02", False,
         dict(passages=True, lexical="coverage", lexical_weight=0.1, moment="segment-grown", grow_margin=0.02)),
        (DEFAULT, False, dict(passages=True, lexical="coverage", lexical_weight=0.1)),
        ("passages + coverage 0.2", False, dict(passages=True, lexical="coverage", lexical_weight=0.2)),
        ("passages + coverage 0.3", False, dict(passages=True, lexical="coverage", lexical_weight=0.3)),
        ("passages + coverage 0.5", False, dict(passages=True, lexical="coverage", lexical_weight=0.5)),
        ("passages + coverage 0.1, normalised encoder input", True, dict(passages=True, lexical="coverage",
                                                                         lexical_weight=0.1)),
    ]


def reliability(pairs: list[tuple[float, bool]], ab: tuple[float, float]) -> list[list[object]]:
    """Rows (score range, results, share right) of a calibrated channel score, to show what a score means."""
    from indexer.search.ranking import calibrate

    p = calibrate(np.array([r for r, _ in pairs]), ab)
    right = np.array([t for _, t in pairs])
    rows = []
    for lo, hi in [(0.0, 0.2), (0.2, 0.4), (0.4, 0.6), (0.6, 0.8), (0.8, 1.01)]:
        m = (p >= lo) & (p < hi)
        rows.append([f"{lo:.1f}-{min(hi, 1.0):.1f}", int(m.sum()), float(right[m].mean()) if m.any() else float("nan")])
    return rows


def run(args: argparse.Namespace, command: str) -> str:
    from indexer.ingest.reindex import rebuild_indexes, reindex_text
    from indexer.search import evaluation
    from indexer.search.ranking import Ranking
    from indexer.search.service import SearchService
    from indexer.settings import SearchSettings

    work = WORK / "retrieval"
    if args.fresh:
        shutil.rmtree(work / "home", ignore_errors=True)
    clips = build_clips(work / "clips")
    queries = [q for q in evaluation.read_queries(args.queries) if q.kind != "screen"]  # see --screen
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
            services.settings.search.normalize_sentence_input = normalized
            reindex_text(services)
            rebuild_indexes(services)
            current_norm = normalized
        ranking = Ranking.from_settings(services.settings).with_(normalize_sentence_input=normalized, **changes)
        report = evaluation.evaluate(SearchService(services, ranking=ranking), queries)
        reports[name] = report
        rows.append(_row(name, report))
        print(rows[-1], flush=True)
    if current_norm != SearchSettings().normalize_sentence_input:  # leave the collection as ingested
        services.settings.search.normalize_sentence_input = not current_norm
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

    from indexer.storage.db import Video

    with services.sessions() as s:
        rows = s.execute(select(Video.filename, Video.language, Video.language_probability, Video.language_method,
                                Video.language_decision).order_by(Video.filename)).all()
    keep = ("british-", "excerpt-", "LJ001-0026", "LJ001-0027", "LJ001-0028", "multilingual", "Megamind", "cards-")
    return [[r.filename, r.language or "-", round(r.language_probability or 0.0, 2), r.language_method or "-",
             r.language_decision or "-"] for r in rows if r.filename.startswith(keep)]

def run_screen(args: argparse.Namespace, command: str) -> str:
    """On-screen text queries with and without the OCR channel, against the simplest alternatives."""
    from indexer.search import evaluation
    from indexer.search.ranking import Ranking
    from indexer.search.service import SearchService

    work = WORK / "retrieval-screen"
    if args.fresh:
        shutil.rmtree(work / "home", ignore_errors=True)
    clips = build_screen_clips(work / "clips")
    names = {c.name for c in clips}
    queries = [q for q in evaluation.read_queries(args.queries) if q.expected in names]
    screen_queries = [q for q in queries if q.kind == "screen"]
    load = wait_for_quiet()
    services, stats = ingest(work / "home", clips)
    rows, reports = [], {}

    def add(name: str, report, moments_inside: float | None) -> None:
        reports[name] = report
        screen = report.by_kind.get("screen", {})
        speech = evaluation.summarize([o for o in report.outcomes if o.kind != "screen"])  # every other kind
        rows.append([name, screen.get("r1", float("nan")), screen.get("r5", float("nan")),
                     screen.get("mrr", float("nan")), moments_inside if moments_inside is not None else float("nan"),
                     speech.r1, speech.mrr])
        print(rows[-1], flush=True)

    add("baseline: MiniLM over whole transcripts", evaluation.summarize(baseline(services, queries)), None)
    add("baseline: MiniLM over transcript + all on-screen text",
        evaluation.summarize(baseline(services, queries, with_screen_text=True)), None)
    base = Ranking.from_settings(services.settings)
    for name, ranking in [("without OCR channel (speech only)", base.with_(screen="off")),
                          ("on-screen text read as speech (one channel)", base.with_(screen="as-speech")),
                          (SPEECH_MAP, base.with_(screen_calibration=base.speech_calibration)),
                          (SCREEN_DEFAULT, base)]:
        report = evaluation.evaluate(SearchService(services, ranking=ranking), queries)
        add(name, report, _inside(report, screen_queries))
    # The screen map fitted on the results of the channel under the speech map (what the default was fitted on).
    pairs = evaluation.calibration_pairs(reports[SPEECH_MAP].outcomes, "screen")
    fit = evaluation.fit_calibration(pairs)
    refit = evaluation.evaluate(SearchService(services, ranking=base.with_(screen_calibration=fit)), queries)
    add("screen channel, calibration fitted in this run (in sample)", refit, _inside(refit, screen_queries))
    ocr_share = stats.get("ocr", 0.0) / max(1e-9, sum(v for k, v in stats.items()
                                                       if k not in ("videos", "video_seconds")))
    with services.sessions() as s:
        spans = _screen_spans(s)
    body = [
        f"{len(SCREEN_CLIPS)} clips with on-screen text (rendered over the real clips; "
        f"{sum(1 for c in SCREEN_CLIPS if c[4])} with a real speech track) among {len(clips) - len(SCREEN_CLIPS)} "
        f"LJSpeech clips; {len(screen_queries)} paraphrased on-screen-text queries and "
        f"{len(queries) - len(screen_queries)} LJSpeech queries (`{QUERIES.relative_to(ROOT)}`; paraphrases, "
        "numbers, adversarial: the speech columns), speech mode, "
        "OCR on (default). "
        + (f"Ingest: {stats.get('ocr', 0):.0f} s of OCR, {ocr_share:.0%} of the worker's stage time "
           f"({stats.get('asr', 0):.0f} s of ASR; wall time on a shared machine). " if stats.get("ocr") else
           "The collection of an earlier run of this command (`--fresh` ingests again). ")
        + "Moment inside: the returned moment of the right video starts no earlier than 1 s before the text "
        "appears and before it disappears.",
        "",
        md_table(["variant", "R@1 screen", "R@5 screen", "MRR screen", "moment inside", "R@1 speech",
                  "MRR speech"], rows),
        "",
        f"Screen calibration fitted on the screen channel's results under the speech map ({len(pairs)} results, "
        f"in sample): a = {fit[0]:.2f}, b = {fit[1]:.2f} (`SAVE_SEARCH_SCREEN_CALIBRATION`; the default is "
        f"{', '.join(f'{x:g}' for x in base.screen_calibration)}). What a screen_score means with that map:",
        "",
        md_table(["screen_score", "results", "share that were the right video"], reliability(pairs, fit)),
        "",
        "On-screen text read from each clip (`indexer.inference.ocr` spans, start-end s):",
        "",
        md_table(["clip", "spans"], spans),
        "",
        "Queries the default does not put first:",
        "",
        *[f"- [{o.rank or '-'}] {o.query!r}: wanted {o.expected}, got {o.top}"
          for o in reports[SCREEN_DEFAULT].outcomes if o.rank != 1],
    ]
    return entry("Retrieval of on-screen text", command, load, "\n".join(body))


SCREEN_DEFAULT = "screen channel, own calibration (default)"
SPEECH_MAP = "screen channel, speech's calibration"


def _inside(report, screen_queries) -> float:
    """Share of on-screen-text queries found first whose moment starts inside the stretch the text is shown."""
    wanted = {q.query: q for q in screen_queries}
    hits = [o for o in report.outcomes if o.query in wanted and o.rank == 1]
    if not hits:
        return float("nan")
    inside = [o.moment_start is not None and wanted[o.query].start - 1.0 <= o.moment_start < wanted[o.query].end
              for o in hits]
    return sum(inside) / len(wanted)


def _screen_spans(session) -> list[list[object]]:
    from sqlalchemy import select

    from indexer.enums import Source
    from indexer.storage.db import Segment, Video

    out: dict[str, list[str]] = {}
    for name, start, end, text in session.execute(
            select(Video.filename, Segment.start_s, Segment.end_s, Segment.text).join(Segment)
            .where(Segment.source == Source.SCREEN).order_by(Video.filename, Segment.start_s)):
        out.setdefault(name, []).append(f"{start:.0f}-{end:.0f}: {' '.join(text.split())}")
    return [[name, " / ".join(texts)] for name, texts in sorted(out.items())]



def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--queries", type=Path, default=QUERIES)
    parser.add_argument("--fresh", action="store_true", help="Ingest again even if a previous run's collection "
                                                              "is there.")
    parser.add_argument("--no-append", action="store_true", help="Print only; do not write BENCHMARKS.md.")
    parser.add_argument("--screen", action="store_true", help="On-screen text queries on their own collection.")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    publish((run_screen if args.screen else run)(args, command_line("bench.retrieval_bench", argv)),
            write=not args.no_append)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

