"""Triton kernels: causal GQA softmax attention over sequences packed along T (flash-attention
style), forward in one launch, backward in two, no atomics.

Math, per sequence, head h, query i (keys j ≤ i of the same sequence), c = scale · log2(e):

    s_ij = c · q_i·k_j          m_i = max_j s_ij          l_i = Σ_j 2^(s_ij − m_i)
    o_i  = Σ_j 2^(s_ij − m_i) v_j / l_i                    lse_i = m_i + log2(l_i)   (base 2)

Forward.  One program per (query block of ``FWD_BLOCK_M`` rows of one sequence, query head); blocks
start at the sequence start, so a block never holds two sequences.  It walks the sequence's key
blocks left to right with an online softmax (running max m, running sum l, fp32 accumulator),
first the blocks wholly before its rows (no mask), then the diagonal ones (causal mask), and
writes o and lse.

Backward (p_ij = 2^(s_ij − lse_i), D_i = Σ_d o_id · do_id):

    dv_j = Σ_i p_ij do_i        dp_ij = do_i·v_j        ds_ij = p_ij (dp_ij − D_i)
    dk_j = scale Σ_i ds_ij q_i  dq_i = scale Σ_j ds_ij k_j

Launch 1 computes D.  Launch 2 runs two kinds of programs side by side: one per (key block, KV
head) owns dk and dv of its keys and walks the later query blocks of each query head of its
group (GQA sums in registers: no atomics, deterministic); one per (query block, query head) owns
dq and walks the earlier key blocks.  Each recomputes p from q, k and the saved lse.

Scheduling.  The programs' order is a work list built on the host from ``cu_seqlens``: causal
blocks late in a long sequence cost most, so the list runs them first (longest-processing-time
order) and the short ones fill the tail.  Programs past a sequence's end are never launched.

Precision.  Products accumulate in fp32; 16-bit inputs enter the tensor cores as they are, p
and ds are rounded to the input dtype for their products (as flash-attention does); fp32 inputs
use ``tf32x3`` products (≈ fp32).  The configuration is fixed (never autotuned), every
program's reduction order is fixed and does not depend on the other sequences of the pack, so
a sequence's outputs and gradients are the same bits alone and inside any pack.
"""

from __future__ import annotations

import logging

import torch
import triton
import triton.language as tl
from triton.runtime.errors import OutOfResources

_log = logging.getLogger(__name__)

# Fixed launch configuration (never autotuned: part of the batch-invariance contract).  Blocks
# tile a sequence from its start; a loop's step must divide its program's block (asserted).
# Chosen off-device (ptxas -v for sm_90a at head dim 128, bf16): the largest blocks whose
# programs keep everything in registers (forward 229 registers, backward 255 with a 4-byte
# spill; 64-row steps in the backward spilled ~0.5 KB).  Not yet timed against the others on a
# GPU: `python -m benchmarks.gpu.varlen_attention --configs` does.
FWD_BLOCK_M, FWD_BLOCK_N = 128, 64    # forward: query rows per program, keys per step
DKDV_BLOCK_N, DKDV_BLOCK_M = 64, 32   # dk/dv: keys per program, query rows per step
DQ_BLOCK_M, DQ_BLOCK_N = 64, 32       # dq: query rows per program, keys per step
FWD_WARPS, BWD_WARPS = 8, 8
NUM_STAGES = 2
FP32_PRECISION = "tf32x3"   # fp32 inputs: three tf32 products per product, ≈ fp32 accuracy
LOG2E = 1.4426950408889634
# Tests set this to fill every output buffer with NaN before the kernels run, so an element a
# kernel forgets to write fails the comparison instead of passing by luck.
POISON_OUTPUTS = False


def _empty(x: torch.Tensor, *shape: int, dtype=None) -> torch.Tensor:
    out = x.new_empty(shape, dtype=dtype or x.dtype)
    return out.fill_(float("nan")) if POISON_OUTPUTS else out


