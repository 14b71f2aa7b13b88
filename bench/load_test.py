"""HTTP load test of the search API on loopback: the numbers behind "how many searches per second".

It starts the real app (``create_app``, speech mode, embedded ingest worker, SQLite, FAISS) with uvicorn in a
separate process on 127.0.0.1 and a free port, indexes a small collection of real speech clips through the
API, then drives a mix of ``GET /v1/search`` (varied queries), ``GET /v1/videos/{id}`` and ``GET /healthz``
from 1, 10 and 50 concurrent httpx clients. Per level it reports throughput, p50/p95/p99 latency and the
errors with their causes, and writes the table to BENCHMARKS.md with the date, the machine and the command
(section "HTTP load test", or "HTTP load test with ingest running" with ``--ingest-workers``; a rerun replaces it).

    .venv/bin/python -m bench.load_test              # full run: 60 s per level, written to BENCHMARKS.md
    .venv/bin/python -m bench.load_test --quick      # 5 s per level, no BENCHMARKS.md entry
    .venv/bin/python -m bench.load_test --levels 30 --seconds 45 --ingest-workers 2   # searches while ingesting

With ``--ingest-workers N`` the server runs without its embedded worker and N ``save-search worker`` processes
do the ingest, on the same cores; before each level a bulk job of new clips is queued, and the report shows how
many of them the workers finished during the level next to the search latency.

The server runs in its own process so that the load generator does not share its interpreter (GIL); both
still share this machine's CPU cores, which the report says. A full run first waits for a quiet machine
(``bench.harness.wait_for_quiet``) and records the load average it started at.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path

import httpx

from bench.harness import ROOT, command_line, entry, md_table, percentile, publish, wait_for_quiet
from indexer.ingest.jobs import FINISHED_STATUSES

LEVELS = (1, 10, 50)
MAX_REQUESTS = 200_000  # per level, whatever the duration: the run is bounded in count as well as time
REQUEST_TIMEOUT_S = 30.0
SEED = 0

# Speech clips (under shared/data/media/speech) and words that identify them, for the sanity check.
CLIPS: tuple[tuple[str, str], ...] = (
    ("jfk.flac", "ask not what your country can do for you"),
    ("ljspeech/LJ001-0001.wav", "printing differs from most of the arts and crafts"),
    ("ljspeech/LJ001-0003.wav", "chinese impressions from wood blocks engraved in relief"),
    ("ljspeech/LJ001-0005.wav", "invention of movable metal letters"),
    ("ljspeech/LJ001-0007.wav", "earliest book printed with movable types gutenberg bible"),
    ("ljspeech/LJ001-0011.wav", "the letter used should be fine in form"),
)

# Varied queries: words said in the clips, paraphrases, single words, misses, long and non-ASCII text.
QUERIES: tuple[str, ...] = (
    "ask not what your country can do for you", "what you can do for your country", "my fellow americans",
    "printing", "the art of printing", "printing press history", "movable metal letters", "movable type",
    "Gutenberg bible", "forty-two line bible", "wood blocks engraved in relief", "chinese woodblock printing",
    "fifteenth century", "fifteenth-century books", "arts and crafts exhibition", "block books",
    "predecessors of the printed book", "invention", "a speech about freedom", "a president speaking",
    "typography", "fine typography example", "netherlands woodcutters", "cooking pasta", "football match",
    "the weather tomorrow", "xylography", "impresión de libros", "печать книг", "印刷の歴史", "🙂 printing",
    "country", "letters", "book", "the", "a " * 40 + "printing", "what did kennedy say about the country",
    "century of printing and woodcuts in europe and the far east before movable type became common",
)
# Searches are half repeated queries (answered from the app's query-embedding cache after the warm-up) and half
# new ones (random word combinations, so the text encoder runs), plus metadata and health reads.
MIX = (("search-repeat", 0.4), ("search-new", 0.4), ("video", 0.1), ("health", 0.1))
KIND_LABELS = {"search-repeat": "GET /v1/search (repeated query)", "search-new": "GET /v1/search (new query)",
               "video": "GET /v1/videos/{id}", "health": "GET /healthz"}
VOCABULARY = tuple(sorted({w.strip(".,!?") for q in QUERIES + tuple(words for _, words in CLIPS) for w in q.split()
                           if w.isascii() and len(w) > 2} | {"video", "talk", "old", "history", "speech", "man",
                                                             "reading", "europe", "press", "craft", "freedom"}))


# --------------------------------------------------------------------------------------------------- server
def _free_socket() -> socket.socket:
    """A listening-ready socket on a free loopback port; handed to uvicorn, so no port race."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


