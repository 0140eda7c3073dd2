#!/bin/bash
# One device call for the FP8 quantizers (issue 4): GPU tests, then the bandwidth section.
# Usage (on the GPU machine, repo root): bash benchmarks/tools/fp8_quant_gpu.sh [pytest -k expr] [sections]
export TRITON_INTERPRET=0 PYTHONUNBUFFERED=1
OUT=${OUT:-.}
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,temperature.gpu --format=csv,noheader
date -u
python -m pytest -q -p no:cacheprovider tests/kernels/test_fp8.py -k "${1:-hard or gluon or cached}" -x 2>&1 | tail -25
date -u
python -m benchmarks.fp8.ops --sections "${2:-bw}" --out "$OUT" 2>&1
date -u