# ----------------------------------------------------------------------------- work lists
def _blocks(bounds: list[int], size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(sequence, start within it, sequence length) of every block of ``size`` tokens, on the host."""
    cu = torch.tensor(bounds, dtype=torch.int64)
    lengths = cu[1:] - cu[:-1]
    count = (lengths + size - 1) // size
    seq = torch.repeat_interleave(torch.arange(len(lengths)), count)
    first = torch.cumsum(count, 0) - count
    start = (torch.arange(seq.numel()) - first[seq]) * size
    return seq, start, lengths[seq]


def forward_work(bounds: list[int], device: torch.device) -> torch.Tensor:
    """int32 ``[R, 2]`` (sequence, first query row) of the forward's query blocks, costliest
    first: a block's cost is the number of keys it sees, ``min(start + FWD_BLOCK_M, L)``."""
    seq, start, length = _blocks(bounds, FWD_BLOCK_M)
    cost = torch.minimum(start + FWD_BLOCK_M, length)
    order = torch.sort(cost, descending=True, stable=True).indices
    return torch.stack((seq, start), 1)[order].to(torch.int32).to(device)


def backward_work(bounds: list[int], heads: int, kv_heads: int, device: torch.device) -> torch.Tensor:
    """int32 ``[R, 4]`` (role, sequence, first row, head) of the backward's programs, costliest
    first: role 0 = dk/dv of a key block and KV head (cost: the group's heads × the queries from
    the block on × 4 products), role 1 = dq of a query block and head (the keys it sees × 3)."""
    rows, costs = [], []
    for role, size, count in ((0, DKDV_BLOCK_N, kv_heads), (1, DQ_BLOCK_M, heads)):
        seq, start, length = _blocks(bounds, size)
        if role == 0:
            cost = (heads // kv_heads) * (length - start) * 4
        else:
            cost = torch.minimum(start + size, length) * 3
        n = seq.numel()
        rows.append(torch.stack((torch.full((n * count,), role), seq.repeat_interleave(count),
                                 start.repeat_interleave(count), torch.arange(count).repeat(n)), 1))
        costs.append(cost.repeat_interleave(count))
    rows, costs = torch.cat(rows), torch.cat(costs)
    order = torch.sort(costs, descending=True, stable=True).indices
    return rows[order].to(torch.int32).to(device)


# ----------------------------------------------------------------------------- forward
@triton.jit
def _load_kv(k_ptrs, v_ptrs, start_n, offs_n, L, MASK: tl.constexpr):
    """A key block's K and V rows ``start_n + offs_n``; with MASK, rows past L (the sequence's
    end) read as 0."""
    if MASK:
        valid = (start_n + offs_n) < L
        k = tl.load(k_ptrs, mask=valid[:, None], other=0.0)
        v = tl.load(v_ptrs, mask=valid[:, None], other=0.0)
    else:
        k = tl.load(k_ptrs)
        v = tl.load(v_ptrs)
    return k, v


@triton.jit
def _fwd_step(acc, m_i, l_i, q, k_ptrs, v_ptrs, offs_m, offs_n, start_n, L, c,
              MASK: tl.constexpr, IN_PREC: tl.constexpr):
    """One key block of the online softmax: keys ``start_n + offs_n``."""
    k, v = _load_kv(k_ptrs, v_ptrs, start_n, offs_n, L, MASK)
    s = tl.dot(q, tl.trans(k), input_precision=IN_PREC) * c
    if MASK:  # causal: key ≤ query (keys past L are past every query row that is stored)
        s = tl.where((start_n + offs_n)[None, :] <= offs_m[:, None], s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, 1))
    alpha = tl.exp2(m_i - m_new)
    p = tl.exp2(s - m_new[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=IN_PREC)
    return acc, m_new, l_i


@triton.jit
def _fwd_kernel(q_ptr, k_ptr, v_ptr, o_ptr, lse_ptr, cu_ptr, work_ptr, c,
                s_qt, s_qh, s_kt, s_kh, s_vt, s_vh, T,
                H: tl.constexpr, GROUP: tl.constexpr, D: tl.constexpr,
                BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, IN_PREC: tl.constexpr):
    i_h, i_w = tl.program_id(0), tl.program_id(1)
    n = tl.load(work_ptr + 2 * i_w)
    start_m = tl.load(work_ptr + 2 * i_w + 1)
    bos = tl.load(cu_ptr + n).to(tl.int64)
    L = (tl.load(cu_ptr + n + 1) - bos).to(tl.int32)
    i_kv = i_h // GROUP
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, D)
    rows = offs_m < L
    q = tl.load(q_ptr + (bos + offs_m)[:, None] * s_qt + i_h * s_qh + offs_d[None, :],
                mask=rows[:, None], other=0.0)
    k_base = k_ptr + bos * s_kt + i_kv * s_kh + offs_d[None, :]
    v_base = v_ptr + bos * s_vt + i_kv * s_vh + offs_d[None, :]
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, D], dtype=tl.float32)
    for start_n in range(0, start_m, BLOCK_N):        # key blocks wholly before the rows
        keys = start_n + offs_n
        acc, m_i, l_i = _fwd_step(acc, m_i, l_i, q, k_base + keys[:, None] * s_kt,
                                  v_base + keys[:, None] * s_vt, offs_m, offs_n, start_n, L, c,
                                  False, IN_PREC)
    for start_n in range(start_m, tl.minimum(start_m + BLOCK_M, L), BLOCK_N):   # the diagonal
        keys = start_n + offs_n
        acc, m_i, l_i = _fwd_step(acc, m_i, l_i, q, k_base + keys[:, None] * s_kt,
                                  v_base + keys[:, None] * s_vt, offs_m, offs_n, start_n, L, c,
                                  True, IN_PREC)
    o = acc / l_i[:, None]
    tl.store(o_ptr + (bos + offs_m)[:, None] * (H * D) + i_h * D + offs_d[None, :],
             o.to(o_ptr.dtype.element_ty), mask=rows[:, None])
    tl.store(lse_ptr + i_h * T + bos + offs_m, m_i + tl.log2(l_i), mask=rows)


