#!/usr/bin/env bash
# The GPU image on a GPU host, in one command: CUDA seen by torch, CTranslate2 and faiss inside the image,
# then the service on CUDA ingests one real clip and finds it by its words.
#
#   docker/gpu-smoke.sh                 # builds docker/Dockerfile.gpu first (PYTHON_IMAGE etc. from the env)
#   docker/gpu-smoke.sh IMAGE           # or checks an image built already (e.g. save-search:gpu)
#
# Needs: a Docker engine with the NVIDIA driver and the NVIDIA Container Toolkit (`docker run --gpus all`),
# and the shared media beside the clone (SMOKE_MEDIA_DIR, default <clone>/../shared/data/media). Nothing is
# downloaded at run time: speech uses the bundled Whisper base (SAVE_SEARCH_WHISPER_MODEL overrides it, e.g.
# large-v3 with a hub or a baked image); without CLIP/AST weights the service runs in speech mode.
# Not run in CI (no GPU there); CI builds this image to its end with docker/ci-smoke.sh SMOKE_GPU_BUILD=1.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
cd "$REPO"
MEDIA=${SMOKE_MEDIA_DIR:-$(dirname "$REPO")/shared/data/media}
RUN_ID=ss-gpu-smoke-$$
IMAGE=${1:-}
WORK=$(mktemp -d "${TMPDIR:-/var/tmp}/save-search-gpu-smoke.XXXXXX")
T0=$(date +%s)
log() { printf '[gpu-smoke %4ss] %s\n' "$(($(date +%s) - T0))" "$*"; }
fail() {
  printf '[gpu-smoke] FAILED: %s\n' "$*" >&2
  exit 1
}
cleanup() {
  local rc=$?
  set +e
  if [ "$rc" != 0 ] && docker inspect "$RUN_ID" >/dev/null 2>&1; then docker logs --tail 80 "$RUN_ID" 2>&1; fi
  docker rm -f "$RUN_ID" >/dev/null 2>&1
  docker volume rm -f "$RUN_ID-data" >/dev/null 2>&1
  [ -n "${BUILT:-}" ] && docker rmi -f "$IMAGE" >/dev/null 2>&1
  rm -rf "$WORK"
  exit $rc
}
trap cleanup EXIT

timeout 20 docker info >/dev/null 2>&1 || fail "no Docker engine answers"
[ -d "$MEDIA/speech" ] || fail "no media at $MEDIA (SMOKE_MEDIA_DIR)"
if [ -z "$IMAGE" ]; then
  IMAGE=save-search:$RUN_ID
  args=()
  for a in PYTHON_IMAGE TORCH_SPEC TORCH_INDEX_URL TORCH_FIND_LINKS; do
    [ -n "${!a:-}" ] && args+=(--build-arg "$a=${!a}")
  done
  log "building docker/Dockerfile.gpu as $IMAGE"
  start=$(date +%s)
  docker build --network host -f docker/Dockerfile.gpu "${args[@]}" -t "$IMAGE" . >"$WORK/build.log" 2>&1 \
    || { tail -n 40 "$WORK/build.log"; fail "docker build -f docker/Dockerfile.gpu"; }
  BUILT=1
  log "built in $(($(date +%s) - start)) s, $(($(docker image inspect -f '{{.Size}}' "$IMAGE") / 1000000)) MB"
fi

log "CUDA inside the image (torch, CTranslate2, faiss)"
docker run --rm --gpus all --entrypoint python "$IMAGE" -c '
import ctranslate2, faiss, numpy as np, torch
assert torch.cuda.is_available(), "torch sees no GPU"
x = torch.randn(256, 256, device="cuda")
print("torch", torch.__version__, "CUDA", torch.version.cuda, torch.cuda.get_device_name(0), float((x @ x).sum()))
n = ctranslate2.get_cuda_device_count()
assert n > 0, "CTranslate2 sees no GPU"
print("ctranslate2", ctranslate2.__version__, "CUDA devices", n, "compute types", sorted(ctranslate2.get_supported_compute_types("cuda")))
assert faiss.get_num_gpus() > 0, "faiss sees no GPU"
index = faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), 0, faiss.IndexFlatIP(64))
xb = np.random.rand(1000, 64).astype("float32"); index.add(xb)
print("faiss", faiss.__version__, "GPUs", faiss.get_num_gpus(), "search", index.search(xb[:2], 1)[1].ravel().tolist())
from faster_whisper import WhisperModel
WhisperModel("/opt/save-search/whisper-base", device="cuda")
print("faster-whisper base loaded on CUDA")
' || fail "CUDA is not usable inside the image (driver, NVIDIA Container Toolkit, or the image's CUDA libraries)"

log "clips from $MEDIA (made inside the image)"
chmod 777 "$WORK"
docker run --rm --entrypoint python -v "$REPO:/repo:ro" -v "$MEDIA:/media:ro" -v "$WORK:/out" "$IMAGE" \
  /repo/docker/ci/make_clips.py /out/clips /media >/dev/null || fail "could not make the clips"
sed -i "s#\"/out/#\"$WORK/#g" "$WORK/clips/manifest.json"

PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
log "serve on CUDA (port $PORT)"
docker run -d --gpus all --init --name "$RUN_ID" --network host -v "$RUN_ID-data:/data" \
  -e SAVE_SEARCH_WHISPER_MODEL="${SAVE_SEARCH_WHISPER_MODEL:-/opt/save-search/whisper-base}" \
  "$IMAGE" serve --host 127.0.0.1 --port "$PORT" >/dev/null
secs=$(python3 docker/ci/smoke_checks.py wait "http://127.0.0.1:$PORT/healthz" 600) || fail "never healthy"
log "healthz after $secs s"
python3 docker/ci/smoke_checks.py ingest "http://127.0.0.1:$PORT" "$WORK/clips/manifest.json" "$WORK/state.json" \
  || fail "ingest/search on the GPU image"
docker logs "$RUN_ID" 2>&1 | grep -i -E "cuda|device" | head -n 5 || true
start=$(date +%s.%N)
docker stop -t 60 "$RUN_ID" >/dev/null
log "docker stop: exit $(docker inspect -f '{{.State.ExitCode}}' "$RUN_ID") after $(python3 -c "print(f'{$(date +%s.%N) - $start:.1f}')") s"
[ "$(docker inspect -f '{{.State.ExitCode}}' "$RUN_ID")" = 0 ] || fail "docker stop: exit code not 0"
log "passed"