def serve(home: Path, access_log: bool = False, embedded_worker: bool = True) -> None:
    """Run the app under uvicorn on a free loopback port (server process); writes the port to ``home/port`` and
    the process id to ``home/pid``. ``SAVE_SEARCH_*`` variables apply (API keys, limits)."""
    import uvicorn

    from app.main import create_app
    from indexer.settings import Settings

    settings = Settings.from_env(home=home, model=str(home / "no-visual-model"), expected_languages=["en"])
    (home / "pid").write_text(str(os.getpid()))
    if not embedded_worker:  # as `save-search serve --no-worker` does
        from app.admission import limit_api_threads

        limit_api_threads(settings)
    sock = _free_socket()
    config = uvicorn.Config(create_app(settings, embedded_worker=embedded_worker), log_level="warning",
                            access_log=access_log)
    server = uvicorn.Server(config)
    (home / "port.tmp").write_text(str(sock.getsockname()[1]))
    (home / "port.tmp").replace(home / "port")
    with contextlib.suppress(KeyboardInterrupt):  # uvicorn re-raises the SIGINT it stopped on, after shutdown
        server.run(sockets=[sock])


@contextlib.contextmanager
def running_server(home: Path, startup_timeout_s: float = 300.0, access_log: bool = False,
                   embedded_worker: bool = True) -> Iterator[str]:
    """Start the server process, wait until ``/readyz`` answers, yield its base URL; stop it afterwards.

    Its output goes to ``home/server.log`` (tracebacks of any 5xx land there).
    """
    home.mkdir(parents=True, exist_ok=True)
    (home / "port").unlink(missing_ok=True)
    cmd = ([sys.executable, "-m", "bench.load_test", "--serve", str(home)] + (["--access-log"] * access_log)
           + (["--no-embedded-worker"] * (not embedded_worker)))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}
    with (home / "server.log").open("ab") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + startup_timeout_s
        base_url = None
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"the server exited with {proc.returncode}; see {home / 'server.log'}")
            if base_url is None and (home / "port").exists():
                base_url = f"http://127.0.0.1:{(home / 'port').read_text().strip()}"
            if base_url is not None:
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(f"{base_url}/readyz", timeout=5).status_code == 200:
                        break
            time.sleep(0.5)
        else:
            raise TimeoutError(f"the server was not ready in {startup_timeout_s} s; see {home / 'server.log'}")
        yield base_url
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)  # uvicorn's graceful shutdown runs the lifespan exit (worker stop)
            try:
                proc.wait(timeout=45)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


# --------------------------------------------------------------------------------------------------- corpus
def make_clips(out_dir: Path, count: int = len(CLIPS)) -> list[Path]:
    """Real speech recordings wrapped in small mp4 files (each with its own colour)."""
    from tests.media_fixtures import MEDIA, speech_video

    if not MEDIA.exists():
        raise FileNotFoundError(f"no test media at {MEDIA}")
    out_dir.mkdir(parents=True, exist_ok=True)
    clips = []
    for i, (name, _) in enumerate(CLIPS[:count]):
        out = out_dir / f"clip{i}_{Path(name).stem}.mp4"
        if not out.exists():
            speech_video(MEDIA / "speech" / name, out, color=((40 * i) % 256, (90 + 50 * i) % 256, 160))
        clips.append(out)
    return clips


def ingest(base_url: str, clips: Sequence[Path], timeout_s: float = 600.0) -> list[int]:
    """Upload the clips through the API and wait until the embedded worker has indexed them all."""
    ids, jobs = [], []
    with httpx.Client(base_url=base_url, timeout=REQUEST_TIMEOUT_S) as client:
        for path in clips:
            with path.open("rb") as f:
                r = client.post("/v1/videos", files={"file": (path.name, f, "video/mp4")})
            r.raise_for_status()
            ids.append(r.json()["video_id"])
            jobs.append(r.json()["job_id"])
        deadline = time.monotonic() + timeout_s
        for job_id in jobs:
            while True:
                job = client.get(f"/v1/jobs/{job_id}").json()
                if job["status"] in FINISHED_STATUSES:
                    break
                if time.monotonic() > deadline:
                    raise TimeoutError(f"ingest job {job_id} did not finish in {timeout_s} s: {job}")
                time.sleep(0.5)
            if job["status"] != "done":
                raise RuntimeError(f"ingest job {job_id} failed: {job}")
        # the sanity check: each clip is found by what is said in it
        for video_id, (_, words) in zip(ids, CLIPS, strict=False):
            top = client.get("/v1/search", params={"q": words, "k": 3}).json()["results"]
            if not top or top[0]["video_id"] != video_id:
                raise AssertionError(f"search for {words!r} did not rank video {video_id} first: {top}")
    return ids


