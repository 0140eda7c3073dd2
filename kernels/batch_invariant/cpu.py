"""Strict mode's C kernels on CPU (``strict_cpu.c``): the GEMM, the softmax attention and the
linear-attention recurrence, each a fixed sequence of roundings per output element (so batch
invariant by construction), called through ctypes (:mod:`kernels.native`: built at first use,
~1 s; a call costs a few µs where the PyTorch formulations cost one op per tile or per token).

Every function returns None when it cannot take the call (not fp32 on CPU, the kernel
unavailable: no C compiler, or ``LOCKSTEP_NATIVE_KERNELS=0``); the caller then runs its PyTorch
formulation, whose bits differ from the kernel's.  Both engines of a run see the same machine and
environment, so they take the same path; the fallback is logged once (``kernels.native``) and
counted in :data:`FALLBACKS`.
"""

from __future__ import annotations

import ctypes
from pathlib import Path

import torch

from .. import native

_SOURCE = Path(__file__).with_name("strict_cpu.c")
_i64, _ptr, _f32, _f64 = ctypes.c_int64, ctypes.c_void_p, ctypes.c_float, ctypes.c_double
_SIGNATURES = {
    "lockstep_bi_linear_f32": (None, [_ptr, _i64, _i64, _ptr, _i64, _ptr, _i64, _i64, _ptr]),
    "lockstep_bi_sigmoid_f32": (None, [_ptr, _i64, ctypes.c_int, _ptr]),
    "lockstep_bi_attention_f32": (None, [_ptr, _ptr, _ptr, _i64, _i64, _i64, _i64, _i64, _ptr, _i64, _i64, _ptr,
                                         _ptr, _f32, _ptr]),
    "lockstep_bi_recurrence_f32": (None, [_ptr, _ptr, _ptr, _i64, _i64, _i64, _i64, _ptr, _f64, _ptr, _i64, _ptr,
                                          _ptr, _ptr]),
}
MAX_D = 256  # strict_cpu.c's accumulator arrays
FALLBACKS: dict[str, int] = {}  # op → calls that ran the PyTorch formulation instead of the kernel


def _kernels() -> ctypes.CDLL | None:
    return native.load(_SOURCE, _SIGNATURES)


def available() -> bool:
    """Whether strict mode's C kernels run on this machine (else the PyTorch formulations)."""
    return _kernels() is not None


def _fp32_cpu(*tensors: torch.Tensor) -> bool:
    return all(t.dtype == torch.float32 and t.device.type == "cpu" for t in tensors)


def takes(*tensors: torch.Tensor) -> bool:
    """Whether the kernels run on this machine and take these ``tensors`` (fp32 on CPU)."""
    return _fp32_cpu(*tensors) and available()


def _takes(op: str, *tensors: torch.Tensor) -> ctypes.CDLL | None:
    """The kernels, if they can take fp32 CPU ``tensors``; else None, counted in FALLBACKS."""
    if not _fp32_cpu(*tensors):
        return None
    lib = _kernels()
    if lib is None:
        FALLBACKS[op] = FALLBACKS.get(op, 0) + 1
    return lib


def linear(x: torch.Tensor, weight: torch.Tensor, ends: torch.Tensor | None = None) -> torch.Tensor | None:
    """``x Wᵀ`` with each element summed over K in order: x ``[N, K]``; weight ``[O, K]`` or, with
    ``ends``, one weight per group ``[E, O, K]`` where group g is rows ``ends[g-1]..ends[g]-1``
    (``ends`` int64 ``[E]``, non-decreasing, the last = N).  ``[N, O]``, or None (see module)."""
    lib = _takes("linear", x, weight)
    if lib is None:
        return None
    N, K = x.shape
    O = weight.shape[-2]
    x, weight = x.contiguous(), weight.contiguous()  # Wᵀ is packed in the kernel
    groups = 1 if ends is None else ends.numel()
    ends = None if ends is None else ends.to(torch.int64).contiguous()
    y = x.new_empty(N, O)
    lib.lockstep_bi_linear_f32(x.data_ptr(), N, K, weight.data_ptr(), O, None if ends is None else ends.data_ptr(),
                               groups, O * K, y.data_ptr())
    return y