# ----------------------------------------------------------------------------- backward
@triton.jit
def _delta_kernel(o_ptr, do_ptr, delta_ptr, T, H: tl.constexpr, D: tl.constexpr, BLOCK: tl.constexpr):
    """D[h, t] = Σ_d o[t, h, d] · do[t, h, d] in fp32 (o and do contiguous ``[T, H, D]``)."""
    i_t, i_h = tl.program_id(0), tl.program_id(1)
    offs_t = i_t * BLOCK + tl.arange(0, BLOCK)
    offs_d = tl.arange(0, D)
    rows = offs_t < T
    ptrs = offs_t[:, None].to(tl.int64) * (H * D) + i_h * D + offs_d[None, :]
    o = tl.load(o_ptr + ptrs, mask=rows[:, None], other=0.0).to(tl.float32)
    do = tl.load(do_ptr + ptrs, mask=rows[:, None], other=0.0).to(tl.float32)
    tl.store(delta_ptr + i_h * T + offs_t, tl.sum(o * do, 1), mask=rows)


@triton.jit
def _dkdv_step(dk, dv, k, v, q_ptr, do_ptr, lse_ptr, delta_ptr, offs_n, start_m, L, c,
               s_qt, H: tl.constexpr, D: tl.constexpr, BLOCK_M: tl.constexpr,
               MASK: tl.constexpr, IN_PREC: tl.constexpr):
    """One query block's share of the key block's dk and dv (transposed scores: keys × queries).
    ``q_ptr``/``do_ptr`` point at (sequence start, head); ``lse_ptr``/``delta_ptr`` at the same."""
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, D)
    rows = offs_m < L
    q = tl.load(q_ptr + offs_m[:, None] * s_qt + offs_d[None, :], mask=rows[:, None], other=0.0)
    do = tl.load(do_ptr + offs_m[:, None] * (H * D) + offs_d[None, :], mask=rows[:, None], other=0.0)
    lse = tl.load(lse_ptr + offs_m, mask=rows, other=0.0)
    delta = tl.load(delta_ptr + offs_m, mask=rows, other=0.0)
    pT = tl.exp2(tl.dot(k, tl.trans(q), input_precision=IN_PREC) * c - lse[None, :])
    # rows past L hold q = do = lse = delta = 0: their p is 1 but multiplies do = 0 and
    # (dp − D) = 0, so they add exact zeros; causality needs a mask only on the diagonal
    if MASK:
        pT = tl.where(offs_m[None, :] >= offs_n[:, None], pT, 0.0)
    dv += tl.dot(pT.to(do.dtype), do, input_precision=IN_PREC)
    dpT = tl.dot(v, tl.trans(do), input_precision=IN_PREC)
    dsT = pT * (dpT - delta[None, :])
    dk += tl.dot(dsT.to(q.dtype), q, input_precision=IN_PREC)
    return dk, dv


