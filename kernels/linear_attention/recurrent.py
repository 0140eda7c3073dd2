"""Decode: the recurrence for one (or a few) new tokens per sequence, state updated in place.

    S ← λ S + kᵀ v          o = scale · q S          (per token, per head; S fp32 [K, V])

The state lives in a pool ``[num_slots, H, K, V]`` (K = key dim rows, V = value dim columns,
the layout of vLLM's per-sequence linear-attention state cache); ``state_indices[b]`` names the
slot of batch row ``b``.  A negative index (vLLM's padding slot) leaves the pool untouched and
gives a zero output.  Rows are independent and the reduction over K is fixed by the (constant)
launch configuration, so a row's output does not depend on the batch it is decoded in.

Two implementations: ``recurrent_torch`` (CPU path, vectorised over the batch) and the Triton
kernel ``recurrent_triton`` (one program per (row, head, block of BV value columns): it reads
its state slice once, applies the N tokens in registers, writes it back once — the op is a pure
state read + write, so its floor is 2 · 4 · K · V · H bytes per row over the copy bandwidth).
On CPU the one-token step (every decode step of a rollout) runs a C kernel
(``decode_cpu.c``, built at first use: :mod:`kernels.native`) that reads and writes each state
once; :func:`decode_step` is its definition in PyTorch.
"""

from __future__ import annotations

import ctypes
import logging
from pathlib import Path

import torch

from .. import native

try:  # kernels/ must import on CPU-only installs without triton
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - exercised only without triton
    triton = None

BV_DECODE = 32
DECODE_WARPS = 4
POISON_OUTPUTS = False  # tests: NaN-fill the output before the kernel runs
_log = logging.getLogger(__name__)


class StateSlots:
    """The state slots of one decode batch, read and checked once.

    Every linear layer of an engine step decodes the same sequences, so the rollout model builds
    this once per step and passes it to every layer's :func:`recurrent` in place of the index
    tensor: the host read of the indices, the range check and the choice of state-access path
    are then not repeated per layer.

    * ``rows``: the slots as int64 (padding rows, index < 0, read slot 0); ``valid``: which rows
      are not padding (None when all are).
    * ``view``: when the slots are an arithmetic progression (vLLM hands out state slots in
      strides, ascending or descending) the eager path updates a strided view of the pool in
      place instead of gathering and scattering; ``reverse``: the batch runs opposite to the
      view's order.
    """

    def __init__(self, state_indices: torch.Tensor | None, batch: int, num_slots: int, device=None):
        """``device``: the pool's, when ``state_indices`` is None (row b uses slot b)."""
        self.indices, self.batch, self.num_slots = state_indices, batch, num_slots
        slots = list(range(batch)) if state_indices is None else state_indices.tolist()
        if slots and max(slots) >= num_slots:
            raise ValueError(f"state_indices out of range for a pool of {num_slots} slots")
        padded = bool(slots) and min(slots) < 0
        self.rows = (torch.arange(batch, device=device) if state_indices is None
                     else state_indices.long().clamp(min=0) if padded else state_indices.long().contiguous())
        self.valid = (state_indices >= 0) if padded else None
        step = slots[1] - slots[0] if batch > 1 else 1
        evenly = not padded and step != 0 and all(b - a == step for a, b in zip(slots, slots[1:]))
        self.view, self.reverse = None, evenly and step < 0
        if evenly:
            first = min(slots[0], slots[-1]) if slots else 0
            self.view = slice(first, first + abs(step) * (batch - 1) + 1, abs(step))


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


if triton is not None:

    @triton.jit
    def _recurrent_kernel(q, k, v, o, g_ptr, state, idx, scale, N, s_b, s_n, s_h, s_ob, s_on,
                          s_oh, s_slot, H: tl.constexpr, D: tl.constexpr, BV: tl.constexpr,
                          HAS_IDX: tl.constexpr):
        i_v, i_bh = tl.program_id(0), tl.program_id(1)
        i_b, i_h = i_bh // H, i_bh % H
        if HAS_IDX:
            slot = tl.load(idx + i_b).to(tl.int64)
        else:
            slot = i_b.to(tl.int64)
        valid = slot >= 0
        o_k = tl.arange(0, D)
        o_v = i_v * BV + tl.arange(0, BV)
        p_s = state + tl.maximum(slot, 0) * s_slot + i_h * D * D + o_k[:, None] * D + o_v[None, :]
        S = tl.load(p_s, mask=valid, other=0.0)                    # [D, BV] fp32
        lam = tl.exp(tl.load(g_ptr + i_h).to(tl.float32))
        base = i_b.to(tl.int64) * s_b + i_h * s_h
        obase = i_b.to(tl.int64) * s_ob + i_h * s_oh
        for n in range(0, N):
            b_q = tl.load(q + base + n * s_n + o_k).to(tl.float32)
            b_k = tl.load(k + base + n * s_n + o_k).to(tl.float32)
            b_v = tl.load(v + base + n * s_n + o_v).to(tl.float32)
            S = S * lam + b_k[:, None] * b_v[None, :]
            b_o = tl.sum(S * b_q[:, None], axis=0) * scale
            b_o = tl.where(valid, b_o, 0.0)
            tl.store(o + obase + n * s_on + o_v, b_o.to(o.dtype.element_ty))
        tl.store(p_s, S, mask=valid)


def recurrent_triton(q, k, v, decay, scale, state, state_indices):
    """Same contract as :func:`recurrent_torch`; q/k/v may be strided views (last dim contiguous)."""
    B, N, H, D = q.shape
    if not (q.stride() == k.stride() == v.stride()) or q.stride(-1) != 1:
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    o = torch.empty(B, N, H, D, dtype=q.dtype, device=q.device)
    if POISON_OUTPUTS:
        o.fill_(float("nan"))
    bv = min(BV_DECODE, D)
    idx = state_indices if state_indices is not None else state  # dummy pointer when absent
    _recurrent_kernel[(D // bv, B * H)](
        q, k, v, o, decay, state, idx, float(scale), N, q.stride(0), q.stride(1), q.stride(2),
        o.stride(0), o.stride(1), o.stride(2), state.stride(0), H=H, D=D, BV=bv,
        HAS_IDX=state_indices is not None, num_warps=DECODE_WARPS)
    return o
