"""``chunk``: chunked linear attention for training and prefill (``[B, T, H, D]`` or packed
varlen), differentiable.  This module owns the public function: its input validation and the
choice of implementation (``backend=`` as in :mod:`kernels.backend`): the PyTorch chunked form
(``chunk_torch.py``, the CPU path) or the Triton kernels (``chunk_triton.py``).
"""

from __future__ import annotations

import torch

from ..backend import HAS_TRITON, Backend, resolve_backend
from .chunk_torch import chunk_torch
from .decay import check_decay
from .state import check_state

if HAS_TRITON:  # CPU-only installs may lack triton
    from .chunk_triton import ChunkFunction

_DTYPES = (torch.bfloat16, torch.float16, torch.float32, torch.float64)


def check_triton_inputs(x: torch.Tensor, D: int) -> None:
    """What the Triton kernels (chunk and decode) take beyond the op's contract."""
    if x.dtype == torch.float64:
        raise ValueError("the Triton kernels take bf16/fp16/fp32 inputs; float64 is for the "
                         "torch backend and the naive reference")
    if D & (D - 1) or not 16 <= D <= 256:
        raise ValueError(f"the Triton kernels need a power-of-two head dim in [16, 256], got {D}")


def chunk(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, decay: torch.Tensor,
          scale: float | None = None, initial_state: torch.Tensor | None = None,
          cu_seqlens: torch.Tensor | None = None, output_final_state: bool = False, *,
          backend: Backend = "auto") -> tuple[torch.Tensor, torch.Tensor | None]:
    """Chunked linear attention (training, prefill).

    Args:
        q, k, v: ``[B, T, H, D]``, same dtype (bf16, fp16 or fp32; fp64 on the torch backend),
            same device.  With ``cu_seqlens``, ``B`` must be 1 and the sequences are packed along T.
        decay: fp32 ``[H]`` per-head log-decay (:func:`layer_decay`); not differentiated by the
            Triton kernels.
        scale: multiplier of ``q S`` (None: ``D ** -0.5``).
        initial_state: fp32 ``[N, H, D, D]`` ([key dim, value dim]); N = B, or the number of
            sequences with ``cu_seqlens``.  None means zeros.  Differentiable.
        cu_seqlens: int32/int64 ``[N + 1]``, 0 first, T last, non-decreasing (checked on the host:
            one device sync).
        output_final_state: also return the fp32 state after each sequence's last token.
        backend: "auto" | "triton" | "torch" (:mod:`kernels.backend`); the Triton kernels need a
            power-of-two head dim in [16, 256].
    Returns:
        ``(o, final_state)``: o ``[B, T, H, D]`` in q's dtype; final_state fp32 ``[N, H, D, D]``
        or None.  Gradients flow to q, k, v and initial_state.
    """
    for name, x in (("q", q), ("k", k), ("v", v)):
        if not isinstance(x, torch.Tensor) or x.dim() != 4:
            raise ValueError(f"{name} must be a 4-D tensor [B, T, H, D], got "
                             f"{getattr(x, 'shape', type(x))}")
    if not (q.shape == k.shape == v.shape):
        raise ValueError(f"q, k, v must have one shape [B, T, H, D]; got {list(q.shape)}, "
                         f"{list(k.shape)}, {list(v.shape)}")
    if not (q.dtype == k.dtype == v.dtype) or q.dtype not in _DTYPES:
        raise ValueError(f"q, k, v must share one dtype of bf16/fp16/fp32, got {q.dtype}, "
                         f"{k.dtype}, {v.dtype}")
    if not (q.device == k.device == v.device):
        raise ValueError("q, k, v must be on one device")
    B, T, H, D = q.shape
    be = resolve_backend("linear_attention.chunk", q, backend)
    check_decay(decay, H, q.device, be == "triton")
    if be == "triton":
        check_triton_inputs(q, D)
    N = B
    if cu_seqlens is not None:
        if B != 1:
            raise ValueError(f"with cu_seqlens the sequences are packed: B must be 1, got {B}")
        if cu_seqlens.dim() != 1 or cu_seqlens.dtype not in (torch.int32, torch.int64) \
                or cu_seqlens.numel() < 2:
            raise ValueError("cu_seqlens must be a 1-D int32/int64 tensor [N + 1]")
        cu = cu_seqlens.tolist()
        if cu[0] != 0 or cu[-1] != T or any(b < a for a, b in zip(cu, cu[1:])):
            raise ValueError(f"cu_seqlens must start at 0, end at T={T} and never decrease; got {cu}")
        N = len(cu) - 1
    if initial_state is not None:
        check_state("initial_state", initial_state, (N, H, D, D), q.dtype == torch.float64)
    if scale is None:
        scale = D ** -0.5
    if be == "torch":
        return chunk_torch(q, k, v, decay, scale, initial_state, cu_seqlens, output_final_state)
    return ChunkFunction.apply(q.contiguous(), k.contiguous(), v.contiguous(), decay.float().contiguous(),
                               float(scale), None if initial_state is None else initial_state.contiguous(),
                               cu_seqlens, output_final_state)