@triton.jit
def _dq_step(dq, q, do, lse, delta, k_ptrs, v_ptrs, offs_m, offs_n, start_n, L, c,
             MASK: tl.constexpr, IN_PREC: tl.constexpr):
    k, v = _load_kv(k_ptrs, v_ptrs, start_n, offs_n, L, MASK)
    p = tl.exp2(tl.dot(q, tl.trans(k), input_precision=IN_PREC) * c - lse[:, None])
    if MASK:
        p = tl.where((start_n + offs_n)[None, :] <= offs_m[:, None], p, 0.0)
    dp = tl.dot(do, tl.trans(v), input_precision=IN_PREC)
    ds = p * (dp - delta[:, None])
    dq += tl.dot(ds.to(k.dtype), k, input_precision=IN_PREC)
    return dq


@triton.jit
def _dkdv_program(q_ptr, k_ptr, v_ptr, do_ptr, lse_ptr, delta_ptr, dk_ptr, dv_ptr, bos, L, start, head,
                  c, scale, s_qt, s_qh, s_kt, s_kh, s_vt, s_vh, T, H: tl.constexpr, KV: tl.constexpr,
                  GROUP: tl.constexpr, D: tl.constexpr, BLOCK_N1: tl.constexpr, BLOCK_M1: tl.constexpr,
                  IN_PREC: tl.constexpr):
    """dk, dv of keys ``start .. start + BLOCK_N1`` of one sequence and KV head ``head``."""
    offs_d = tl.arange(0, D)
    offs_n = start + tl.arange(0, BLOCK_N1)
    keys = offs_n < L
    k = tl.load(k_ptr + (bos + offs_n)[:, None] * s_kt + head * s_kh + offs_d[None, :],
                mask=keys[:, None], other=0.0)
    v = tl.load(v_ptr + (bos + offs_n)[:, None] * s_vt + head * s_vh + offs_d[None, :],
                mask=keys[:, None], other=0.0)
    dk = tl.zeros([BLOCK_N1, D], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N1, D], dtype=tl.float32)
    for g in range(GROUP):  # the query heads sharing this KV head: summed here, no atomics
        h = head * GROUP + g
        q_h = q_ptr + bos * s_qt + h * s_qh
        do_h = do_ptr + bos * (H * D) + h * D
        lse_h = lse_ptr + h * T + bos
        delta_h = delta_ptr + h * T + bos
        for start_m in range(start, tl.minimum(start + BLOCK_N1, L), BLOCK_M1):   # diagonal
            dk, dv = _dkdv_step(dk, dv, k, v, q_h, do_h, lse_h, delta_h, offs_n, start_m, L, c,
                                s_qt, H, D, BLOCK_M1, True, IN_PREC)
        for start_m in range(start + BLOCK_N1, L, BLOCK_M1):                       # after it
            dk, dv = _dkdv_step(dk, dv, k, v, q_h, do_h, lse_h, delta_h, offs_n, start_m, L, c,
                                s_qt, H, D, BLOCK_M1, False, IN_PREC)
    out = (bos + offs_n)[:, None] * (KV * D) + head * D + offs_d[None, :]
    tl.store(dk_ptr + out, (dk * scale).to(dk_ptr.dtype.element_ty), mask=keys[:, None])
    tl.store(dv_ptr + out, dv.to(dv_ptr.dtype.element_ty), mask=keys[:, None])


