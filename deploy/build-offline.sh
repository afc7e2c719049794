#!/usr/bin/env bash
# Build (and smoke-test) the image on a machine with no image registry and no Docker daemon, with
# Debian's podman: the base is bootstrapped locally with debootstrap (Debian bookworm, Python 3.11) and
# CPU torch comes from a local wheel directory. Everything else installs as in the Dockerfile.
#   deploy/build-offline.sh            # build torchcycle:latest
#   deploy/build-offline.sh --smoke    # build, then run the smoke test
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=${WORK:-${TMPDIR:-/tmp}/torchcycle-image}
WHEELS=${WHEELS:-/opt/wheels}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
BASE=localhost/torchcycle-base:bookworm
# this machine's kernel runs cgroups in hybrid mode and refuses high rlimits inside containers
PODMAN=(podman --runtime runc --cgroup-manager cgroupfs)
LIMITS=(--ulimit nofile=4096:4096 --ulimit nproc=4096:4096)

need() { command -v "$1" >/dev/null || { SUDO=$([ "$(id -u)" = 0 ] || echo sudo);
  $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "$2"; }; }
need podman podman; need runc runc; need debootstrap debootstrap

if ! "${PODMAN[@]}" image exists "$BASE"; then
  rootfs="$WORK/rootfs"
  rm -rf "$rootfs" && mkdir -p "$WORK"
  debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates,git,make bookworm "$rootfs" "$MIRROR"
  chroot "$rootfs" python3 -m venv /usr/local/python
  tar -C "$rootfs" -c . | "${PODMAN[@]}" import \
    --change 'ENV PATH=/usr/local/python/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' - "$BASE"
  rm -rf "$rootfs"
fi

"${PODMAN[@]}" build --format docker "${LIMITS[@]}" --network host \
  -v "$WHEELS:/wheels:ro" -v /etc/ssl/certs:/etc/ssl/certs:ro \
  --build-arg BASE_IMAGE="$BASE" --build-arg TORCH_PIP_ARGS="--find-links /wheels" \
  -t torchcycle:latest "$ROOT"

if [ "${1:-}" = "--smoke" ]; then
  "${PODMAN[@]}" run --rm "${LIMITS[@]}" torchcycle:latest torchcycle --help >/dev/null
  "${PODMAN[@]}" run --rm "${LIMITS[@]}" torchcycle:latest python -c \
    "import torch, mlflow, dvc, prefect, onnxruntime, streamlit; assert torch.__version__.startswith('2.13.0'); assert not torch.cuda.is_available()"
  name=torchcycle-smoke-$$
  "${PODMAN[@]}" run -d --name "$name" "${LIMITS[@]}" --network host torchcycle:latest \
    streamlit run dashboards/app.py --server.headless true --server.address 127.0.0.1 --server.port 8599 \
    --browser.gatherUsageStats false >/dev/null
  trap '"${PODMAN[@]}" rm -f "$name" >/dev/null' EXIT
  for _ in $(seq 60); do
    if python3 -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8599/_stcore/health', timeout=2)" 2>/dev/null; then
      echo "smoke test passed: the image runs the CLI and serves the dashboard"; exit 0
    fi
    sleep 1
  done
  echo "smoke test failed: the dashboard did not become healthy" >&2
  "${PODMAN[@]}" logs "$name" >&2 || true
  exit 1
fi
