"""Strict mode's kernels on CUDA tensors: the Triton kernels of ``strict_triton.py``, batch
invariant by construction (docs/decisions.md, "Strict mode on CUDA"); the GPU twin of
:mod:`.cpu`, consulted at the same places.

Every function returns None when it does not take the call: tensors not on CUDA, a dtype or
shape outside the kernel's (fp64, a head dim that is not a power of two), or no triton.  The
caller then runs its PyTorch formulation — invariant on CPU by measurement only, so on a GPU a
fallback is logged once per op and counted in :data:`FALLBACKS` (both engines of a run see the
same machine and take the same path, but the path is not the one argued for GPUs).
"""

from __future__ import annotations

import logging

import torch

from ..backend import HAS_TRITON
from . import strict_triton

log = logging.getLogger("kernels")
FALLBACKS: dict[str, int] = {}  # op → CUDA calls that ran the PyTorch formulation instead of a kernel
_FLOATS = (torch.bfloat16, torch.float16, torch.float32)


def _takes(op: str, *tensors: torch.Tensor, dtypes: tuple[torch.dtype, ...] = _FLOATS, fits: bool = True) -> bool:
    """Whether the Triton kernel of ``op`` runs these tensors: all on CUDA, in ``dtypes``, and the
    op's own condition ``fits``; a CUDA call it cannot take is logged once and counted."""
    if not all(t.is_cuda for t in tensors):
        return False
    if HAS_TRITON and fits and all(t.dtype in dtypes for t in tensors):
        return True
    if op not in FALLBACKS:
        why = "triton is not installed" if not HAS_TRITON else \
            f"{', '.join(str(t.dtype) for t in tensors)} / shapes {[tuple(t.shape) for t in tensors]}"
        log.warning("strict mode: %s on CUDA runs its PyTorch formulation (%s): batch invariant on CPU by "
                    "measurement only", op, why)
    FALLBACKS[op] = FALLBACKS.get(op, 0) + 1
    return False


def _pow2(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


def linear_takes(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether :func:`linear` runs the kernel on these tensors."""
    return _takes("linear", x, weight, fits=x.dtype == weight.dtype)


def linear(x: torch.Tensor, weight: torch.Tensor, counts: list[int] | None = None) -> torch.Tensor | None:
    """``x Wᵀ`` (``counts``: one weight per group of rows), :func:`.strict_triton.linear`; or None."""
    if not linear_takes(x, weight):
        return None
    return strict_triton.linear(x, weight, counts)


def activation_takes(x: torch.Tensor) -> bool:
    """Whether :func:`activation` runs the kernel on x."""
    return _takes("sigmoid", x)


def activation(x: torch.Tensor, silu: bool) -> torch.Tensor | None:
    """sigmoid / silu element by element (no gradient), :func:`.strict_triton.activation`; or None."""
    if not activation_takes(x):
        return None
    return strict_triton.activation(x, silu)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float, groups: int) -> torch.Tensor | None:
    """RMSNorm in fp32 (no gradient), :func:`.strict_triton.rms_norm`; or None (fp64 weights)."""
    if not _takes("rms_norm", x, weight):
        return None
    return strict_triton.rms_norm(x, weight, eps, groups)


def paged_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, table: torch.Tensor, block: int,
                    positions: torch.Tensor, scale: float) -> torch.Tensor | None:
    """:func:`.strict_triton.paged_attention` (the contract of :func:`.cpu.paged_attention`); or None."""
    fits = k.stride() == v.stride() and k.stride(-1) == 1 and k.data_ptr() % 16 == 0 and v.data_ptr() % 16 == 0
    if not _takes("attention", q, k, v, fits=fits):
        return None
    return strict_triton.paged_attention(q, k, v, table, block, positions, scale)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor,
              scale: float) -> torch.Tensor | None:
    """Causal GQA attention, shapes as :func:`kernels.batch_invariant.attention`: the paged
    kernel with one block of S keys per sequence; or None."""
    G, S = k.shape[:2]
    k, v = k.contiguous(), v.contiguous()
    return paged_attention(q, k, v, torch.arange(G, device=q.device), S, positions, scale)


def recurrence(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, lam: torch.Tensor, scale: float,
               state: torch.Tensor, slots: torch.Tensor | None = None, lengths: torch.Tensor | None = None
               ) -> torch.Tensor | None:
    """:func:`.strict_triton.recurrence` (the contract of :func:`.cpu.recurrence`); or None."""
    D = q.shape[-1]
    fits = _pow2(D) and D <= 256 and state.dtype == torch.float32 and state[:1].is_contiguous() \
        and state.data_ptr() % 16 == 0
    if not _takes("recurrence", q, k, v, lam, state, fits=fits):
        return None
    return strict_triton.recurrence(q, k, v, lam, scale, state, slots, lengths)


__all__ = ["linear_takes", "linear", "activation_takes", "activation", "rms_norm", "attention", "paged_attention",
           "recurrence", "FALLBACKS"]
