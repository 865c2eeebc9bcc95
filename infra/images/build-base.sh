#!/usr/bin/env bash
# Build a Debian bookworm Python image without Docker Hub, for builders' base
# images and tests: debootstrap a minimal root file system, `docker import` it,
# then add a virtualenv at /opt/venv (first on PATH) holding wandb, installed
# from wheels the host downloads, so nothing in a build needs the internet
# but this script.
#
#   infra/images/build-base.sh [TAG]     (default prefect-launch/python:3.11)
#
# Skips all work when TAG exists. Needs root, debootstrap and a Docker engine.
set -euo pipefail
TAG=${1:-prefect-launch/python:3.11}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
WANDB_VERSION=${WANDB_VERSION:-$(python3 -c 'import wandb; print(wandb.__version__)' 2>/dev/null || echo 0.31.0)}

if docker image inspect "$TAG" >/dev/null 2>&1; then
  echo "$TAG already built" >&2
  exit 0
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
echo "debootstrap bookworm into $work/rootfs (a few minutes) ..." >&2
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates bookworm "$work/rootfs" "$MIRROR" >"$work/debootstrap.log" 2>&1 ||
  { tail -20 "$work/debootstrap.log" >&2; exit 1; }
rm -rf "$work/rootfs/var/cache/apt/archives/"*.deb "$work/rootfs/var/lib/apt/lists/"*
tar -C "$work/rootfs" -c . | docker import - "$TAG-rootfs" >/dev/null

echo "downloading wandb==$WANDB_VERSION wheels ..." >&2
mkdir "$work/context"
python3 -m pip download -q --only-binary=:all: --python-version 3.11 --platform manylinux2014_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 --platform any \
  -d "$work/context/wheels" "wandb==$WANDB_VERSION" pip setuptools wheel
cat >"$work/context/Dockerfile" <<DOCKERFILE
FROM $TAG-rootfs
COPY wheels /tmp/wheels
RUN python3 -m venv /opt/venv \\
 && /opt/venv/bin/pip install -q --no-index --find-links /tmp/wheels --upgrade pip wandb \\
 && rm -rf /tmp/wheels /root/.cache
ENV PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \\
    LANG=C.UTF-8 PYTHONUNBUFFERED=1
CMD ["python"]
DOCKERFILE
docker build -q --network host -t "$TAG" "$work/context" >/dev/null
docker rmi "$TAG-rootfs" >/dev/null
echo "built $TAG" >&2
