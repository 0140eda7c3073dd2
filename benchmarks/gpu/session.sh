#!/bin/bash
# On the GPU machine, once the kit's pieces are in /tmp/acc (see benchmarks/gpu/README.md):
# installs the kit and the project into /tmp/site, prints the software and the card, runs "$@".
set -e
bash .kit/unpack.sh
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1
python3 -c "import torch, triton, vllm, ray, deepspeed, transformers; print('torch', torch.__version__, 'triton', triton.__version__, 'vllm', vllm.__version__, 'ray', ray.__version__, 'deepspeed', deepspeed.__version__, 'transformers', transformers.__version__)" 2>&1 | grep -v real_accelerator
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
"$@"
