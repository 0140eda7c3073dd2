"""Causal softmax attention of the Ring-linear GQA layers (training and packed sequences).

    o_i = Σ_{j ≤ i, same sequence} softmax_j(scale · q_i·k_j) v_j

Public API, one module per op:

* :func:`causal_attention` (``causal.py``) — ``[B, T, H, D]`` or sequences packed along T with
  ``cu_seqlens``, GQA, autograd; implementations ``causal_torch.py`` (one SDPA call per
  sequence: the CPU path) and ``causal_triton.py`` (flash-attention-style kernels: the whole pack
  in one launch forward and two backward; the CUDA path).
* :func:`naive_causal_attention` (``naive.py``) — the float64-capable reference (tests only).

``backend=`` as in :mod:`kernels.backend`.  Named ``softmax_attention`` beside
``linear_attention``: the hybrid model's two kinds of attention layer.  Strict (batch-invariant)
mode's attention, shared with the rollout engine's paged cache, is
:func:`kernels.batch_invariant.attention`.
"""

from .causal import causal_attention
from .naive import naive_causal_attention

__all__ = ["causal_attention", "naive_causal_attention"]
