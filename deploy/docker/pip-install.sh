#!/bin/sh
# `pip install` into the image's virtualenv (/opt/labelq), pinned by /tmp/constraints.txt where
# the image has one (the GPU image pins by its lock instead), with what the build host lends
# through build arguments (all empty by default):
#   HOST_CA      a CA bundle mounted into the build, for a host whose HTTPS goes through a proxy
#   WHEELS       a folder of wheels mounted into the build, searched before the index
#   TORCH_INDEX  an extra index for torch (the CPU image: PyTorch's CPU wheel index)
set -eu
[ -z "${HOST_CA:-}" ] || export PIP_CERT="$HOST_CA"
[ -z "${WHEELS:-}" ] || export PIP_FIND_LINKS="$WHEELS"
[ -z "${TORCH_INDEX:-}" ] || set -- --extra-index-url "$TORCH_INDEX" "$@"
[ ! -f /tmp/constraints.txt ] || set -- --constraint /tmp/constraints.txt "$@"
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
exec /opt/labelq/bin/pip install "$@"
