"""The CPU path of decode: the recurrence for one (or a few) new tokens per sequence, state
updated in place, in PyTorch ops and, for the one-token step, a C kernel.

    S ← λ S + kᵀ v          o = scale · q S          (per token, per head; S fp32 [K, V])

``recurrent_torch`` is vectorised over the batch.  On CPU the one-token step (every decode step
of a rollout) runs a C kernel (``decode_cpu.c``, built at first use: :mod:`kernels.native`) that
reads and writes each state once; :func:`decode_step` is its definition in PyTorch.  Rows are
independent and each row's reduction order is fixed, so a row's output does not depend on the
batch it is decoded in.
"""

from __future__ import annotations

import ctypes
from pathlib import Path

import torch

from .. import native
from .state import StateSlots


def decode_step(qkv, lam, scale: float, state, rows):
    """One token per row, the definition of the CPU decode kernel (``decode_cpu.c``, which
    computes exactly this in one pass): ``S ← λ S + kᵀ v`` on each row's slot of the pool,
    ``o = scale · q S``.  qkv: q, k, v stacked ``[B, 3, H, D]``; lam ``[H, 1, 1]``; rows int64
    ``[B]`` (distinct).

    Rounding: the arithmetic is fp64, the state is stored in its own dtype (fp32): the update
    rounds once per element and q·S once per output, instead of an fp32 loop's sequential
    64-term sum (whose error, ~10% above the eager matmul's, left the engine-vs-trainer parity
    test at 1.3e-5 once against its 1e-5 bound).  Per row the order is fixed, so the step is
    batch-invariant; it is not bitwise the eager ops of :func:`recurrent_torch`."""
    q, k, v = qkv.double().unbind(1)
    S = state[rows].double() * lam.double() + k[..., :, None] * v[..., None, :]
    state[rows] = S.to(state.dtype)
    return ((q[..., :, None] * S).sum(-2) * scale).to(qkv.dtype)


def recurrent_step(q, k, v, decay, scale: float, state):
    """:func:`kernels.linear_attention.recurrent`'s main case in PyTorch alone: one new token
    per sequence (q, k, v ``[B, H, D]``), row b on ``state[b]`` (updated in place), by
    :func:`decode_step` — the CPU kernel's definition, which it computes bitwise.  The exported
    model code's decode (``trainer.ring_linear.remote_code``: plain transformers has no C kernel)."""
    lam = decay.detach().to(state.dtype).exp().view(-1, 1, 1)
    rows = torch.arange(q.shape[0], device=q.device)
    return decode_step(torch.stack((q, k, v), 1), lam, scale, state, rows)


_DECODE_SOURCE = Path(__file__).with_name("decode_cpu.c")
_i64, _ptr = ctypes.c_int64, ctypes.c_void_p
_DECODE_SIGNATURE = (None, [_ptr, _i64, _i64, _i64, _ptr, ctypes.c_double, _ptr, _i64, _ptr, _ptr])
MAX_NATIVE_D = 256  # decode_cpu.c's accumulator size


def _decode_kernel():
    """The C decode step, or None (``LOCKSTEP_NATIVE_KERNELS=0``, or its build failed: logged)."""
    lib = native.load(_DECODE_SOURCE, {"lockstep_decode_step_f32": _DECODE_SIGNATURE})
    return None if lib is None else lib.lockstep_decode_step_f32


def decode_native(qkv, lam, scale: float, state, slots: StateSlots, out) -> bool:
    """One token per row with q, k, v packed ``[B, 3, H, D]`` fp32, o written into ``out``
    ``[B, H, D]`` fp32, by the C kernel; lam = exp(decay) fp32 (H elements, contiguous).  Only the
    checks the kernel's memory safety needs: the slots were checked by :class:`StateSlots`, the
    shapes are the caller's (:func:`recurrent` checks them; the engine's are fixed).  Returns False,
    having changed nothing, when the kernel cannot take the call (padding rows, fp64, D > 256, a
    non-contiguous layout, the kernel unavailable): the caller then runs the eager ops."""
    B, three, H, D = qkv.shape
    kernel = _decode_kernel()
    if (kernel is None or slots.valid is not None or D > MAX_NATIVE_D or three != 3 or B == 0
            or not all(t.dtype == torch.float32 and t.device.type == "cpu" for t in (qkv, lam, state, out))
            or slots.rows.device.type != "cpu" or slots.rows.stride(0) != 1
            or not (qkv.is_contiguous() and out.is_contiguous() and lam.is_contiguous() and state[:1].is_contiguous())
            or out.shape != (B, H, D) or lam.numel() != H or state.shape[1:] != (H, D, D)):
        return False
    rows = slots.rows
    kernel(qkv.data_ptr(), B, H, D, lam.data_ptr(), float(scale), state.data_ptr(), state.stride(0),
           rows.data_ptr(), out.data_ptr())
    return True


def recurrent_torch(q, k, v, lam, scale, state, slots: StateSlots, out=None):
    """q, k, v: ``[B, N, H, D]``; lam = exp(decay) ``[H, 1, 1]`` in the state's dtype; state:
    ``[slots, H, D, D]`` fp32 (or fp64); returns o ``[B, N, H, D]`` in q's dtype (written into
    ``out`` when given: it must have o's shape and dtype).

    Vectorised over the batch: the state is the whole cost of a decode step, so the update is one
    fused pass (``mul_`` + broadcast ``addcmul_``, no outer-product temporary), done in place on
    a view of the pool when the rows' slots are evenly spaced, else on a gathered copy that is
    scattered back.  Few tensor ops: on a small CPU batch each costs more than its arithmetic
    (per-row loops over pool views are far slower: one OpenMP fork/join per small op).
    """
    B, N, H, D = q.shape
    dt = state.dtype
    if N == 1 and slots.valid is None and state.dtype == torch.float32 and _decode_kernel() is not None:
        o = out if out is not None and out.dtype == torch.float32 and out.is_contiguous() \
            else torch.empty(B, N, H, D, dtype=dt, device=q.device)
        if decode_native(torch.stack((q[:, 0], k[:, 0], v[:, 0]), 1).to(dt), lam, scale, state, slots, o.view(B, H, D)):
            return o.to(q.dtype) if out is None else o if o is out else out.copy_(o)
    qf, kf, vf = (x if x.dtype == dt else x.to(dt) for x in (q, k, v))
    if slots.view is not None:
        S = state[slots.view]
        if slots.reverse:  # the view lists the slots in the opposite order of the batch
            qf, kf, vf = qf.flip(0), kf.flip(0), vf.flip(0)
    else:
        S = state.index_select(0, slots.rows)
    direct = out is not None and out.dtype == dt and not slots.reverse and out.is_contiguous()
    o = out if direct else torch.empty(B, N, H, D, dtype=dt, device=q.device)
    for n in range(N):
        S.mul_(lam).addcmul_(kf[:, n].unsqueeze(-1), vf[:, n].unsqueeze(-2))
        if N == 1:
            torch.matmul(qf[:, 0].unsqueeze(-2), S, out=o.view(B, H, 1, D))
        else:
            o[:, n] = torch.matmul(qf[:, n].unsqueeze(-2), S).squeeze(-2)
    if scale != 1.0:
        o.mul_(scale)
    if slots.reverse:
        o = o.flip(0)
    if slots.view is None:
        if slots.valid is None:
            state.index_copy_(0, slots.rows, S)
        else:
            o[~slots.valid] = 0
            state.index_copy_(0, slots.rows[slots.valid], S[slots.valid])
    if direct:
        return o
    if out is None:
        return o.to(q.dtype)
    return out.copy_(o)


