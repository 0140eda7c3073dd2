"""``causal_attention``: causal GQA softmax attention, ``[B, T, H, D]`` or sequences packed along
T with ``cu_seqlens``, differentiable.  This module owns the public function: its input checks
and the choice of implementation (``backend=`` as in :mod:`kernels.backend`): one SDPA call per
sequence (``causal_torch.py``, the CPU path) or the Triton kernels (``causal_triton.py``: the
whole pack in one launch forward, two backward).
"""

from __future__ import annotations

import torch

from ..backend import HAS_TRITON, Backend, resolve_backend
from .causal_torch import causal_torch

if HAS_TRITON:  # CPU-only installs may lack triton
    from .causal_triton import causal_triton

_DTYPES = (torch.bfloat16, torch.float16, torch.float32, torch.float64)


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                     cu_seqlens: torch.Tensor | None = None, scale: float | None = None, *,
                     backend: Backend = "auto") -> torch.Tensor:
    """Causal softmax attention within each sequence.

    Args:
        q: ``[B, T, H, D]`` queries; k, v: ``[B, T, KV, D]`` keys and values, KV dividing H (query
            head h reads KV head ``h // (H // KV)``).  One dtype (bf16, fp16 or fp32; fp64 on the
            torch backend), one device; any strides with the last dim contiguous (views of a
            fused projection are read in place by the Triton kernels).
        cu_seqlens: int32/int64 ``[N + 1]``, 0 first, T last, non-decreasing (checked on the
            host: one device sync): the sequences packed along T (B must be 1); a token attends
            to the tokens of its own sequence up to itself.  None: each of the B rows is one
            sequence.
        scale: the score scale (None: ``D ** -0.5``).
        backend: "auto" | "triton" | "torch" (:mod:`kernels.backend`); the Triton kernels need a
            power-of-two head dim in [16, 256].
    Returns:
        o ``[B, T, H, D]`` in q's dtype (softmax and sums in fp32).  Gradients flow to q, k, v.
    """
    for name, x in (("q", q), ("k", k), ("v", v)):
        if not isinstance(x, torch.Tensor) or x.dim() != 4:
            raise ValueError(f"{name} must be a 4-D tensor [B, T, heads, D], got {getattr(x, 'shape', type(x))}")
    B, T, H, D = q.shape
    KV = k.shape[2]
    if k.shape != v.shape or k.shape[:2] != (B, T) or k.shape[3] != D or H % KV:
        raise ValueError(f"k and v must be [B, T, KV, D] with KV dividing the {H} query heads; got q "
                         f"{list(q.shape)}, k {list(k.shape)}, v {list(v.shape)}")
    if not (q.dtype == k.dtype == v.dtype) or q.dtype not in _DTYPES:
        raise ValueError(f"q, k, v must share one dtype of bf16/fp16/fp32, got {q.dtype}, {k.dtype}, {v.dtype}")
    if not (q.device == k.device == v.device):
        raise ValueError("q, k, v must be on one device")
    be = resolve_backend("softmax_attention.causal", q, backend)
    if be == "triton":
        if q.dtype == torch.float64:
            raise ValueError("the Triton kernels take bf16/fp16/fp32 inputs; float64 is for the torch "
                             "backend and the naive reference")
        if D & (D - 1) or not 16 <= D <= 256:
            raise ValueError(f"the Triton kernels need a power-of-two head dim in [16, 256], got {D}")
    bounds = None
    if cu_seqlens is not None:
        if B != 1:
            raise ValueError(f"with cu_seqlens the sequences are packed: B must be 1, got {B}")
        if cu_seqlens.dim() != 1 or cu_seqlens.dtype not in (torch.int32, torch.int64) or cu_seqlens.numel() < 2:
            raise ValueError("cu_seqlens must be a 1-D int32/int64 tensor [N + 1]")
        bounds = cu_seqlens.tolist()
        if bounds[0] != 0 or bounds[-1] != T or any(b < a for a, b in zip(bounds, bounds[1:])):
            raise ValueError(f"cu_seqlens must start at 0, end at T={T} and never decrease; got {bounds}")
    scale = D ** -0.5 if scale is None else float(scale)
    if be == "torch":
        return causal_torch(q, k, v, cu_seqlens, scale)
    if bounds is None:  # B rows of T: the same kernel over B packed sequences
        bounds = [b * T for b in range(B + 1)]
    cu = torch.tensor(bounds, dtype=torch.int32).to(q.device, non_blocking=True)
    o = causal_triton(q.reshape(B * T, H, D), k.reshape(B * T, KV, D), v.reshape(B * T, KV, D), cu, bounds, scale)
    return o.view(B, T, H, D)
