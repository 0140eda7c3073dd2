"""Linear attention of the Ring-linear layer (DESIGN.md §3, steps 3–4): chunk and decode forms.

    S_t = λ_h S_{t-1} + k_tᵀ v_t        o_t = scale · q_t S_t        λ_h = exp(decay[h])

Public API (shared by the trainer and the vLLM-side model), one module per op:

* :func:`chunk` (``chunk.py``) — training and prefill, ``[B, T, H, D]`` or packed varlen,
  autograd; implementations ``chunk_torch.py`` (PyTorch, the CPU path) and ``chunk_triton.py``.
* :func:`recurrent` (``recurrent.py``) — decode, one (or a few) tokens per sequence, state pool
  updated in place; implementations ``recurrent_torch.py`` (PyTorch and the C kernel
  ``decode_cpu.c``, the CPU path) and ``recurrent_triton.py``.
* :func:`decode_packed` (``recurrent.py``) — the engine's CPU decode step: q, k, v packed as the
  model projects them, slots checked once per step (:class:`StateSlots`, ``state.py``), the C
  kernel with no per-call copies.
* :func:`layer_decay`, :func:`alibi_slopes`, :func:`layer_factor` (``decay.py``) — the per-head
  log-decay.
* :func:`naive_recurrence` (``naive.py``) — the float64-capable token-loop reference (tests only).

``backend=`` as in :mod:`kernels.backend`: CUDA tensors run the Triton kernels, CPU tensors the
PyTorch chunked / vectorised implementations; ``"triton"`` on CPU tensors needs
``TRITON_INTERPRET=1`` (the tests use it); ``"torch"`` works everywhere.

Conventions: ``decay`` is the per-head *log*-decay ``g <= 0`` (fp32 ``[H]``); states are fp32
``[.., H, D, D]`` indexed ``[key dim, value dim]``; the chunk size is the constant 64.  Strict
(batch-invariant) mode needs no flag: the Triton kernels always use one fixed launch
configuration and chunk boundaries fixed from each sequence's start, so a token's output does not
depend on T, on the batch it is in, or on its neighbours in a packed batch.  The Triton forward
cuts sequences longer than ``chunk_triton.SEGMENT`` (2048) tokens into segments run in parallel
(so one long sequence fills a GPU); the segment boundaries are fixed from the sequence start too.

The functions ``chunk`` and ``recurrent`` shadow their modules' names as attributes of this
package; reach the modules themselves through ``importlib.import_module``.
"""

from .chunk import chunk
from .chunk_torch import CHUNK as CHUNK_SIZE
from .decay import alibi_slopes, layer_decay, layer_factor
from .naive import naive_recurrence
from .recurrent import decode_packed, recurrent
from .state import StateSlots

__all__ = ["chunk", "recurrent", "decode_packed", "StateSlots", "alibi_slopes", "layer_decay", "layer_factor",
           "naive_recurrence", "CHUNK_SIZE"]