def sigmoid(x: torch.Tensor, silu: bool = False) -> torch.Tensor | None:
    """``1 / (1 + exp(−x))`` (or ``x · sigmoid(x)``) element by element, no gradient; None (see module)."""
    lib = _takes("sigmoid", x)
    if lib is None:
        return None
    x = x.contiguous()
    y = torch.empty_like(x)
    lib.lockstep_bi_sigmoid_f32(x.data_ptr(), x.numel(), int(silu), y.data_ptr())
    return y


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor,
              scale: float) -> torch.Tensor | None:
    """Causal GQA attention, shapes as :func:`kernels.batch_invariant.attention`; positions must be
    < S.  ``[G, Tq, H, d]``, or None (see module)."""
    if _takes("attention", q, k, v) is None:
        return None
    G, S = k.shape[:2]
    k, v = k.contiguous(), v.contiguous()
    table = torch.arange(G, dtype=torch.int64)  # one block of S keys per sequence
    return paged_attention(q, k, v, table, S, positions, scale)


def paged_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, table: torch.Tensor, block: int,
                    positions: torch.Tensor, scale: float) -> torch.Tensor | None:
    """:func:`attention` reading the keys and values where they are: k, v ``[blocks, block, KV, d]``
    views with equal strides and a contiguous last dim (vLLM's cache: the K and V halves of one
    tensor), sequence g's key j in block ``table[g, j // block]`` (int64 ``[G, blocks per seq.]``).
    The same bits as :func:`attention` on the gathered keys.  ``[G, Tq, H, d]``, or None."""
    lib = _takes("attention", q, k, v)
    if lib is None or q.shape[-1] > MAX_D or k.stride() != v.stride() or k.stride(-1) != 1:
        return None
    G, Tq, H, D = q.shape
    KV = k.shape[2]
    q, table = q.contiguous(), table.to(torch.int64).contiguous()
    strides = torch.tensor(k.stride()[:3], dtype=torch.int64)
    positions = positions.to(torch.int64).contiguous()
    out = torch.empty_like(q)
    lib.lockstep_bi_attention_f32(q.data_ptr(), k.data_ptr(), v.data_ptr(), G, Tq, H, KV, D, table.data_ptr(),
                                  table.stride(0) if table.dim() > 1 else 1, block, strides.data_ptr(),
                                  positions.data_ptr(), scale, out.data_ptr())
    return out


def recurrence(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, lam: torch.Tensor, scale: float,
               state: torch.Tensor, slots: torch.Tensor | None = None, lengths: torch.Tensor | None = None
               ) -> torch.Tensor | None:
    """The linear-attention recurrence token after token, ``state`` updated in place: q, k, v
    ``[B, T, H, D]``; lam = exp(decay) fp32 ``[H]``; state fp32 ``[slots, H, D, D]`` (each slot
    contiguous; the slot stride free), sequence b on slot ``slots[b]`` (None: b; the caller
    checks they are distinct and in range), its first ``lengths[b]`` tokens (None: all; later
    outputs 0).  o ``[B, T, H, D]``, or None (see module)."""
    lib = _takes("recurrence", q, k, v, lam, state)
    B, T, H, D = q.shape
    if lib is None or D > MAX_D or not state[:1].is_contiguous():
        return None
    q, k, v, lam = q.contiguous(), k.contiguous(), v.contiguous(), lam.contiguous()
    slots = None if slots is None else slots.to(torch.int64).contiguous()
    lengths = None if lengths is None else lengths.to(torch.int64).contiguous()
    out = torch.empty_like(q)
    lib.lockstep_bi_recurrence_f32(q.data_ptr(), k.data_ptr(), v.data_ptr(), B, T, H, D, lam.data_ptr(), scale,
                                   state.data_ptr(), state.stride(0), None if slots is None else slots.data_ptr(),
                                   None if lengths is None else lengths.data_ptr(), out.data_ptr())
    return out


__all__ = ["available", "takes", "linear", "sigmoid", "attention", "paged_attention", "recurrence", "FALLBACKS", "MAX_D"]
