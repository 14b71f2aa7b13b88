"""Shared helpers of the benchmark scripts: machine description, quiet-machine wait, timing, tables, and the
BENCHMARKS.md entry. Kept free of project imports so that every script can use it before heavy imports."""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import platform
import shlex
import shutil
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "BENCHMARKS.md"
# Everything big goes below here and is deleted afterwards (the brief: never leave synthetic data behind).
WORK = Path(os.environ.get("SAVE_BENCH_WORK", "/tmp/save-bench"))
QUIET_LOAD = 1.5  # 1-min load average below which a measurement may start
QUIET_WAIT_S = 600.0  # wait at most this long for it, then measure anyway and record the load


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


def entry(title: str, command: str, load: float, body: str, machine_extra: str = "") -> str:
    """A BENCHMARKS.md section: title with the date, machine, command and the load when measuring started."""
    return "\n".join([
        f"### {title} ({dt.date.today().isoformat()})",
        "",
        f"Machine: {machine(machine_extra)}. Command: `{command}`. 1-min load average when measuring started: "
        f"{load:.2f} (the machine is shared; a load above 1.5 on 2 cores slows every number).",
        "",
        body.strip(),
        "",
    ])


def append_benchmarks(text: str, path: Path = BENCHMARKS) -> None:
    """Append only (opened in append mode, so a concurrent writer's section is never overwritten)."""
    with path.open("a") as fh:
        fh.write("\n" + text)


def publish(text: str, append: bool) -> None:
    """Print a finished BENCHMARKS.md section, and append it there unless the run is a smoke/quick one."""
    print("\n" + text)
    if append:
        append_benchmarks(text)
        print("appended to BENCHMARKS.md")
