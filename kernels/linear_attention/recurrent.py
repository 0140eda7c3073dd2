"""``recurrent`` and ``decode_packed``: decode, one (or a few) new tokens per sequence, the state
pool updated in place (inference only).  This module owns the public functions: their input
validation and the choice of implementation (``backend=`` as in :mod:`kernels.backend`): the
CPU path (``recurrent_torch.py``: PyTorch ops and the C kernel) or the Triton kernel
(``recurrent_triton.py``).  The pool and its slots: ``state.py``.
"""

from __future__ import annotations

import torch

from ..backend import Backend, resolve_backend
from .chunk import check_triton_inputs
from .decay import check_decay, decay_factor
from .recurrent_torch import decode_native, recurrent_torch
from .recurrent_triton import recurrent_triton
from .state import StateSlots, check_state


def decode_packed(qkv: torch.Tensor, decay: torch.Tensor, scale: float, state: torch.Tensor,
                  slots: StateSlots, out: torch.Tensor) -> bool:
    """The rollout engine's CPU decode step: one token per row, q, k, v packed ``[B, 3, H, D]``
    fp32 (as the model projects them), o written into ``out`` ``[B, H, D]`` fp32, by the C kernel
    (``decode_cpu.c``).  ``decay``: the per-head log-decay, as for :func:`recurrent` (λ is
    cached per decay tensor version); ``state``: the fp32 pool ``[num_slots, H, D, D]``;
    ``slots``: the step's :class:`StateSlots`, checked once for all layers.  No other per-call
    checks or copies.  Returns False, having changed nothing, when the kernel cannot take the
    call (padding rows, fp64, D > 256, a non-contiguous layout, the kernel unavailable): the
    caller then runs :func:`recurrent`."""
    lam = decay_factor(decay, check_decay(decay, qkv.shape[2], qkv.device, False), torch.float32)
    return decode_native(qkv, lam, scale, state, slots, out)


def recurrent(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, decay: torch.Tensor, scale: float | None,
              state: torch.Tensor, state_indices: torch.Tensor | StateSlots | None = None, *,
              backend: Backend = "auto", out: torch.Tensor | None = None,
              fresh: torch.Tensor | None = None) -> torch.Tensor:
    """Decode step(s); updates ``state`` in place and returns ``o``.

    Args:
        q, k, v: ``[B, H, D]`` (one new token per sequence — the main path) or ``[B, N, H, D]``
            (N new tokens per sequence, applied in order); bf16/fp16/fp32 (fp64 on the torch
            backend, with an fp64 pool), one dtype.
        decay: fp32 ``[H]`` per-head log-decay.
        scale: multiplier of ``q S`` (None: ``D ** -0.5``).
        state: fp32 pool ``[num_slots, H, D, D]`` ([key dim, value dim]); each slot contiguous,
            the slot stride free (vLLM pads its state pages).
        state_indices: int ``[B]``: slot of each batch row (negative: padding row, output 0,
            pool untouched), or a :class:`StateSlots` made from them once for several layers'
            calls (an engine step).  None: row b uses slot b.
        backend: "auto" | "triton" | "torch" (:mod:`kernels.backend`).
        out: optional tensor of o's shape and dtype to write o into.
        fresh: optional bool ``[B]``: rows whose sequence starts with this step (its slot may
            hold a finished sequence's state): their state is taken as 0, not read.  The Triton
            kernel masks the read (no host synchronisation: a captured CUDA graph replays the
            reset); the torch backend zeroes those slots first.
    Returns:
        ``o`` with q's shape and dtype.  Not differentiable (inference only).
    """
    if not all(isinstance(x, torch.Tensor) for x in (q, k, v)) or q.dim() not in (3, 4):
        raise ValueError(f"q must be [B, H, D] or [B, N, H, D], got {getattr(q, 'shape', None)}")
    if not (q.shape == k.shape == v.shape) or not (q.dtype == k.dtype == v.dtype) \
            or not (q.device == k.device == v.device):
        raise ValueError("q, k, v must share one shape, dtype and device")
    if out is not None and (out.shape != q.shape or out.dtype != q.dtype or out.device != q.device):
        raise ValueError(f"out must match q ({q.dtype} {list(q.shape)}), got {out.dtype} {list(out.shape)}")
    single = q.dim() == 3
    q4, k4, v4 = (x[:, None] if single else x for x in (q, k, v))
    B, N, H, D = q4.shape
    be = resolve_backend("linear_attention.recurrent", q, backend)
    decay_cache = check_decay(decay, H, q.device, False)
    if not isinstance(state, torch.Tensor) or state.dim() != 4:
        raise ValueError("state must be a 4-D fp32 pool [num_slots, H, D, D]")
    check_state("state", state, (state.shape[0], H, D, D), q.dtype == torch.float64)
    if not state[:1].is_contiguous():  # the slot stride may be padded (vLLM's state pages)
        raise ValueError("each state slot must be a contiguous [H, D, D] block (it is updated in place)")
    if state.device != q.device:
        raise ValueError(f"state is on {state.device}, inputs on {q.device}")
    slots = state_indices if isinstance(state_indices, StateSlots) else None
    indices = slots.indices if slots is not None else state_indices
    if slots is not None and (slots.batch != B or slots.num_slots != state.shape[0]):
        raise ValueError(f"StateSlots made for {slots.batch} rows of a {slots.num_slots}-slot pool, "
                         f"used with {B} rows of a {state.shape[0]}-slot pool")
    if indices is not None:
        if indices.shape != (B,) or indices.dtype not in (torch.int32, torch.int64):
            raise ValueError(f"state_indices must be int32/int64 [B]=[{B}], got "
                             f"{indices.dtype} {list(indices.shape)}")
        if indices.device != q.device:
            raise ValueError("state_indices must be on the inputs' device")
    elif state.shape[0] < B:
        raise ValueError(f"without state_indices the pool needs >= B={B} slots")
    if scale is None:
        scale = D ** -0.5
    if fresh is not None and (fresh.shape != (B,) or fresh.dtype != torch.bool or fresh.device != q.device):
        raise ValueError(f"fresh must be a bool [B]=[{B}] tensor on the inputs' device, got "
                         f"{fresh.dtype} {list(fresh.shape)} on {fresh.device}")
    if be == "triton":
        check_triton_inputs(q, D)
        if slots is None and indices is not None and indices.device.type == "cpu" \
                and bool((indices >= state.shape[0]).any()):  # (StateSlots checked their own)
            raise ValueError(f"state_indices out of range for a pool of {state.shape[0]} slots")
        o = recurrent_triton(q4, k4, v4, decay.float().contiguous(), scale, state, indices, fresh)
        o = o[:, 0] if single else o
        return o if out is None else out.copy_(o)
    if slots is None:
        slots = StateSlots(indices, B, state.shape[0], state.device)
    if fresh is not None:  # CPU: a host-side reset is fine (no graph to replay)
        keep = fresh if slots.valid is None else fresh & slots.valid
        state[slots.rows[keep]] = 0
    lam = decay_factor(decay, decay_cache, state.dtype)
    with torch.no_grad():
        o = recurrent_torch(q4, k4, v4, lam, scale, state, slots,
                            None if out is None else (out[:, None] if single else out))
    return out if out is not None else (o[:, 0] if single else o)
