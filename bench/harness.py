"""What every benchmark script shares: the machine, a quiet-machine wait, timing, tables, the BENCHMARKS.md
section, and the pieces several benchmarks run (the real clips through the real worker, a milvus-lite server, a
scratch PostgreSQL database, the benchmark SAVE model, a prepopulated index). No benchmark imports another
benchmark: what two of them need lives here (or, for the synthetic query collections, in ``bench/synthetic.py``).
Project code, torch, numpy, faiss and pymilvus are imported inside the functions that need them, so every script
starts (and ``--help`` answers) without loading them.

BENCHMARKS.md is a current document, not a log: one section per topic, each headed ``### <title>`` (no date in
the heading, so its link anchor stays the same from run to run; the date is the section's first word). When a
benchmark finishes, ``publish`` REPLACES the section with the same title (a legacy ``### <title> (YYYY-MM-DD)``
heading matches too), in place; a title seen for the first time goes in just before the
``## Design choices from these numbers`` heading (or at the end). The whole section is replaced, notes written
under it by hand included: conclusions that must outlive a rerun belong in "Design choices"; a replaced run that
something still cites is moved to ``bench/history/<topic>.md`` by hand (git has the old text). The summary table
at the top of BENCHMARKS.md is left to humans: a headline number is a judgment, so ``publish`` only prints the
summary rows that link to the replaced section, to be updated by hand. ``SAVE_BENCH_OUTPUT`` names another file
to write instead of BENCHMARKS.md (a scratch copy, for a trial run).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import os
import platform
import re
import shlex
import shutil
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "BENCHMARKS.md"
# Everything big goes below here and is deleted afterwards (the brief: never leave synthetic data behind).
WORK = Path(os.environ.get("SAVE_BENCH_WORK", "/tmp/save-bench"))
QUIET_LOAD = 1.5  # 1-min load average below which a measurement may start
QUIET_WAIT_S = 600.0  # wait at most this long for it, then measure anyway and record the load
# Where a section with a new title goes: before this heading (the design choices come after the measurements).
NEW_SECTIONS_BEFORE = "## Design choices from these numbers"

DIM = 512  # pooled SAVE vector and per-frame feature size (CLIP ViT-B/32)
FRAMES = 12  # frame features stored per video


# --------------------------------------------------------------------------------------------------- machine and timing
def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def ram_gib() -> float:
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 1024**2
    return float("nan")


def machine(extra: str = "") -> str:
    """One line naming the machine: CPU model, cores, RAM, Python, torch and its thread count."""
    try:
        import torch

        torch_info = f", torch {torch.__version__} ({torch.get_num_threads()} threads)"
    except ImportError:
        torch_info = ""
    text = (f"{cpu_model()} ({platform.machine()}), {os.cpu_count()} cores, {ram_gib():.1f} GiB RAM, "
            f"Python {platform.python_version()}{torch_info}")
    return f"{text}, {extra}" if extra else text


def set_omp_wait_policy(policy: str) -> str:
    """Set ``OMP_WAIT_POLICY`` for this process; returns the policy in effect, for the report.

    torch and faiss (and CTranslate2) each bundle their own libgomp. With the default (active) policy the threads
    of one runtime spin for a while after each parallel region, and on 2 cores they starve the other runtime's
    threads: a faiss HNSW search followed by torch re-scoring then takes ~10x longer (see the OpenMP section in
    BENCHMARKS.md). libgomp reads the variable when it is loaded, so this must run before torch/faiss are imported.
    """
    if policy == "default":
        return os.environ.get("OMP_WAIT_POLICY", "default (active)")
    if any(m in sys.modules for m in ("torch", "faiss", "ctranslate2")):
        raise RuntimeError("set_omp_wait_policy must run before torch, faiss or ctranslate2 is imported")
    os.environ["OMP_WAIT_POLICY"] = policy.upper()
    return policy.upper()


def load1() -> float:
    return os.getloadavg()[0]


def wait_for_quiet(threshold: float = QUIET_LOAD, max_wait_s: float = QUIET_WAIT_S, poll_s: float = 10.0) -> float:
    """Wait until the 1-min load average is below ``threshold`` (the machine is shared), at most ``max_wait_s``.

    Returns the load average when measuring starts, which goes into the report: a loaded machine makes every
    number slower, and the reader should know.
    """
    if os.environ.get("SAVE_BENCH_NO_WAIT"):  # dry runs and smoke tests: no numbers worth waiting for
        return load1()
    deadline = time.monotonic() + max_wait_s
    load = load1()
    if load >= threshold:
        print(f"load average {load:.2f} >= {threshold}: waiting up to {max_wait_s:.0f} s for a quieter machine",
              flush=True)
    while load >= threshold and time.monotonic() < deadline:
        time.sleep(poll_s)
        load = load1()
    if load >= threshold:
        print(f"still loaded ({load:.2f}); measuring anyway", flush=True)
    return load


def rss_bytes() -> int:
    """Resident set size of this process (from /proc, so no psutil dependency)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def free_disk_gib(path: Path) -> float:
    path.mkdir(parents=True, exist_ok=True)
    return shutil.disk_usage(path).free / 1024**3