@triton.jit
def _dq_program(q_ptr, k_ptr, v_ptr, do_ptr, lse_ptr, delta_ptr, dq_ptr, bos, L, start, head,
                c, scale, s_qt, s_qh, s_kt, s_kh, s_vt, s_vh, T, H: tl.constexpr, GROUP: tl.constexpr,
                D: tl.constexpr, BLOCK_M2: tl.constexpr, BLOCK_N2: tl.constexpr, IN_PREC: tl.constexpr):
    """dq of queries ``start .. start + BLOCK_M2`` of one sequence and query head ``head``."""
    i_kv = head // GROUP
    offs_d = tl.arange(0, D)
    offs_m = start + tl.arange(0, BLOCK_M2)
    offs_n = tl.arange(0, BLOCK_N2)
    rows = offs_m < L
    q = tl.load(q_ptr + (bos + offs_m)[:, None] * s_qt + head * s_qh + offs_d[None, :],
                mask=rows[:, None], other=0.0)
    do = tl.load(do_ptr + (bos + offs_m)[:, None] * (H * D) + head * D + offs_d[None, :],
                 mask=rows[:, None], other=0.0)
    lse = tl.load(lse_ptr + head * T + bos + offs_m, mask=rows, other=0.0)
    delta = tl.load(delta_ptr + head * T + bos + offs_m, mask=rows, other=0.0)
    k_base = k_ptr + bos * s_kt + i_kv * s_kh + offs_d[None, :]
    v_base = v_ptr + bos * s_vt + i_kv * s_vh + offs_d[None, :]
    dq = tl.zeros([BLOCK_M2, D], dtype=tl.float32)
    for start_n in range(0, start, BLOCK_N2):                                    # before
        keys = start_n + offs_n
        dq = _dq_step(dq, q, do, lse, delta, k_base + keys[:, None] * s_kt,
                      v_base + keys[:, None] * s_vt, offs_m, offs_n, start_n, L, c, False, IN_PREC)
    for start_n in range(start, tl.minimum(start + BLOCK_M2, L), BLOCK_N2):     # diagonal
        keys = start_n + offs_n
        dq = _dq_step(dq, q, do, lse, delta, k_base + keys[:, None] * s_kt,
                      v_base + keys[:, None] * s_vt, offs_m, offs_n, start_n, L, c, True, IN_PREC)
    tl.store(dq_ptr + (bos + offs_m)[:, None] * (H * D) + head * D + offs_d[None, :],
             (dq * scale).to(dq_ptr.dtype.element_ty), mask=rows[:, None])


@triton.jit
def _bwd_kernel(q_ptr, k_ptr, v_ptr, do_ptr, lse_ptr, delta_ptr, dq_ptr, dk_ptr, dv_ptr, cu_ptr,
                work_ptr, c, scale, s_qt, s_qh, s_kt, s_kh, s_vt, s_vh, T,
                H: tl.constexpr, KV: tl.constexpr, GROUP: tl.constexpr, D: tl.constexpr,
                BLOCK_N1: tl.constexpr, BLOCK_M1: tl.constexpr, BLOCK_M2: tl.constexpr,
                BLOCK_N2: tl.constexpr, IN_PREC: tl.constexpr):
    w = work_ptr + 4 * tl.program_id(0)
    role, n, start, head = tl.load(w), tl.load(w + 1), tl.load(w + 2), tl.load(w + 3)
    bos = tl.load(cu_ptr + n).to(tl.int64)
    L = (tl.load(cu_ptr + n + 1) - bos).to(tl.int32)
    if role == 0:
        _dkdv_program(q_ptr, k_ptr, v_ptr, do_ptr, lse_ptr, delta_ptr, dk_ptr, dv_ptr, bos, L, start, head,
                      c, scale, s_qt, s_qh, s_kt, s_kh, s_vt, s_vh, T, H, KV, GROUP, D, BLOCK_N1, BLOCK_M1,
                      IN_PREC)
    else:
        _dq_program(q_ptr, k_ptr, v_ptr, do_ptr, lse_ptr, delta_ptr, dq_ptr, bos, L, start, head,
                    c, scale, s_qt, s_qh, s_kt, s_kh, s_vt, s_vh, T, H, GROUP, D, BLOCK_M2, BLOCK_N2, IN_PREC)


# ----------------------------------------------------------------------------- host side
def _check_blocks() -> None:
    """A loop steps through its program's block without crossing it (the diagonal's mask)."""
    if FWD_BLOCK_M % FWD_BLOCK_N or DKDV_BLOCK_N % DKDV_BLOCK_M or DQ_BLOCK_M % DQ_BLOCK_N:
        raise ValueError("softmax_attention: each program's block must be a multiple of its loop's step")


def _precision(x: torch.Tensor) -> str:
    return FP32_PRECISION if x.dtype == torch.float32 else "tf32"   # 16-bit inputs: no effect


_STAGES_OK: dict = {}


def _launch(kernel, grid, args, kwargs, warps: int) -> None:
    """Launch with the fixed configuration.  The pipelining depth changes no arithmetic (only
    when loads are issued), so where a GPU has too little shared memory for it (fp32 tiles are
    twice as large) we retry shallower and say so once, instead of failing."""
    key = (getattr(kernel, "__name__", id(kernel)), tuple(sorted(kwargs.items())), warps, str(args[0].dtype))
    stages = _STAGES_OK.get(key, NUM_STAGES)
    while True:
        try:
            kernel[grid](*args, **kwargs, num_warps=warps, num_stages=stages)
            _STAGES_OK[key] = stages
            return
        except OutOfResources:
            if stages <= 1:
                raise
            stages -= 1
            _log.warning("softmax_attention: a kernel needs less shared memory on this GPU (%s); retrying "
                         "with num_stages=%d (same results, slower)", key, stages)