# ----------------------------------------------------------------------------------------------------- load
@dataclasses.dataclass
class LevelResult:
    clients: int
    seconds: float
    latencies: dict[str, list[float]]  # seconds, successful requests, by request kind
    errors: Counter[str]
    busy: int = 0  # searches answered 503 + Retry-After (admission control): counted apart from errors
    # Ingest progress during the level (--ingest-workers), in items: each item counts its progress (0..1, by stage),
    # since a worker commits a whole batch at once and finished items alone would move in steps of a batch.
    ingested: float | None = None

    @property
    def requests(self) -> int:
        return sum(len(v) for v in self.latencies.values()) + sum(self.errors.values())

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    @property
    def throughput(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def percentile(self, q: float, kind: str | None = None) -> float:
        """Nearest-rank percentile in milliseconds, of one request kind or of all."""
        values = self.latencies.get(kind, []) if kind else [x for v in self.latencies.values() for x in v]
        return 1000 * percentile(values, q)


def _request(rng: random.Random, video_ids: Sequence[int]) -> tuple[str, str, dict]:
    kind = rng.choices([k for k, _ in MIX], weights=[w for _, w in MIX])[0]
    if kind.startswith("search"):
        q = rng.choice(QUERIES) if kind == "search-repeat" else " ".join(rng.sample(VOCABULARY, rng.randint(2, 6)))
        params: dict = {"q": q, "k": rng.choice((1, 5, 10, 20))}
        if rng.random() < 0.1:
            params["min_score"] = 0.2
        return kind, "/v1/search", params
    if kind == "video":
        return kind, f"/v1/videos/{rng.choice(video_ids)}", {}
    return kind, "/healthz", {}


def _route(kind: str, url: str) -> str:
    return "/v1/videos/{id}" if kind == "video" else url


async def _client(client: httpx.AsyncClient, rng: random.Random, video_ids: Sequence[int], stop_at: float,
                  budget: list[int], result: LevelResult) -> None:
    while time.monotonic() < stop_at and budget[0] > 0:
        budget[0] -= 1
        kind, url, params = _request(rng, video_ids)
        start = time.perf_counter()
        try:
            r = await client.get(url, params=params)
            elapsed = time.perf_counter() - start
            if r.status_code == 503 and "retry-after" in r.headers:
                result.busy += 1
                await asyncio.sleep(float(r.headers["retry-after"]))  # as a well-behaved client does
            elif r.status_code != 200:
                result.errors[f"HTTP {r.status_code} on {_route(kind, url)}: {r.text[:200]}"] += 1
            elif kind.startswith("search") and '"results"' not in r.text:
                result.errors[f"search answered 200 without results: {r.text[:200]}"] += 1
            else:
                result.latencies.setdefault(kind, []).append(elapsed)
        except httpx.HTTPError as exc:
            result.errors[f"{type(exc).__name__} on {_route(kind, url)}: {exc}"[:300]] += 1


async def drive(base_url: str, clients: int, seconds: float, video_ids: Sequence[int],
                max_requests: int = MAX_REQUESTS, seed: int = SEED) -> LevelResult:
    """``clients`` concurrent closed-loop clients (each sends its next request when the last one is answered)."""
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    result = LevelResult(clients, 0.0, {}, Counter())
    budget = [max_requests]
    async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=REQUEST_TIMEOUT_S) as client:
        start = time.monotonic()
        await asyncio.gather(*(_client(client, random.Random(seed * 1000 + i), video_ids, start + seconds, budget,
                                       result) for i in range(clients)))
        result.seconds = time.monotonic() - start
    return result


async def warm_up(base_url: str, video_ids: Sequence[int]) -> None:
    """Every fixed query once through, so first-call costs are not in the measured levels."""
    async with httpx.AsyncClient(base_url=base_url, timeout=REQUEST_TIMEOUT_S) as client:
        for q in QUERIES:
            (await client.get("/v1/search", params={"q": q})).raise_for_status()
        (await client.get(f"/v1/videos/{video_ids[0]}")).raise_for_status()


