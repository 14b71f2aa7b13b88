#!/usr/bin/env sh
# Ingest + query benchmarks on a CUDA host (about 8 minutes); results go to BENCHMARKS.md (replacing the previous GPU run).
cd "$(dirname "$0")/.." && exec "${PYTHON:-.venv/bin/python}" -m bench.gpu_bench "$@"
