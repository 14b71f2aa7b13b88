#!/usr/bin/env sh
# Ingest + query benchmarks on a CUDA host (about 8 minutes); results are appended to BENCHMARKS.md.
cd "$(dirname "$0")/.." && exec "${PYTHON:-.venv/bin/python}" -m bench.gpu_bench "$@"