# --------------------------------------------------------------------------------------------------- report
def table(results: Sequence[LevelResult]) -> str:
    ingest = any(r.ingested is not None for r in results)
    return md_table(["clients", "seconds", "requests", "req/s", "p50 ms", "p95 ms", "p99 ms", "503 busy", "errors"]
                    + ["ingest progress during the level (items)"] * ingest,
                    [[r.clients, round(r.seconds, 1), r.requests, round(r.throughput, 1), r.percentile(50),
                      r.percentile(95), r.percentile(99), r.busy, r.error_count]
                     + [None if r.ingested is None else round(r.ingested, 2)] * ingest
                     for r in results])


def kind_table(results: Sequence[LevelResult]) -> str:
    """Latency by request kind: a repeated query skips the text encoder, a new one does not."""
    return md_table(["clients", "request", "count", "p50 ms", "p95 ms", "p99 ms"],
                    [[r.clients, KIND_LABELS[kind], len(r.latencies.get(kind, [])), r.percentile(50, kind),
                      r.percentile(95, kind), r.percentile(99, kind)] for r in results for kind, _ in MIX])


def server_problems(log: Path, limit: int = 10) -> list[str]:
    """Tracebacks and ERROR lines in the server's log: a failure the clients did not see is still a failure."""
    if not log.exists():
        return [f"no server log at {log}"]
    lines = log.read_text(errors="replace").splitlines()
    found = []
    for i, line in enumerate(lines):
        if line.startswith("Traceback") or line.startswith("ERROR"):
            tail = next((x for x in lines[i + 1:] if x and not x[0].isspace()), "")  # the exception line
            found.append(f"{line.strip()} {tail.strip()}".strip())
    return found[:limit]


def error_report(results: Sequence[LevelResult]) -> str:
    lines = []
    for r in results:
        for cause, n in r.errors.most_common(10):
            lines.append(f"- {r.clients} clients, {n}x: {cause}")
    return "\n".join(lines)


def markdown_body(results: Sequence[LevelResult], clips: int, problems: Sequence[str], workers: int = 0,
                  per_level: int = 0) -> str:
    errors = error_report(results)
    mix = ", ".join(f"{round(w * 100)} % {KIND_LABELS[k]}" for k, w in MIX)
    ingest = (f"no embedded worker; {workers} `save-search worker` processes ingest {per_level} new speech clips "
              "queued before each level" if workers else "embedded ingest worker idle")
    admission = ", ".join(f"{k}={v}" for k, v in os.environ.items() if k.startswith("SAVE_SEARCH_SEARCH_"))
    return "\n".join([
        f"Server: the real app (`create_app`, speech mode: no visual model, {clips} indexed speech clips, SQLite, "
        f"FAISS, {ingest}; search admission {admission or 'default'}) under one uvicorn process on 127.0.0.1, "
        "access log off. 503 answers (busy, with Retry-After) are counted apart; the client then waits "
        "Retry-After seconds. Clients: "
        "closed-loop httpx (async, keep-alive) in another process on the same cores; request mix "
        f"{mix}: searches with k in 1/5/10/20, either one of {len(QUERIES)} fixed queries (cached by the app "
        "after the warm-up) or a new random combination of 2-6 words (the text encoder runs). Latency is per "
        "successful request, client side.",
        "",
        table(results),
        "",
        kind_table(results),
        "",
        "Errors: none." if not errors else f"Errors (causes):\n{errors}",
        "",
        "Server log: no errors." if not problems else "Server log:\n" + "\n".join(f"- {p}" for p in problems),
    ])


# ----------------------------------------------------------------------------------------------------- main
def ingest_batch(out_dir: Path, count: int) -> list[Path]:
    """``count`` new clips (distinct files, so none is a duplicate) for the workers to ingest during a level."""
    from tests.media_fixtures import MEDIA, speech_video

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        name = CLIPS[i % len(CLIPS)][0]
        out = out_dir / f"ingest{i}.mp4"
        speech_video(MEDIA / "speech" / name, out, color=(i % 256, (7 * i + 3) % 256, (13 * i + 11) % 256))
        paths.append(out)
    return paths


def ingest_progress(home: Path) -> float:
    """All items' progress summed: 1 per finished item, the stage's fraction (probe 0.05 ... encode 0.8) for one
    in progress."""
    from sqlalchemy import case, func, select

    from indexer.ingest.jobs import FINISHED_STATUSES
    from indexer.storage.db import JobItem, make_engine, session_factory

    engine = make_engine(f"sqlite:///{home / 'save_search.db'}")
    try:
        with session_factory(engine)() as s:
            done = case((JobItem.status.in_(FINISHED_STATUSES), 1.0), else_=JobItem.progress)
            return float(s.scalar(select(func.sum(done))) or 0.0)
    finally:
        engine.dispose()


