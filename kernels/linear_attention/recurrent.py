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
"""

from __future__ import annotations

import torch

try:  # kernels/ must import on CPU-only installs without triton
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - exercised only without triton
    triton = None

BV_DECODE = 32
DECODE_WARPS = 4
POISON_OUTPUTS = False  # tests: NaN-fill the output before the kernel runs


def _pool_view(state: torch.Tensor, slots: list[int]) -> tuple[torch.Tensor, bool] | None:
    """A strided view of the pool whose rows are ``slots`` — when they are an arithmetic
    progression (vLLM hands out state slots in strides, ascending or descending) — and whether
    the batch runs in reverse order of the view; None otherwise."""
    B = len(slots)
    step = slots[1] - slots[0] if B > 1 else 1
    if step == 0 or any(b - a != step for a, b in zip(slots, slots[1:])):
        return None
    first = min(slots[0], slots[-1])
    return state[first:first + abs(step) * (B - 1) + 1:abs(step)], step < 0


def recurrent_torch(q, k, v, decay, scale, state, state_indices):
    """q, k, v: ``[B, N, H, D]``; state: ``[slots, H, D, D]`` fp32 (or fp64); returns o [B, N, H, D].

    Vectorised over the batch: the state is the whole cost of a decode step, so the update is one
    fused pass (``mul_`` + broadcast ``addcmul_``, no outer-product temporary), done in place on
    a view of the pool when the rows' slots are evenly spaced (vLLM's usual layout), else on a
    gathered copy that is scattered back (the scatter alone costs as much as the update).  Few
    tensor ops: on a small CPU batch each costs more than its arithmetic.
    (Per-row loops over pool views are far slower on CPU: one OpenMP fork/join per small op.)
    """
    B, N, H, D = q.shape
    dt = state.dtype
    lam = decay.to(dt).exp().view(H, 1, 1)
    qf, kf, vf = q.to(dt), k.to(dt), v.to(dt)
    slots = list(range(B)) if state_indices is None else state_indices.tolist()
    if slots and max(slots) >= state.shape[0]:
        raise ValueError(f"state_indices out of range for a pool of {state.shape[0]} slots")
    padded = bool(slots) and min(slots) < 0
    view = None if padded else _pool_view(state, slots)
    rows = None
    if view is not None:
        S, reverse = view
        if reverse:  # the view lists the slots in the opposite order of the batch
            qf, kf, vf = qf.flip(0), kf.flip(0), vf.flip(0)
    else:
        reverse = False
        rows = state_indices.long().clamp(min=0)
        S = state.index_select(0, rows)
    o = torch.empty(B, N, H, D, dtype=dt, device=q.device)
    for n in range(N):
        S.mul_(lam).addcmul_(kf[:, n].unsqueeze(-1), vf[:, n].unsqueeze(-2))
        o[:, n] = torch.matmul(qf[:, n].unsqueeze(-2), S).squeeze(-2)
    if scale != 1.0:
        o.mul_(scale)
    if reverse:
        o = o.flip(0)
    if rows is not None:
        if padded:
            valid = state_indices >= 0
            o[~valid] = 0
            state.index_copy_(0, rows[valid], S[valid])
        else:
            state.index_copy_(0, rows, S)
    return o.to(q.dtype)


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
