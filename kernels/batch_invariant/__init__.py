"""Batch-invariant ops: strict mode's kernels (DESIGN.md §4, docs/decisions.md "Strict mode").

A row's result is bitwise the same whatever else is in the batch: how many rows, where this one
sits, what its neighbours hold, and the thread count (1 or 2 here).  Both engines call these in
strict mode, so the trainer's log-prob of a token equals the rollout engine's bit for bit.

On CPU in fp32 the GEMM, the attention, the recurrence and the activations run C kernels
(``strict_cpu.c`` via :mod:`.cpu`): each output element one fixed sequence of roundings,
invariant by construction and a few µs per call.  On CUDA tensors Triton kernels do
(``strict_triton.py`` via :mod:`.cuda`; RMSNorm too, :func:`invariant_rms_norm`), invariant by
construction as well: one compiled configuration, every reduction inside one program in a fixed
order (docs/decisions.md, "Strict mode on CUDA").  The PyTorch formulations below (invariant by
measurement on CPU) remain for machines without a C compiler or triton — other bits, the same in
both engines.  Why each is needed, measured with torch 2.13's CPU kernels (MKL):

* :func:`linear` (``matmul.py``) — ``x @ W.T`` is not batch invariant (row i of an M-row product
  differs from the same row computed with another M); a fixed tile of 16 rows is.
  :func:`grouped_linear`: one weight per group of rows (the MoE's experts), the C kernel's.
* :func:`sigmoid`, :func:`silu` (``activation.py``) — ``torch.sigmoid`` / ``F.silu`` round the
  vectorised body and the scalar tail of a tensor differently, so an element's bits depend on
  its offset; ``exp`` and IEEE ``+ − × ÷`` do not.
* :func:`attention` (``attention.py``) — causal softmax attention whose sum over keys runs in
  fixed 16-key blocks, in order: one decode query and the same row of a prefill get the same bits.
* :func:`recurrence` (``linear_attention.py``) — the linear-attention recurrence as one token
  loop, for training (autograd), prefill and decode alike.
* :func:`log_softmax_tokens` (``logprobs.py``) — the sampler's log-softmax (vLLM's
  ``processed_logprobs``), restated for the trainer.

Checked invariant as they are (tests/kernels/test_batch_invariant.py): RMSNorm and group RMSNorm
(``kernels.norm``: reductions over a contiguous last dim), RoPE tables (float64 ``cos``/``sin``),
``exp``, ``torch.log_softmax`` over the vocabulary, stable sorts and gathers.

Each op has a float64 reference check and a bitwise invariance check in the tests.
"""

from .activation import sigmoid, silu
from .attention import KEY_BLOCK, attention
from .linear_attention import recurrence
from .logprobs import log_softmax_tokens
from .matmul import TILE_ROWS, grouped_linear, linear
from .norm import invariant_rms_norm

__all__ = ["TILE_ROWS", "linear", "grouped_linear", "sigmoid", "silu", "KEY_BLOCK", "attention", "recurrence",
           "log_softmax_tokens", "invariant_rms_norm"]