@contextlib.contextmanager
def ingest_workers(home: Path, count: int) -> Iterator[None]:
    """``count`` `save-search worker` processes on the server's home (they share its SQLite database)."""
    env = {**os.environ, "SAVE_SEARCH_HOME": str(home), "SAVE_SEARCH_MODEL": str(home / "no-visual-model"),
           "SAVE_SEARCH_EXPECTED_LANGUAGES": "en"}
    procs = [subprocess.Popen([sys.executable, "-m", "app.cli", "worker"], cwd=ROOT, env=env,
                              stdout=(home / f"worker{i}.log").open("ab"), stderr=subprocess.STDOUT)
             for i in range(count)]
    try:
        yield
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


def run(levels: Sequence[int], seconds: float, clips: int, work: Path, max_requests: int,
        access_log: bool = False, workers: int = 0, per_level: int = 12) -> tuple[list[LevelResult], Path]:
    paths = make_clips(work / "clips", clips)
    batches = [ingest_batch(work / f"ingest-{n}-{i}", per_level) for i, n in enumerate(levels)] if workers else []
    home = work / "home"
    with contextlib.ExitStack() as stack:
        base_url = stack.enter_context(running_server(home, access_log=access_log, embedded_worker=not workers))
        if workers:
            stack.enter_context(ingest_workers(home, workers))
        print(f"server at {base_url}; indexing {len(paths)} clips ...", flush=True)
        video_ids = ingest(base_url, paths)
        asyncio.run(warm_up(base_url, video_ids))
        results = []
        for i, n in enumerate(levels):
            before = None
            if workers:
                subprocess.run([sys.executable, "-m", "app.cli", "ingest", *map(str, batches[i])], cwd=ROOT,
                               env={**os.environ, "SAVE_SEARCH_HOME": str(home)}, check=True, capture_output=True)
                before = ingest_progress(home)
            print(f"{n} client(s) for {seconds:g} s ...", flush=True)
            results.append(asyncio.run(drive(base_url, n, seconds, video_ids, max_requests)))
            if before is not None:
                results[-1].ingested = ingest_progress(home) - before
            print(table(results[-1:]).splitlines()[-1], flush=True)
    return results, home / "server.log"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="duration of each level (default 60)")
    parser.add_argument("--quick", action="store_true", help="5 s per level, and no BENCHMARKS.md entry")
    parser.add_argument("--levels", default=",".join(map(str, LEVELS)), help="concurrent clients per level")
    parser.add_argument("--clips", type=int, default=len(CLIPS), choices=range(1, len(CLIPS) + 1),
                        metavar=f"1..{len(CLIPS)}", help="speech clips to index")
    parser.add_argument("--max-requests", type=int, default=MAX_REQUESTS, help="request cap per level")
    parser.add_argument("--work-dir", type=Path, help="keep clips, database and server log here")
    parser.add_argument("--no-append", action="store_true", help="do not append the result to BENCHMARKS.md")
    parser.add_argument("--no-wait", action="store_true", help="measure at once, even on a busy machine")
    parser.add_argument("--access-log", action="store_true", help="uvicorn access log on (as `save-search serve`)")
    parser.add_argument("--ingest-workers", type=int, default=0, metavar="N",
                        help="N worker processes ingest new clips during every level (the server's own is off)")
    parser.add_argument("--ingest-clips", type=int, default=12, help="clips queued before each level")
    parser.add_argument("--serve", type=Path, metavar="HOME", help=argparse.SUPPRESS)  # the server process
    parser.add_argument("--no-embedded-worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve is not None:
        serve(args.serve, args.access_log, embedded_worker=not args.no_embedded_worker)
        return 0
    seconds = 5.0 if args.quick else args.seconds
    levels = [int(x) for x in args.levels.split(",") if x.strip()]
    load = os.getloadavg()[0] if (args.quick or args.no_wait) else wait_for_quiet()
    with contextlib.ExitStack() as stack:
        work = args.work_dir or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="save-load-")))
        results, server_log = run(levels, seconds, args.clips, work, args.max_requests, args.access_log,
                                  args.ingest_workers, args.ingest_clips)
        problems = server_problems(server_log)
        failed = bool(problems) or any(r.errors for r in results)
        if failed:
            print(f"--- server log ({server_log}) ---\n{server_log.read_text()[-20_000:]}", file=sys.stderr)
    title = "HTTP load test with ingest running" if args.ingest_workers else "HTTP load test"
    text = entry(title, command_line("bench.load_test", argv), load,
                 markdown_body(results, args.clips, problems, args.ingest_workers, args.ingest_clips))
    publish(text, write=not (args.quick or args.no_append))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
