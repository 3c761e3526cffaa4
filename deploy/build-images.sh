#!/usr/bin/env bash
# Build the API and CPU worker images with podman (Docker works the same way with the same
# build arguments): `bash deploy/build-images.sh [TAG]` (default tag: smoke).
#
# The base: LABELQ_IMAGE_BASE if set; else the official Python image if a registry answers;
# else a Debian bookworm made here with debootstrap (python3.11 and its venv module), imported
# once as localhost/labelq-base:bookworm and reused (the build cache keys on it).
# What the host lends the builds, when it has it: its CA bundle (PIP_CERT, for HTTPS through a
# proxy) and its folder of wheels (PIP_FIND_LINKS: the CPU torch build where PyTorch's own index
# cannot be reached). Prints each image's build time and size.
set -euo pipefail
cd "$(dirname "$0")/.."
tag=${1:-smoke}
export CONTAINERS_CONF=${CONTAINERS_CONF:-$PWD/deploy/podman/containers.conf}
podman=(podman)
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}

base=${LABELQ_IMAGE_BASE:-}
if [ -z "$base" ]; then
  if podman image exists localhost/labelq-base:bookworm; then
    base=localhost/labelq-base:bookworm
  elif timeout 60 podman pull -q docker.io/library/python:3.11.11-slim-bookworm >/dev/null 2>&1; then
    base=docker.io/library/python:3.11.11-slim-bookworm
  else
    command -v debootstrap >/dev/null || apt-get install -y -q debootstrap >/dev/null
    rootfs=$(mktemp -d)
    trap 'rm -rf "$rootfs"' EXIT
    echo "no registry: a Debian base from $mirror with debootstrap"
    debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
      bookworm "$rootfs" "$mirror" >/dev/null
    tar -C "$rootfs" -c . | podman import -q - localhost/labelq-base:bookworm >/dev/null
    rm -rf "$rootfs"
    trap - EXIT
    base=localhost/labelq-base:bookworm
  fi
fi

args=(--network host --build-arg "BASE=$base")
ca=${PIP_CERT:-}
if [ -n "$ca" ] && [ -f "$ca" ]; then
  args+=(-v "$ca:/host-ca.crt:ro" --build-arg HOST_CA=/host-ca.crt)
fi
wheels=${PIP_FIND_LINKS:-}
if [ -n "$wheels" ] && [ -d "$wheels" ]; then
  args+=(-v "$wheels:/wheels:ro" --build-arg WHEELS=/wheels)
  if compgen -G "$wheels/torch-*+cpu-*.whl" >/dev/null; then
    args+=(--build-arg TORCH_INDEX=)  # the CPU build lies here: no other index to ask
  fi
fi

for image in api worker-cpu; do
  start=$(date +%s)
  "${podman[@]}" build -q --format docker "${args[@]}" -f "deploy/docker/Dockerfile.$image" \
    -t "localhost/labelq-$image:$tag" . >/dev/null
  size=$(podman image inspect --format '{{.Size}}' "localhost/labelq-$image:$tag")
  echo "labelq-$image:$tag built in $(($(date +%s) - start)) s, $((size / 1000000)) MB (base $base)"
done
