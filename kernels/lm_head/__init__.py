"""The LM head under the alignment rule: bf16 operands, fp32 accumulation, fp32 logits/log-probs.

- ``logits_fp32(hidden, weight)``: [N, D] × [V, D] → [N, V] fp32 (the rollout engine's logits).
- ``token_logprobs(hidden, weight, tokens)``: sampled-token log-probs and entropy, chunked over
  the vocabulary with an online logsumexp and a chunk-wise backward (the trainer's log-probs).
- ``reference``: the non-fused full-vocabulary versions, for tests and benchmarks.
``backend=`` as in :mod:`kernels.backend`: CUDA → Triton, CPU → PyTorch (float64-accumulated).
Modules: ``logits`` (``logits_fp32``, ``matmul_fp32`` and their GEMM kernel), ``logprobs``
(``token_logprobs``), ``online_softmax`` (its per-chunk statistics and gradients).
"""

from .logits import logits_fp32, matmul_fp32
from .logprobs import token_logprobs
from .reference import logits_ref, token_logprobs_ref

__all__ = ["logits_fp32", "logits_ref", "matmul_fp32", "token_logprobs", "token_logprobs_ref"]
