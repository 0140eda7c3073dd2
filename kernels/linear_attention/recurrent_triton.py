"""Triton kernel of decode: one program per (row, head, block of BV value columns) reads its
state slice once, applies the N new tokens in registers and writes it back once.

    S ← λ S + kᵀ v          o = scale · q S          (per token, per head; S fp32 [K, V])

The op is a pure state read + write, so its floor is 2 · 4 · K · V · H bytes per row over the
copy bandwidth.  The reduction over K is fixed by the (constant) launch configuration, so a
row's output does not depend on the batch it is decoded in.
"""

from __future__ import annotations

import torch

from ..backend import HAS_TRITON, tl, triton

BV_DECODE = 32
DECODE_WARPS = 4
POISON_OUTPUTS = False  # tests: NaN-fill the output before the kernel runs


if HAS_TRITON:

    @triton.jit
    def _recurrent_kernel(q, k, v, o, g_ptr, state, idx, scale, N, s_b, s_n, s_h, s_ob, s_on,
                          s_oh, s_slot, fresh, H: tl.constexpr, D: tl.constexpr, BV: tl.constexpr,
                          HAS_IDX: tl.constexpr, HAS_FRESH: tl.constexpr):
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
        if HAS_FRESH:  # the masked reset: a sequence that starts here reads S = 0, not the slot
            read = valid & (tl.load(fresh + i_b) == 0)
        else:
            read = valid
        S = tl.load(p_s, mask=read, other=0.0)                     # [D, BV] fp32
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


def recurrent_triton(q, k, v, decay, scale, state, state_indices, fresh=None):
    """Same contract as :func:`recurrent_torch`; q/k/v may be strided views (last dim contiguous).
    ``fresh`` (bool ``[B]`` or None): rows whose state starts at 0 — read as zeros inside the
    kernel, so the reset needs no host read and a captured CUDA graph replays it."""
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
        o.stride(0), o.stride(1), o.stride(2), state.stride(0), idx if fresh is None else fresh.to(torch.int8),
        H=H, D=D, BV=bv, HAS_IDX=state_indices is not None, HAS_FRESH=fresh is not None, num_warps=DECODE_WARPS)
    return o
