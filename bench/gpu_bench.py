"""The ingest and index benchmarks on a CUDA host, within about 8 minutes, written to BENCHMARKS.md with the card.

    bench/gpu_bench.sh                     # = .venv/bin/python -m bench.gpu_bench
    .venv/bin/python -m bench.gpu_bench --dry-run   # on CPU with tiny sizes: proves the script works, writes nothing

What runs on the GPU:
- ingest (``bench.ingest_bench``): SAVE ``save-b32`` with random weights under fp16 autocast (the worker's own
  ``VisualEncoder`` does that on CUDA), encode batch 16; Whisper large-v3 in float16 through faster-whisper's
  ``BatchedInferencePipeline`` when large-v3 is in the local cache (the host is offline), else the bundled base.
  Goal: >= 60x real time (seconds of video per second).
- query (``bench.index_bench``): 10k, 100k and 1M synthetic videos, text encoder on CUDA, FAISS on the GPU for
  flat and IVF-PQ when ``faiss-gpu`` is importable (``VectorIndex`` copies them itself), HNSW on the CPU cores.

Time budget: ingest ~2-3 min (model load included), query ~4 min (``--budget-s``); stop with Ctrl-C any time.

Not a benchmark of its own: it runs the two benchmarks above in this process with GPU settings, so it is the one
module under bench/ that imports benchmark modules (nothing imports it). Their sections have GPU titles
("Ingest throughput on GPU", "Query latency, recall and memory by index type, on GPU"): a GPU run replaces the
previous GPU run, never the CPU sections.
"""

from __future__ import annotations

import argparse
import logging
import os
import time
from collections.abc import Sequence

from bench import index_bench, ingest_bench
from bench.harness import command_line, publish, set_omp_wait_policy

QUERY_BUDGET_S = 240.0


def gpu_name() -> str:
    import torch

    if not torch.cuda.is_available():
        return "no CUDA device (dry run on CPU)"
    props = torch.cuda.get_device_properties(0)
    return f"GPU {props.name} ({props.total_memory / 1024**3:.0f} GiB), CUDA {torch.version.cuda}"


def faiss_gpu_note() -> str:
    import faiss

    count = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
    return f"faiss {faiss.__version__} with {count} GPU(s)" if count else f"faiss {faiss.__version__} (CPU only)"


def large_v3_offline() -> str | None:
    """The local folder of faster-whisper large-v3 if it is already downloaded (no network on the GPU host)."""
    folder = os.environ.get("SAVE_BENCH_WHISPER_DIR")
    if folder:
        return folder
    try:
        from faster_whisper.utils import download_model

        return download_model("large-v3", local_files_only=True)
    except Exception:  # noqa: BLE001 - not cached (or no hub library): fall back to the bundled base
        return None


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes, print only (checks the script runs)")
    p.add_argument("--no-append", action="store_true")
    p.add_argument("--skip-ingest", action="store_true")
    p.add_argument("--skip-query", action="store_true")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    policy = set_omp_wait_policy("passive")  # before torch/faiss load: see bench/omp_check.py

    import torch

    if args.dry_run:
        os.environ["SAVE_BENCH_NO_WAIT"] = "1"
    command = command_line("bench.gpu_bench", argv)
    cuda = torch.cuda.is_available() and not args.dry_run
    if not cuda and not args.dry_run:
        raise SystemExit("no CUDA device: run with --dry-run to check the script on CPU")
    extra = f"{gpu_name()}, {faiss_gpu_note()}, OMP_WAIT_POLICY {policy}"
    started = time.monotonic()
    sections = []
    if not args.skip_ingest:
        if cuda:
            whisper = large_v3_offline()
            ingest_args = ["--device", "cuda", "--batch", "16", "--threads", str(os.cpu_count() or 1),
                           "--whisper-compute-type", "float16", "--asr-batch-size", "16"]
            if whisper:
                ingest_args += ["--whisper-model", whisper]
        else:  # dry run: the tiny architecture, 3 clips, the bundled base
            ingest_args = ["--device", "cpu", "--config", "tiny", "--quick", "--whisper-compute-type", "int8",
                           "--asr-batch-size", "4"]
        ns = ingest_bench.parser().parse_args(ingest_args)
        sections.append(ingest_bench.run(ns, command, extra))
        print(sections[-1], flush=True)
    if not args.skip_query:
        if cuda:
            query_args = ["--device", "cuda", "--sizes", "1000000,100000,10000", "--e2e", "10000", "--queries", "200",
                          "--hnsw-max", "100000", "--ivf-train-max", "400000", "--budget-s", str(QUERY_BUDGET_S)]
        else:
            query_args = ["--sizes", "12000", "--e2e", "12000", "--queries", "20", "--e2e-queries", "10",
                          "--candidates", "50,200", "--budget-s", "120"]
        ns = index_bench.parser().parse_args(query_args)
        sections.append(index_bench.run(ns, command, extra))
        print(sections[-1], flush=True)
    elapsed = time.monotonic() - started
    print(f"gpu_bench finished in {elapsed:.0f} s", flush=True)
    if cuda and not args.no_append:
        for text in sections:
            publish(f"{text.rstrip()}\n\nTotal gpu_bench run time: {elapsed:.0f} s (goal: within 8 min).\n", True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
