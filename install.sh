#!/usr/bin/env bash
# Creates .venv and installs save-search with everything it needs, from PyPI only.
#
# torch: TORCH_SPEC picks the release (default below). On a GPU host the default PyPI wheel is the CUDA
# build, which is what you want. On a CPU-only host you may prefer the much smaller CPU wheel:
#   TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu ./install.sh
# EXTRAS adds optional dependency groups (default "dev", for the tests); GPU hosts: EXTRAS=dev,gpu.
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
EXTRAS=${EXTRAS:-dev}

if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
if [ -n "${TORCH_INDEX_URL:-}" ]; then
  .venv/bin/python -m pip install --quiet "$TORCH_SPEC" --index-url "$TORCH_INDEX_URL"
else
  .venv/bin/python -m pip install --quiet "$TORCH_SPEC"
fi
.venv/bin/python -m pip install --quiet -e ".[${EXTRAS}]"
case ",${EXTRAS}," in
  *,gpu,*)  # faiss-cpu and faiss-gpu install into the same folder: keep only the GPU build
    .venv/bin/python -m pip uninstall --quiet -y faiss-cpu
    .venv/bin/python -m pip install --quiet --force-reinstall --no-deps "faiss-gpu-cu12>=1.8" ;;
esac
.venv/bin/python -c "import torch, transformers, faster_whisper; print('installed: torch', torch.__version__, \
'| transformers', transformers.__version__, '| faster-whisper', faster_whisper.__version__, \
'| cuda', torch.cuda.is_available())"
