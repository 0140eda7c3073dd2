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
On CPU the one-token step (every decode step of a rollout) runs :func:`decode_step`, the same
math written once in PyTorch and compiled by inductor into one loop over the states.
"""

from __future__ import annotations

import logging
import os

import torch

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
                     else state_indices.long().clamp(min=0))
        self.valid = (state_indices >= 0) if padded else None
        step = slots[1] - slots[0] if batch > 1 else 1
        evenly = not padded and step != 0 and all(b - a == step for a, b in zip(slots, slots[1:]))
        self.view, self.reverse = None, evenly and step < 0
        if evenly:
            first = min(slots[0], slots[-1]) if slots else 0
            self.view = slice(first, first + abs(step) * (batch - 1) + 1, abs(step))


def decode_step(qkv, lam, scale: float, state, rows):
    """One token per row, the CPU kernel's definition: ``S ← λ S + kᵀ v`` on each row's slot of
    the pool, ``o = scale · q S``.  qkv: q, k, v stacked ``[B, 3, H, D]``; lam ``[H, 1, 1]``;
    rows int64 ``[B]`` (distinct).  Compiled (:func:`_compiled_decode_step`) it is one generated
    loop that reads each state once and writes it once; the eager ops of
    :func:`recurrent_torch` pass over the states five times (gather, decay, update, q·S,
    scatter), which is most of a decode step's cost once the batch is large.

    Rounding: the arithmetic is fp64 in registers, the state is stored in its own dtype (fp32):
    the update rounds once per element and q·S once per output, instead of the fp32 loop's
    sequential 64-term sum (whose error, ~10% above the eager matmul's, left the engine-vs-trainer
    parity test at 1.3e-5 once against its 1e-5 bound).  Per row the order is fixed, so the step
    is batch-invariant; it is not bitwise the eager ops."""
    q, k, v = qkv.double().unbind(1)
    S = state[rows].double() * lam.double() + k[..., :, None] * v[..., None, :]
    state[rows] = S.to(state.dtype)
    return ((q[..., :, None] * S).sum(-2) * scale).to(qkv.dtype)


# LOCKSTEP_COMPILED_DECODE=0 keeps the eager ops (for comparison; a failed compile does too)
_COMPILED = {"fn": None, "enabled": os.environ.get("LOCKSTEP_COMPILED_DECODE", "1") != "0"}


def _compiled_decode_step():
    """:func:`decode_step` compiled by inductor (dynamic batch), or None where compilation is
    off or failed (logged once; the eager path runs)."""
    if _COMPILED["fn"] is None and _COMPILED["enabled"]:
        _COMPILED["fn"] = torch.compile(decode_step, fullgraph=True)
    return _COMPILED["fn"]


def _run_compiled_decode(q, k, v, lam, scale, state, rows):
    # q, k, v stacked into one fresh tensor: views as inputs would make the compiled function
    # guard on (and recompile for) the layout of the tensor they view
    qkv = torch.stack((q, k, v), 1)
    # one kernel for every batch size; H and D stay constants of the generated loops
    torch._dynamo.maybe_mark_dynamic(qkv, 0)
    torch._dynamo.maybe_mark_dynamic(rows, 0)
    try:
        return _compiled_decode_step()(qkv, lam, float(scale), state, rows)
    except Exception as err:  # no C++ compiler, an inductor bug: the eager path is exact too
        if not (isinstance(err, RuntimeError) or type(err).__module__.startswith("torch")):
            raise
        _COMPILED.update(fn=None, enabled=False)
        _log.warning("linear_attention: the compiled CPU decode step failed (%s: %s); decoding "
                     "with the eager ops from now on (slower, same math)", type(err).__name__, err)
        return None


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
    if N == 1 and slots.valid is None and _compiled_decode_step() is not None:
        o = _run_compiled_decode(q[:, 0], k[:, 0], v[:, 0], lam, scale, state, slots.rows)
        if o is not None:
            return o[:, None] if out is None else out.copy_(o[:, None])
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