def causal_fwd(q, k, v, cu_seqlens, bounds, scale):
    """q ``[T, H, D]``, k, v ``[T, KV, D]`` (last dim contiguous) → o ``[T, H, D]`` (q's dtype),
    lse fp32 ``[H, T]`` (base 2)."""
    _check_blocks()
    T, H, D = q.shape
    KV = k.shape[1]
    o = _empty(q, T, H, D)
    lse = _empty(q, H, T, dtype=torch.float32)
    work = forward_work(bounds, q.device)
    if work.shape[0]:
        _launch(_fwd_kernel, (H, work.shape[0]),
                (q, k, v, o, lse, cu_seqlens, work, float(scale) * LOG2E,
                 q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1), T),
                dict(H=H, GROUP=H // KV, D=D, BLOCK_M=FWD_BLOCK_M, BLOCK_N=FWD_BLOCK_N, IN_PREC=_precision(q)),
                FWD_WARPS)
    return o, lse


def causal_bwd(q, k, v, o, lse, do, cu_seqlens, bounds, scale):
    """Gradients dq ``[T, H, D]``, dk, dv ``[T, KV, D]`` in the inputs' dtype (do contiguous)."""
    T, H, D = q.shape
    KV = k.shape[1]
    dq, dk, dv = _empty(q, T, H, D), _empty(k, T, KV, D), _empty(v, T, KV, D)
    delta = _empty(q, H, T, dtype=torch.float32)
    if T == 0:
        return dq, dk, dv
    _delta_kernel[(triton.cdiv(T, 64), H)](o, do, delta, T, H=H, D=D, BLOCK=64, num_warps=4)
    work = backward_work(bounds, H, KV, q.device)
    # tokens of empty sequences do not exist, so every row of dq, dk, dv has a program
    _launch(_bwd_kernel, (work.shape[0],),
            (q, k, v, do, lse, delta, dq, dk, dv, cu_seqlens, work, float(scale) * LOG2E, float(scale),
             q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1), T),
            dict(H=H, KV=KV, GROUP=H // KV, D=D, BLOCK_N1=DKDV_BLOCK_N, BLOCK_M1=DKDV_BLOCK_M,
                 BLOCK_M2=DQ_BLOCK_M, BLOCK_N2=DQ_BLOCK_N, IN_PREC=_precision(q)),
            BWD_WARPS)
    return dq, dk, dv


def _last_dim_contiguous(x: torch.Tensor) -> torch.Tensor:
    return x if x.stride(-1) == 1 else x.contiguous()


class CausalAttentionFunction(torch.autograd.Function):
    """Autograd wrapper over ``[T, heads, D]`` views (strided along T and heads is fine)."""

    @staticmethod
    def forward(ctx, q, k, v, cu_seqlens, bounds, scale):
        q, k, v = (_last_dim_contiguous(x) for x in (q, k, v))
        o, lse = causal_fwd(q, k, v, cu_seqlens, bounds, scale)
        ctx.save_for_backward(q, k, v, o, lse, cu_seqlens)
        ctx.bounds, ctx.scale = bounds, scale
        return o

    @staticmethod
    def backward(ctx, do):
        q, k, v, o, lse, cu_seqlens = ctx.saved_tensors
        dq, dk, dv = causal_bwd(q, k, v, o, lse, do.to(o.dtype).contiguous(), cu_seqlens, ctx.bounds, ctx.scale)
        return dq, dk, dv, None, None, None


def causal_triton(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor,
                  bounds: list[int], scale: float) -> torch.Tensor:
    """q ``[T, H, D]``, k, v ``[T, KV, D]``; ``cu_seqlens`` int32 on the device and ``bounds`` its
    host copy.  Returns o ``[T, H, D]``; differentiable in q, k, v."""
    return CausalAttentionFunction.apply(q, k, v, cu_seqlens, bounds, scale)


__all__ = ["causal_triton", "forward_work", "backward_work"]