def require_disk(path: Path, need_gib: float) -> None:
    """Refuse to start writing synthetic files that would not fit (with a 5 GiB margin for everyone else)."""
    free = free_disk_gib(path)
    if free < need_gib + 5:
        raise SystemExit(f"{path}: {free:.1f} GiB free, this run needs {need_gib:.1f} GiB (+5 GiB margin)")


class Stopwatch:
    """Accumulates wall seconds and process CPU seconds (all threads) per named stage: ``with sw("stage"): ...``.

    CPU seconds matter on a shared machine: other processes stretch wall time but not (much) our CPU time, so
    overhead ratios computed on CPU time are the steadier of the two.
    """

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.cpu: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        start, cpu = time.perf_counter(), time.process_time()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start
            self.cpu[name] = self.cpu.get(name, 0.0) + time.process_time() - cpu


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (no interpolation: p99 of 200 samples is the 198th value)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), int(-(-q * len(ordered) // 100))))
    return ordered[rank - 1]


def md_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    def cell(x: object) -> str:
        if isinstance(x, float):
            if x != x:  # NaN
                return "n/a"
            return f"{x:.3g}" if abs(x) < 10 else f"{x:.1f}"
        return str(x)

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def command_line(script: str, argv: Sequence[str] | None) -> str:
    args = list(sys.argv[1:] if argv is None else argv)
    return shlex.join([".venv/bin/python", "-m", script, *args])


# -------------------------------------------------------------------------------------------------------- BENCHMARKS.md
def entry(title: str, command: str, load: float, body: str, machine_extra: str = "") -> str:
    """A BENCHMARKS.md section: a stable title (no date: see the module docstring), then the date, machine,
    command and the load when measuring started, then the body."""
    return "\n".join([
        f"### {title}",
        "",
        f"Date: {dt.date.today().isoformat()}. Machine: {machine(machine_extra)}. Command: `{command}`. 1-min load "
        f"average when measuring started: {load:.2f} (the machine is shared; a load above 1.5 on 2 cores slows every "
        "number).",
        "",
        body.strip(),
        "",
    ])


_HEADING = re.compile(r"^(#{1,6}) +(.*?)\s*$")
_DATED = re.compile(r"\s*\(\d{4}-\d{2}-\d{2}\)$")


def section_title(heading: str) -> str:
    """The topic of a ``### `` heading: ``### Title (2026-11-27)`` (the old, dated form) and ``### Title`` both
    give ``Title``."""
    m = _HEADING.match(heading)
    text = m.group(2) if m else heading.strip()
    return _DATED.sub("", text).strip()


def anchor(title: str) -> str:
    """The link anchor GitHub gives a heading: lower case, punctuation dropped (``-`` and ``_`` kept), spaces to
    hyphens. ``[...](#anchor)`` links in the summary table use it."""
    text = re.sub(r"[^\w\- ]", "", title.strip().lower())
    return text.replace(" ", "-")


def _headings(lines: Sequence[str]) -> list[tuple[int, int]]:
    """(line index, level) of every markdown heading outside fenced code blocks."""
    out, fenced = [], False
    for i, line in enumerate(lines):
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        m = None if fenced else _HEADING.match(line)
        if m:
            out.append((i, len(m.group(1))))
    return out


def sections(document: str) -> list[tuple[str, int, int]]:
    """(title, first line, end line) of every ``###`` section: from its heading to the next heading of level 1-3
    (its own ``####`` subsections belong to it)."""
    lines = document.split("\n")
    heads = _headings(lines)
    out = []
    for k, (i, level) in enumerate(heads):
        if level != 3:
            continue
        end = next((j for j, lv in heads[k + 1:] if lv <= 3), len(lines))
        out.append((section_title(lines[i]), i, end))
    return out


def replace_section(document: str, section: str, new_before: str = NEW_SECTIONS_BEFORE) -> tuple[str, str]:
    """``document`` with ``section`` (text starting with its ``### `` heading) in place of the section of the same
    title; a title the document does not have yet goes before the heading ``new_before`` (or at the end).
    Returns (new document, the text of the section replaced, "" if none). Pure string work, for the tests."""
    new_lines = section.strip("\n").split("\n")
    if not new_lines or not new_lines[0].startswith("### "):
        raise ValueError("a BENCHMARKS.md section starts with a '### ' heading")
    title = section_title(new_lines[0])
    lines = document.split("\n")
    same = [(start, end) for t, start, end in sections(document) if t == title]
    if len(same) > 1:
        raise ValueError(f"BENCHMARKS.md has {len(same)} sections titled {title!r}: merge them by hand first")
    if same:
        start, end = same[0]
        old = "\n".join(lines[start:end]).strip("\n")
        lines[start:end] = new_lines + ([""] if end < len(lines) else [])
        return "\n".join(lines).rstrip("\n") + "\n", old
    at = next((i for i, _ in _headings(lines) if lines[i].strip() == new_before), None)
    if at is None:
        body = "\n".join(lines).rstrip("\n")
        return (body + "\n\n" if body else "") + "\n".join(new_lines) + "\n", ""
    before = lines[:at]
    while before and not before[-1].strip():
        before.pop()
    lines = before + ([""] if before else []) + new_lines + [""] + lines[at:]
    return "\n".join(lines).rstrip("\n") + "\n", ""


def summary_rows(document: str, title: str) -> list[str]:
    """Table rows (of the summary) that link to the section ``title``."""
    link = f"(#{anchor(title)})"
    return [line for line in document.split("\n") if line.startswith("|") and link in line]


def output_path() -> Path:
    """BENCHMARKS.md, or the file ``SAVE_BENCH_OUTPUT`` names (a scratch copy for a trial run)."""
    return Path(os.environ.get("SAVE_BENCH_OUTPUT") or BENCHMARKS)


def write_section(section: str, path: Path | None = None) -> tuple[str, list[str]]:
    """Replace (or add) ``section`` in BENCHMARKS.md under an exclusive lock (two benchmarks finishing at once
    each keep their section). Returns (the replaced section's text or "", summary rows that link to it)."""
    path = output_path() if path is None else path
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    with os.fdopen(fd, "r+", encoding="utf-8") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        document = fh.read()
        new, old = replace_section(document, section)
        fh.seek(0)
        fh.truncate()
        fh.write(new)
    title = section_title(section.strip("\n").split("\n", 1)[0])
    return old, summary_rows(new, title)


def publish(text: str, write: bool) -> None:
    """Print a finished BENCHMARKS.md section and, unless the run is a smoke/quick one, write it there in place of
    the previous run of the same topic (see the module docstring)."""
    print("\n" + text)
    if not write:
        return
    path = output_path()
    old, rows = write_section(text, path)
    title = section_title(text.strip("\n").split("\n", 1)[0])
    if old:
        date = re.search(r"\d{4}-\d{2}-\d{2}", old)
        print(f"{path.name}: replaced the section {title!r} (the run of {date.group(0) if date else 'an unknown date'}"
              "; if something still cites it, move it to bench/history/ by hand: git has the old text)")
    else:
        print(f"{path.name}: added the section {title!r}")
    for row in rows:
        print(f"{path.name}: this summary row links to it; update its numbers by hand: {row}")


# ------------------------------------------------------------------------------------------------------ other processes
def proc_cpu_s(pid: int) -> float:
    """User + system CPU seconds of another process (the milvus-lite server), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proc_rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def milvus_lite_server(folder: Path, port: int) -> Iterator[int]:
    """A milvus-lite 2.5 gRPC server (its own process, as a deployment runs it) on 127.0.0.1:port; yields its pid."""
    from milvus_lite.server import Server

    folder.mkdir(parents=True, exist_ok=True)
    server = Server(str(folder / "bench.db"), address=f"127.0.0.1:{port}")
    if not server.start():
        raise RuntimeError("milvus-lite did not start (see its log above)")
    try:
        yield server._p.pid  # noqa: SLF001 - the server's process, for its RSS and CPU time
    finally:
        server.stop()


def connect_milvus(uri: str, attempts: int = 50):
    """A MilvusClient once the freshly started server answers (it needs a moment to open its port)."""
    from pymilvus import MilvusClient
    from pymilvus.exceptions import MilvusException

    for attempt in range(attempts):
        try:
            return MilvusClient(uri=uri, timeout=5)
        except MilvusException:
            if attempt == attempts - 1:
                raise
            time.sleep(0.2)
    raise AssertionError("unreachable")


def collect(out, procs: list) -> list[dict]:
    """Each worker process's result from the queue ``out``; a process that died without one fails the run at once
    instead of hanging it."""
    import queue

    results: list[dict] = []
    while len(results) < len(procs):
        try:
            results.append(out.get(timeout=5))
        except queue.Empty:
            failed = [p.exitcode for p in procs if p.exitcode not in (None, 0)]
            if failed:
                raise RuntimeError(f"a writer process failed (exit codes {failed}); its traceback is above") from None
    return results


# ---------------------------------------------------------------------------------- PostgreSQL and a prepopulated index
PG_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
VERSION = "bench-write"  # model version of the synthetic rows written by ``prepopulate`` and bench/write_bench.py
PASSAGE_DIM = 384  # MiniLM
PASSAGES_PER_VIDEO = 6


@contextlib.contextmanager
def scratch_database(name: str) -> Iterator[str]:
    """A PostgreSQL database of this run (created, migrated, dropped afterwards); yields its SQLAlchemy URL."""
    import psycopg

    from indexer.storage.migrate import init_db

    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.execute(f'CREATE DATABASE "{name}"')
    url = f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    try:
        init_db(url)
        yield url
    finally:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def open_catalog(settings, version: str = VERSION):
    """(sessions, loaded catalog) of ``settings``' database and vector store, for embedding space ``version``."""
    from indexer.services import make_catalog, passage_space
    from indexer.storage.db import make_engine, session_factory

    sessions = session_factory(make_engine(settings.db_url))
    catalog = make_catalog(settings, sessions, version, DIM, passage_space(settings), PASSAGE_DIM)
    catalog.load()
    return sessions, catalog


def unit16(rng, rows: int, dim: int):
    """``rows`` random unit vectors of ``dim`` as fp16 (numpy generator ``rng``)."""
    import numpy as np

    x = rng.standard_normal((rows, dim)).astype(np.float32)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float16)


def prepopulate(settings, existing: int, version: str = VERSION) -> float:
    """``existing`` committed videos of model ``version`` with pooled vectors and passages (no frame features:
    nothing here reads them), then the start-up repair that indexes them. Returns the repair's seconds."""
    import numpy as np
    from sqlalchemy import insert, text

    from indexer.storage.db import Passage, Video, utcnow

    sessions, catalog = open_catalog(settings, version)
    rng = np.random.default_rng(0)
    now = utcnow()
    with sessions.begin() as s:
        for lo in range(0, existing, 5000):
            ids = range(lo + 1, min(existing, lo + 5000) + 1)
            pooled = unit16(rng, len(ids), DIM)
            s.execute(insert(Video), [dict(id=v, content_hash=f"{v:064x}", filename=f"old-{v}.mp4",
                                           source_path="/dev/null", size_bytes=0, duration_s=60.0, has_audio=True,
                                           transcript="", model_version=version, model_mode="save-fused",
                                           pooled=pooled[i].tobytes(), status="indexed", created_at=now)
                                      for i, v in enumerate(ids)])
            emb = unit16(rng, len(ids) * PASSAGES_PER_VIDEO, PASSAGE_DIM)
            s.execute(insert(Passage), [dict(video_id=v, first_idx=k, last_idx=k, start_s=10.0 * k,
                                             end_s=10.0 * k + 10, embedding=emb[i * PASSAGES_PER_VIDEO + k].tobytes())
                                        for i, v in enumerate(ids) for k in range(PASSAGES_PER_VIDEO)])
        # explicit ids: move the sequence past them, so the workers' rows get new ones
        s.execute(text("SELECT setval(pg_get_serial_sequence('videos', 'id'), (SELECT max(id) FROM videos))"))
    start = time.perf_counter()
    catalog.prepare()
    catalog.repair()
    return time.perf_counter() - start


# -------------------------------------------------------------------------------------------------- the benchmark model
def build_model(device: str = "cpu", config: str = "save-b32"):
    """Full-size SAVE with random weights, computing like a trained (fused) checkpoint.

    Why random weights: ``create_model("save-b32", pretrained=False)`` has exactly the compute of the real
    CLIP ViT-B/32 + AST + fusion (no CLIP/AST weights are available offline), and ``fusion_enabled=True`` makes it
    run the fused path a trained SAVE checkpoint runs."""
    from models.factory import create_model

    model = create_model(config, pretrained=False)
    model.fusion_enabled = True
    model.info.fusion_enabled = True
    return model.to(device).eval()


def model_version(config: str = "save-b32") -> str:
    """The embedding-space id the model of ``config`` writes (from its config: random weights do not change it)."""
    return build_model("cpu", config).info.version()


# ---------------------------------------------------------------------------------------------- real clips, real worker
MEDIA = ROOT.parent / "shared" / "data" / "media"  # never the heldout folder next to it
# Real speech wrapped into mp4 (tests.media_fixtures.speech_video): clips with transcripts, so ASR, the speech
# branch and MiniLM see real work.
SPEECH_CLIPS: tuple[str, ...] = ("jfk.flac", "ljspeech/LJ001-0001.wav", "librivox/sense_and_sensibility_01_austen_"
                                 "64kb-0870.wav", "sonnet/audio.mp3")
WARMUP_CLIP = "hotwords.mp3"  # 4 s: loads Whisper, MiniLM and the first torch kernels before timing starts


@dataclass
class Captured:
    """What one video fed to the model stages in the pipeline, kept to measure the stages alone on it."""

    name: str
    duration_s: float
    inputs: object  # models.inputs.VideoInputs
    pcm: object | None  # int16 numpy copy of the decoded 16 kHz audio, None without audio
    segment_texts: list[str] = field(default_factory=list)


def make_clips(out: Path, quick: bool) -> list[Path]:
    """The measured inputs: every mp4/avi under media/video plus a few wrapped speech recordings."""
    from tests.media_fixtures import speech_video

    out.mkdir(parents=True, exist_ok=True)
    videos = sorted(p for p in (MEDIA / "video").iterdir() if p.suffix.lower() in (".mp4", ".avi"))
    speech = []
    for i, rel in enumerate(SPEECH_CLIPS[:1] if quick else SPEECH_CLIPS):
        target = out / f"speech-{Path(rel).stem[:40]}.mp4"
        if not target.exists():
            speech_video(MEDIA / "speech" / rel, target, color=(40 + 50 * i, 90, 160), size=224)
        speech.append(target)
    return (videos[:2] if quick else videos) + speech


def make_clips_warmup(out: Path) -> Path:
    from tests.media_fixtures import speech_video

    target = out / "warmup.mp4"
    if not target.exists():
        speech_video(MEDIA / "speech" / WARMUP_CLIP, target, size=224)
    return target


def make_services(home: Path, model, batch: int, device: str, whisper_threads: int, whisper_model: str | None,
                  compute_type: str = "default", **settings_extra):
    """The worker's services around the benchmark model and its ingest runtimes (the transcriber with
    ``whisper_threads``); ``settings_extra``: more Settings fields (database URL, vector store) for the multi-worker
    runs."""
    from indexer.inference.asr import Transcriber
    from indexer.inference.visual import VisualEncoder
    from indexer.ingest.runtimes import IngestRuntimes
    from indexer.services import Services
    from indexer.settings import Settings

    kwargs = {"whisper_model": whisper_model} if whisper_model else {}
    settings = Settings(home=home, device=device, encode_batch_size=batch, whisper_compute_type=compute_type,
                        **kwargs, **settings_extra)
    transcriber = Transcriber.from_settings(settings, cpu_threads=whisper_threads)
    return (Services(settings, encoder=VisualEncoder(settings, model=model)),
            IngestRuntimes(settings, transcriber=transcriber))


def bench_worker_class():
    """A Worker that keeps each prepared video's model inputs and audio (outside every timed stage)."""
    import numpy as np

    from indexer.ingest.decode import pcm_memmap
    from indexer.ingest.worker import Worker

    class BenchWorker(Worker):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            self.captured: list[Captured] = []
            self.batches: list[int] = []

        def prepare(self, item_id: int):
            p = super().prepare(item_id)
            if p is not None:
                pcm = (np.array(pcm_memmap(p.decoded.audio_path)) if p.decoded.audio_path is not None else None)
                self.captured.append(Captured(p.filename, p.probe.duration_s, p.inputs, pcm,
                                              [s.text for s in p.transcript.segments]))
            return p

        def _encode(self, prepared):
            self.batches.append(len(prepared))
            return super()._encode(prepared)

    return BenchWorker


def run_pipeline(services, runtimes, clips: Sequence[Path], warmup: Path | None) -> tuple[object, float, float]:
    """Enqueue ``clips`` as one bulk job and let one worker drain the queue.

    Returns (worker, wall seconds, process CPU seconds over all threads)."""
    from indexer.ingest.jobs import JobQueue

    queue = JobQueue(services.sessions)
    worker = bench_worker_class()(services, owner="bench", runtimes=runtimes)
    worker.startup()
    if warmup is not None:
        queue.enqueue("bulk", [warmup])
        while worker.run_once():
            pass
        worker.stats.clear()
        worker.captured.clear()
        worker.batches.clear()
    queue.enqueue("bulk", list(clips))
    start, cpu = time.perf_counter(), time.process_time()
    while worker.run_once():
        pass
    return worker, time.perf_counter() - start, time.process_time() - cpu
