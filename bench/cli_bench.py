"""Cold command-line search: ``save-search search QUERY`` as a new process each time, on this checkout and on an
earlier commit, over the same small collection, in one run.

    .venv/bin/python -m bench.cli_bench                       # against e002594 (before the house plan)
    .venv/bin/python -m bench.cli_bench --before REF --runs 7 --no-append

The collection (speech mode, the bundled models) is three real recordings wrapped into mp4, ingested by each side
into a home of its own (a newer schema is not readable by older code). Each side runs from its own source tree with this
venv (``python -m app.cli`` from the checkout's root, so its code is imported), alternating A/B so load drifts hit
both alike. Reported per side: wall seconds (min, median), CPU seconds (user + system) and, from
``python -X importtime``, the cumulative import time of the search module (``indexer.search`` before, the
service after) and the heaviest packages it pulls in.
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench.harness import MEDIA, ROOT, WORK, command_line, entry, md_table, publish, wait_for_quiet

QUERY = "ask what you can do for your country"
CLIPS = ("jfk.flac", "ljspeech/LJ001-0001.wav", "librivox/sense_and_sensibility_01_austen_64kb-0870.wav")
BEFORE = "e002594"  # main before the house plan (issue 19)
MODULES = {"before": "indexer.search", "after": "indexer.search.service"}
HEAVY = ("torch", "transformers", "faster_whisper", "ctranslate2", "onnxruntime", "cv2", "av", "faiss", "sqlalchemy",
         "alembic", "scipy", "sympy")


def checkout(ref: str, where: Path) -> Path:
    """A detached work tree of ``ref`` (files only, no venv: the runs use this checkout's)."""
    if where.exists():
        subprocess.run(["git", "worktree", "remove", "--force", str(where)], cwd=ROOT, capture_output=True)
        shutil.rmtree(where, ignore_errors=True)
    subprocess.run(["git", "worktree", "add", "--detach", str(where), ref], cwd=ROOT, check=True,
                   capture_output=True)
    return where


def build_collection(tree: Path, home: Path, clips: Path) -> None:
    """Ingest the clips with the CLI of ``tree`` (its worker, in-process: ``ingest --wait``) into ``home``."""
    from tests.media_fixtures import speech_video

    clips.mkdir(parents=True, exist_ok=True)
    paths = [speech_video(MEDIA / "speech" / c, clips / f"{Path(c).stem}.mp4") for c in CLIPS]
    env = {**os.environ, "SAVE_SEARCH_HOME": str(home), "HF_HUB_OFFLINE": "1"}
    subprocess.run([sys.executable, "-m", "app.cli", "ingest", *map(str, paths), "--wait"], cwd=tree, env=env,
                   check=True, capture_output=True)


def run_once(tree: Path, home: Path) -> tuple[float, float]:
    """(wall s, CPU s) of one cold search process run from ``tree``."""
    env = {**os.environ, "SAVE_SEARCH_HOME": str(home), "HF_HUB_OFFLINE": "1"}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "app.cli", "search", QUERY, "--json"], cwd=tree, env=env,
                         capture_output=True, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if out.returncode != 0 or "jfk" not in out.stdout:
        raise RuntimeError(f"search from {tree} failed or missed the clip: {out.stderr[-2000:]}")
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def import_times(tree: Path, module: str) -> tuple[float, dict[str, float]]:
    """Cumulative import seconds of ``module`` and of the heavy top-level packages it loads (``-X importtime``)."""
    out = subprocess.run([sys.executable, "-X", "importtime", "-c", f"import {module}"], cwd=tree,
                         capture_output=True, text=True, check=True)
    total, packages = 0.0, {}
    for line in out.stderr.splitlines():
        m = re.match(r"import time:\s+\d+ \|\s+(\d+) \|( *)(\S+)", line)
        if not m:
            continue
        cumulative, name = int(m.group(1)) / 1e6, m.group(3)
        if name == module:
            total = cumulative
        if name in HEAVY:
            packages[name] = max(packages.get(name, 0.0), cumulative)
    return total, packages


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", default=BEFORE, help="Git ref to compare with.")
    parser.add_argument("--runs", type=int, default=7, help="Cold searches per side.")
    parser.add_argument("--no-append", action="store_true", help="Print only; do not write BENCHMARKS.md.")
    args = parser.parse_args(argv)
    work = WORK / "cli-bench"
    shutil.rmtree(work, ignore_errors=True)
    old = checkout(args.before, work / "before")
    try:
        trees = {"before": old, "after": ROOT}
        homes = {name: work / f"home-{name}" for name in trees}
        for name, tree in trees.items():
            build_collection(tree, homes[name], work / "clips")
            run_once(tree, homes[name])  # warms the page cache (files and the venv), not measured
        load = wait_for_quiet()
        runs: dict[str, list[tuple[float, float]]] = {name: [] for name in trees}
        for _ in range(args.runs):
            for name, tree in trees.items():
                runs[name].append(run_once(tree, homes[name]))
        rows = []
        for name, tree in trees.items():
            walls = [w for w, _ in runs[name]]
            cpus = [c for _, c in runs[name]]
            total, packages = import_times(tree, MODULES[name])
            heavy = ", ".join(f"{p} {s:.2f}" for p, s in sorted(packages.items(), key=lambda kv: -kv[1]))
            rows.append([f"{name} ({args.before if name == 'before' else 'this checkout'})", min(walls),
                         statistics.median(walls), statistics.median(cpus), f"`{MODULES[name]}` {total:.2f}", heavy])
        body = "\n".join([
            f"`save-search search \"{QUERY}\" --json` as a new process, {args.runs} runs per side alternating, on a "
            f"collection of {len(CLIPS)} real speech clips (speech mode: no CLIP weights offline; bundled Whisper and "
            "MiniLM), `HF_HUB_OFFLINE=1`. Import seconds are cumulative, from `python -X importtime -c 'import "
            "MODULE'` (one run; the heavy packages it loads, cumulative).",
            "",
            md_table(["side", "wall s min", "wall s median", "CPU s median", "search module import s",
                      "heavy packages imported (s)"], rows),
        ])
        print(body)
        publish(entry("Cold command-line search", command_line("bench.cli_bench", argv), load, body),
                not args.no_append)
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(old)], cwd=ROOT, capture_output=True)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
