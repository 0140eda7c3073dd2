"""Triton chunk kernels (training forward/backward, prefill), fp32 state, fixed reduction order.

Design.  One program owns one (sequence, head, block of BV value columns) and walks the
sequence chunk by chunk (``BT = 64`` tokens, boundaries fixed from the sequence start), keeping
its ``[D, BV]`` slice of the state in fp32 registers.  Per chunk it does the intra-chunk part with
two tensor-core products and the inter-chunk part with one, then updates the state:

    o_i    = scale · ( λ^{i+1} (q_i S)  +  Σ_{j≤i} λ^{i-j} (q_i·k_j) v_j )
    S_next = λ^c S + Σ_j λ^{c-1-j} k_jᵀ v_j

Per-chunk states are never written to memory (so they are never rounded to bf16, unlike fla's
``chunk_fwd_h``); the forward reads q, k, v once from DRAM and writes o.

Long sequences (the forward).  One program per (sequence, head, value block) is only
D/BV · H = 64 programs for one Ring-mini sequence (132 SMs on an H100), each walking T/64
chunks one after the other.  So a sequence longer than ``SEGMENT`` tokens is cut into segments
of ``SEGMENT`` tokens counted from its start (the last one shorter), and the forward runs in
three launches:

    1. local states   U_s = Σ_{j in s} λ^{SEGMENT-1-j} k_jᵀ v_j   (from zero; every segment but
                      each sequence's last, in parallel; per chunk the scan's own state update)
    2. boundary scan  h_0 = initial state (or 0),  h_{s+1} = λ^{SEGMENT} h_s + U_s   (fp32,
                      elementwise, one short loop over the sequence's segments)
    3. outputs        the scan above over each segment from its h_s, all segments in parallel;
                      the last segment's end state is the sequence's final state.

The summation order is fixed by ``SEGMENT`` alone, never by T, the batch or the grid: a token's
output depends on its sequence's tokens and on where the segment and chunk boundaries fall from
the sequence's start, nothing else.  A sequence of at most ``SEGMENT`` tokens is one segment
(h_0 is its initial state, step 3 is the whole scan), which is why a batch whose T is at most
``SEGMENT`` runs step 3 alone, as one launch, with the same bits.  Extra work for a long
sequence: step 1 reads k and v once more and does one more product per chunk (the scan does
five); the fp32 states make four trips to memory per segment and head (U written and read, h_s
written and read): ~12 % of the segment's q, k, v, o bytes (docs/decisions.md has the arithmetic).

Backward is the same scan three times, with the roles of the tensors permuted (the one kernel
``_scan`` is the whole algorithm):

    dq_t = scale Σ_{s≤t} λ^{t-s} (dO_t·v_s) k_s + scale λ^{t} dO_t S_0ᵀ      forward scan (dO, v, k)
    dS_t = Σ_{s≥t} λ^{s-t} scale q_sᵀ dO_s + λ^{L-1-t} dS_final              (0-based t)
    dk_t = dS_t v_t = reverse scan (v, dO, q);     dv_t = k_t dS_t = reverse scan (k, q, dO)
    d initial_state = λ · dS_0  (the final state of the dv scan)

The three scans run as one launch (``role`` = program_id(0) // NV) so short batches still fill
the GPU.  A reverse scan starts from ``dS_final / (λ·scale)`` (the first reversed token must see
``dS_final`` with weight λ^0 and every output is multiplied by ``scale``).

Precision.  Products accumulate in fp32 and the state stays fp32.  fp32 inputs (the model's
dtype, DESIGN §3 step 1) use ``tf32x3`` products: ≈ fp32 accuracy (H100: rel. err. 4.5e-7 vs
float64).  16-bit inputs enter the tensor cores as they are (exact); the fp32 operands derived
from them can be split into a 16-bit high part and a 16-bit remainder (two products, ~16
mantissa bits instead of 8): ``SPLIT_STATE`` (default on) for the state in q·S,
``SPLIT_DERIVED`` (default off) for the decayed scores and decayed keys.  With both on, bf16
outputs and gradients sit at the bf16 rounding floor (1.7e-3) and final states at 2e-6; the
default costs 0.7× fla's fwd+bwd time, both on 1.1× (BENCHMARKS.md).  The splits are module
constants, not arguments, so that every caller of the op gets the same arithmetic.

Batch invariance.  The launch configuration (BT, BV, warps) is a fixed constant, never
autotuned (the pipelining depth changes no arithmetic), every program's reduction order is
fixed, and masked (out-of-sequence) rows load as zeros whose scores are multiplied by an exact 0.
A token's output therefore depends only on its own sequence's tokens up to its chunk, not on T,
the batch or the padding (checked bitwise on an H100 and in the interpreter).  ``SEGMENT`` is
part of this contract, like BT and BV: changing it changes the bits of tokens past it.
"""

from __future__ import annotations

import logging

import torch
import triton
import triton.language as tl
from triton.runtime.errors import OutOfResources

_log = logging.getLogger(__name__)

BT = 64        # chunk size: fixed, shared with chunk_torch and the strict-mode contract
BV = 32        # value columns per program (fixed: part of the reduction-order contract)
# Forward segment length in tokens (a multiple of BT; fixed: part of the reduction-order
# contract).  None: one program walks a whole sequence (the old forward; benchmarks time it).
SEGMENT: int | None = 2048
BOUNDARY_BLOCK = 1024  # state elements per program of the boundary scan (no arithmetic effect)
NUM_WARPS = 4
NUM_STAGES = 3       # 16-bit inputs (H100 sweep in BENCHMARKS.md)
NUM_STAGES_FP32 = 2  # fp32 tiles are twice as large: 3 stages overflow the H100's shared memory
# 16-bit inputs: hi/lo split (two products) of the fp32 state S in q·S, and of the other fp32
# operands (decayed scores, decayed keys).  See "Precision" above and BENCHMARKS.md for costs.
SPLIT_STATE = True
SPLIT_DERIVED = False
# fp32 inputs: "tf32x3" (≈ fp32, 4–5× fla's tf32 time on an H100) or "tf32" (fast, ~1e-3 error).
FP32_PRECISION = "tf32x3"
# Tests set this to fill every output buffer with NaN before the kernels run, so an element a
# kernel forgets to write fails the comparison instead of passing by luck.
POISON_OUTPUTS = False


def _empty(x, *shape, dtype=None):
    out = x.new_empty(shape or x.shape, dtype=dtype or x.dtype)
    return out.fill_(float("nan")) if POISON_OUTPUTS else out


@triton.jit
def _mm(a, b, SPLIT_B: tl.constexpr, IN_PREC: tl.constexpr):
    """a @ b with fp32 accumulation.  ``a`` is already in the compute dtype; ``b`` is fp32 and,
    for 16-bit compute, is split hi + lo so its fp32 value is used with ~16 mantissa bits."""
    if SPLIT_B:
        b_hi = b.to(a.dtype)
        b_lo = (b - b_hi.to(tl.float32)).to(a.dtype)
        return tl.dot(a, b_hi) + tl.dot(a, b_lo)
    else:
        return tl.dot(a, b.to(a.dtype), input_precision=IN_PREC)


@triton.jit
def _mm_split_a(a, b, SPLIT_A: tl.constexpr, IN_PREC: tl.constexpr):
    """a @ b where ``a`` is fp32 derived data and ``b`` is in the compute dtype."""
    if SPLIT_A:
        a_hi = a.to(b.dtype)
        a_lo = (a - a_hi.to(tl.float32)).to(b.dtype)
        return tl.dot(a_hi, b) + tl.dot(a_lo, b)
    else:
        return tl.dot(a.to(b.dtype), b, input_precision=IN_PREC)


@triton.jit
def _scan(q_ptr, k_ptr, v_ptr, o_ptr, h0_ptr, ht_ptr, s_tok, s_h0k, s_h0v, L, g, scale, i_v,
          D: tl.constexpr, BT: tl.constexpr, BV: tl.constexpr, REVERSE: tl.constexpr,
          USE_H0: tl.constexpr, STORE_HT: tl.constexpr, SPLIT_S: tl.constexpr, SPLIT_D: tl.constexpr,
          IN_PREC: tl.constexpr):
    # q/k/v/o pointers point at (first token of the sequence, head); tokens are s_tok apart.
    o_t = tl.arange(0, BT)
    o_d = tl.arange(0, D)
    o_bv = i_v * BV + tl.arange(0, BV)
    S = tl.zeros([D, BV], dtype=tl.float32)
    if USE_H0:
        S = tl.load(h0_ptr + o_d[:, None] * s_h0k + o_bv[None, :] * s_h0v).to(tl.float32)
        if REVERSE:
            S = S * (tl.exp(-g) / scale)
    NT = tl.cdiv(L, BT)
    for it in range(0, NT):
        if REVERSE:
            i_t = NT - 1 - it
        else:
            i_t = it
        start = i_t * BT
        c = tl.minimum(L - start, BT)
        m = o_t < c
        rows = (start + o_t).to(tl.int64) * s_tok
        b_q = tl.load(q_ptr + rows[:, None] + o_d[None, :], mask=m[:, None], other=0.0)
        b_k = tl.load(k_ptr + rows[:, None] + o_d[None, :], mask=m[:, None], other=0.0)
        b_v = tl.load(v_ptr + rows[:, None] + o_bv[None, :], mask=m[:, None], other=0.0)
        ft = o_t.to(tl.float32)
        fc = c.to(tl.float32)
        if REVERSE:
            diff = ft[None, :] - ft[:, None]                       # j - i, keep j >= i
            d_state = tl.where(m, tl.exp(g * tl.maximum(fc - ft, 0.0)), 0.0)   # λ^{c-i}
            d_key = tl.exp(g * ft)                                 # λ^{j}
        else:
            diff = ft[:, None] - ft[None, :]                       # i - j, keep j <= i
            d_state = tl.exp(g * (ft + 1.0))                       # λ^{i+1}
            d_key = tl.where(m, tl.exp(g * tl.maximum(fc - 1.0 - ft, 0.0)), 0.0)  # λ^{c-1-j}
        d_intra = tl.where(diff >= 0, tl.exp(g * tl.maximum(diff, 0.0)), 0.0)
        scores = tl.dot(b_q, tl.trans(b_k), input_precision=IN_PREC) * d_intra   # [BT, BT]
        b_o = _mm(b_q, S, SPLIT_S, IN_PREC) * d_state[:, None]
        b_o += _mm_split_a(scores, b_v, SPLIT_D, IN_PREC)
        tl.store(o_ptr + rows[:, None] + o_bv[None, :], (b_o * scale).to(o_ptr.dtype.element_ty),
                 mask=m[:, None])
        k_dec = tl.trans(b_k.to(tl.float32) * d_key[:, None])                    # [D, BT]
        S = S * tl.exp(g * fc) + _mm_split_a(k_dec, b_v, SPLIT_D, IN_PREC)
    if STORE_HT:
        if REVERSE:
            S = S * (tl.exp(g) * scale)
        tl.store(ht_ptr + o_d[:, None] * s_h0k + o_bv[None, :] * s_h0v, S)


@triton.jit
def _seq_bounds(cu_ptr, i_n, T, VARLEN: tl.constexpr):
    if VARLEN:
        bos = tl.load(cu_ptr + i_n).to(tl.int64)
        eos = tl.load(cu_ptr + i_n + 1).to(tl.int64)
    else:
        bos = i_n.to(tl.int64) * T
        eos = bos + T
    return bos, eos


@triton.jit
def _segment(slot, cu, slot_seq, seq_first, T, nseg, SEG: tl.constexpr, VARLEN: tl.constexpr):
    """Segment ``slot`` of the segmented forward: (sequence, first token, token count, whether
    it is its sequence's last).  Segment slots are numbered sequence by sequence; with packed
    sequences the tables ``slot_seq``/``seq_first`` map them (a slot past the last segment is
    idle: -1, and gets 0 tokens)."""
    if VARLEN:
        i_n = tl.load(slot_seq + slot)
        idle = i_n < 0
        i_n = tl.maximum(i_n, 0)
        i_s = slot - tl.load(seq_first + i_n)
    else:
        i_n = slot // nseg
        idle = i_n < 0
        i_s = slot % nseg
    bos, eos = _seq_bounds(cu, i_n, T, VARLEN)
    start = bos + i_s.to(tl.int64) * SEG
    length = tl.where(idle, 0, tl.minimum(eos - start, SEG))
    return i_n, start, length, start + SEG >= eos


@triton.jit
def _chunk_fwd_kernel(q, k, v, o, g_ptr, h0, ht, cu, slot_seq, seq_first, scale, T, nseg,
                      H: tl.constexpr, D: tl.constexpr, BT: tl.constexpr, BV: tl.constexpr,
                      SEG: tl.constexpr, SEGMENTED: tl.constexpr, VARLEN: tl.constexpr,
                      USE_H0: tl.constexpr, STORE_HT: tl.constexpr, SPLIT_S: tl.constexpr,
                      SPLIT_D: tl.constexpr, IN_PREC: tl.constexpr):
    # One program per (value block, sequence or segment slot × head).  Segmented, h0 and ht are
    # both the boundary-state buffer: the program reads its segment's h_s and overwrites it with
    # the segment's end state (the final state, for a sequence's last segment).
    i_v, i_sh = tl.program_id(0), tl.program_id(1)
    slot, i_h = i_sh // H, i_sh % H
    if SEGMENTED:
        i_n, start, length, last = _segment(slot, cu, slot_seq, seq_first, T, nseg, SEG, VARLEN)
    else:
        start, eos = _seq_bounds(cu, slot, T, VARLEN)
        length = eos - start
    off = start * H * D + i_h * D
    st = i_sh.to(tl.int64) * D * D
    g = tl.load(g_ptr + i_h).to(tl.float32)
    _scan(q + off, k + off, v + off, o + off, h0 + st, ht + st, H * D, D, 1, length, g, scale,
          i_v, D, BT, BV, False, USE_H0, STORE_HT, SPLIT_S, SPLIT_D, IN_PREC)


@triton.jit
def _segment_state_kernel(k, v, g_ptr, local, cu, slot_seq, seq_first, T, nseg,
                          H: tl.constexpr, D: tl.constexpr, BT: tl.constexpr, BV: tl.constexpr,
                          SEG: tl.constexpr, VARLEN: tl.constexpr, SPLIT_D: tl.constexpr,
                          IN_PREC: tl.constexpr):
    """Step 1: U_s = Σ_j λ^{SEG-1-j} k_jᵀ v_j over a whole segment, from zero, chunk by chunk with
    the scan's own state update (U ← λ^BT U + Σ_j λ^{BT-1-j} k_jᵀ v_j).  A sequence's last
    segment needs none (zeros are stored, so every slot of ``local`` is written)."""
    i_v, i_sh = tl.program_id(0), tl.program_id(1)
    slot, i_h = i_sh // H, i_sh % H
    i_n, start, length, last = _segment(slot, cu, slot_seq, seq_first, T, nseg, SEG, VARLEN)
    length = tl.where(last, 0, length)     # a segment that is not last is SEG tokens long
    off = start * H * D + i_h * D
    g = tl.load(g_ptr + i_h).to(tl.float32)
    o_t = tl.arange(0, BT)
    o_d = tl.arange(0, D)
    o_bv = i_v * BV + tl.arange(0, BV)
    d_key = tl.exp(g * (BT - 1.0 - o_t.to(tl.float32)))                     # λ^{BT-1-j}
    d_chunk = tl.exp(g * BT)
    U = tl.zeros([D, BV], dtype=tl.float32)
    for i_t in range(0, tl.cdiv(length, BT)):
        rows = (i_t * BT + o_t).to(tl.int64) * (H * D)
        b_k = tl.load(k + off + rows[:, None] + o_d[None, :])
        b_v = tl.load(v + off + rows[:, None] + o_bv[None, :])
        k_dec = tl.trans(b_k.to(tl.float32) * d_key[:, None])                  # [D, BT]
        U = U * d_chunk + _mm_split_a(k_dec, b_v, SPLIT_D, IN_PREC)
    tl.store(local + i_sh.to(tl.int64) * D * D + o_d[:, None] * D + o_bv[None, :], U)


@triton.jit
def _boundary_scan_kernel(states, h0, g_ptr, cu, seq_first, T, nseg, H: tl.constexpr,
                          D: tl.constexpr, SEG: tl.constexpr, BLOCK: tl.constexpr,
                          VARLEN: tl.constexpr, USE_H0: tl.constexpr):
    """Step 2, per (sequence, head, block of state elements): h_0 = initial state or 0,
    h_{s+1} = λ^SEG h_s + U_s.  ``states`` holds U_s on entry and h_s on exit (each slot is read
    before the same program overwrites it)."""
    i_e, i_nh = tl.program_id(0), tl.program_id(1)
    i_n, i_h = i_nh // H, i_nh % H
    if VARLEN:
        bos, eos = _seq_bounds(cu, i_n, T, VARLEN)
        n = tl.maximum(tl.cdiv(eos - bos, SEG), 1)
        first = tl.load(seq_first + i_n).to(tl.int64)
    else:
        n = nseg
        first = i_n.to(tl.int64) * nseg
    o_e = i_e * BLOCK + tl.arange(0, BLOCK)
    h = tl.zeros([BLOCK], dtype=tl.float32)
    if USE_H0:
        h = tl.load(h0 + i_nh.to(tl.int64) * D * D + o_e)
    g = tl.load(g_ptr + i_h).to(tl.float32)
    d_seg = tl.exp(g * SEG)
    for s in range(0, n):
        p = states + ((first + s) * H + i_h) * D * D + o_e
        u = tl.load(p)
        tl.store(p, h)
        h = h * d_seg + u


@triton.jit
def _chunk_bwd_kernel(q, k, v, do, dq, dk, dv, g_ptr, h0, dht, dh0, cu, scale, T,
                      H: tl.constexpr, D: tl.constexpr, BT: tl.constexpr, BV: tl.constexpr,
                      VARLEN: tl.constexpr, USE_H0: tl.constexpr, USE_DHT: tl.constexpr,
                      STORE_DH0: tl.constexpr, SPLIT_S: tl.constexpr, SPLIT_D: tl.constexpr,
                      IN_PREC: tl.constexpr):
    NV: tl.constexpr = D // BV
    pid, i_nh = tl.program_id(0), tl.program_id(1)
    role, i_v = pid // NV, pid % NV
    i_n, i_h = i_nh // H, i_nh % H
    bos, eos = _seq_bounds(cu, i_n, T, VARLEN)
    off = bos * H * D + i_h * D
    st = i_nh.to(tl.int64) * D * D
    g = tl.load(g_ptr + i_h).to(tl.float32)
    if role == 0:    # dq: forward scan over (dO, v, k), initial state S_0ᵀ
        _scan(do + off, v + off, k + off, dq + off, h0 + st, h0 + st, H * D, 1, D, eos - bos, g,
              scale, i_v, D, BT, BV, False, USE_H0, False, SPLIT_S, SPLIT_D, IN_PREC)
    elif role == 1:  # dk: reverse scan over (v, dO, q), initial state dS_finalᵀ
        _scan(v + off, do + off, q + off, dk + off, dht + st, dht + st, H * D, 1, D, eos - bos, g,
              scale, i_v, D, BT, BV, True, USE_DHT, False, SPLIT_S, SPLIT_D, IN_PREC)
    else:            # dv: reverse scan over (k, q, dO), initial state dS_final; its end is dS_0
        _scan(k + off, q + off, do + off, dv + off, dht + st, dh0 + st, H * D, D, 1, eos - bos, g,
              scale, i_v, D, BT, BV, True, USE_DHT, STORE_DH0, SPLIT_S, SPLIT_D, IN_PREC)


def _launch_args(q, cu_seqlens):
    B, T, H, D = q.shape
    N = B if cu_seqlens is None else cu_seqlens.numel() - 1
    lowp = q.dtype in (torch.bfloat16, torch.float16)
    split = (SPLIT_STATE and lowp, SPLIT_DERIVED and lowp)
    # fp32 inputs: three tf32 products per product give ~fp32 accuracy on the tensor cores.
    return B, T, H, D, N, min(BV, D), split, FP32_PRECISION


_STAGES_OK: dict = {}


def _launch(kernel, grid, args, kwargs, lowp):
    """Launch with the fixed configuration.  Pipelining depth changes no arithmetic (only when
    loads are issued), so if a GPU has too little shared memory for it we retry shallower, and
    say so once, instead of failing."""
    want = NUM_STAGES if lowp else NUM_STAGES_FP32
    key = (id(kernel), want, torch.cuda.current_device() if args[0].is_cuda else -1)
    stages = _STAGES_OK.get(key, want)
    while True:
        try:
            out = kernel[grid](*args, **kwargs, num_warps=NUM_WARPS, num_stages=stages)
            _STAGES_OK[key] = stages
            return out
        except OutOfResources:
            if stages <= 1:
                raise
            stages -= 1
            _log.warning("linear_attention.chunk: %s needs less shared memory on this GPU; "
                         "retrying with num_stages=%d (same results, slower)",
                         getattr(kernel, "__name__", "kernel"), stages)


def _segment_tables(cu_seqlens, N, T, seg, device):
    """Segment slots of the segmented forward: (slot count, segments per sequence for a
    fixed-length batch, slot → sequence or -1, sequence → its first slot, sequence → its last
    slot).  A fixed-length batch needs no tables (the kernels divide by its segment count); packed
    sequences get them from ``cu_seqlens`` on the device (no host sync): the slot count is the bound
    N + T // seg ≥ Σ max(cdiv(len, seg), 1), and the slots past the real segments idle."""
    if cu_seqlens is None:
        nseg = triton.cdiv(T, seg)
        last = torch.arange(1, N + 1, device=device) * nseg - 1
        return N * nseg, nseg, None, None, last
    lens = (cu_seqlens[1:] - cu_seqlens[:-1]).long()
    nseg = ((lens + seg - 1) // seg).clamp_min(1)        # an empty sequence still passes its state
    ends = nseg.cumsum(0)
    first = ends - nseg
    slots = N + T // seg
    slot_seq = torch.searchsorted(ends, torch.arange(slots, device=device), right=True)
    slot_seq = torch.where(slot_seq < N, slot_seq, -1).to(torch.int32)
    return slots, 0, slot_seq, first.to(torch.int32), ends - 1


def chunk_fwd(q, k, v, decay, scale, h0, cu_seqlens, output_final_state):
    B, T, H, D, N, bv, split, prec = _launch_args(q, cu_seqlens)
    o = _empty(v)
    dummy = q.new_empty(1, dtype=torch.float32)
    cu = cu_seqlens if cu_seqlens is not None else dummy
    varlen = cu_seqlens is not None
    common = dict(H=H, D=D, BT=BT, BV=bv, SEG=SEGMENT or BT, VARLEN=varlen, SPLIT_D=split[1],
                  IN_PREC=prec)
    lowp = q.dtype != torch.float32
    if SEGMENT is None or T <= SEGMENT:  # every sequence is one segment: the scan alone
        ht = _empty(q, N, H, D, D, dtype=torch.float32) if output_final_state else None
        _launch(_chunk_fwd_kernel, (D // bv, N * H),
                (q, k, v, o, decay, h0 if h0 is not None else dummy, ht if ht is not None else dummy,
                 cu, dummy, dummy, float(scale), T, 1),
                dict(common, SEGMENTED=False, USE_H0=h0 is not None, STORE_HT=output_final_state,
                     SPLIT_S=split[0]), lowp)
        return o, ht
    if SEGMENT % BT:
        raise ValueError(f"chunk_triton.SEGMENT must be a multiple of the chunk size {BT}, got {SEGMENT}")
    slots, nseg, slot_seq, seq_first, last = _segment_tables(cu_seqlens, N, T, SEGMENT, q.device)
    slot_seq = dummy if slot_seq is None else slot_seq
    seq_first = dummy if seq_first is None else seq_first
    states = _empty(q, slots, H, D, D, dtype=torch.float32)   # U_s, then h_s, then end states
    # 1. every segment's own state contribution (all segments at once)
    _launch(_segment_state_kernel, (D // bv, slots * H),
            (k, v, decay, states, cu, slot_seq, seq_first, T, nseg), common, lowp)
    # 2. the states at segment starts, a short fp32 loop per (sequence, head)
    block = min(BOUNDARY_BLOCK, D * D)
    _boundary_scan_kernel[((D * D) // block, N * H)](
        states, h0 if h0 is not None else dummy, decay, cu, seq_first, T, nseg, H=H, D=D,
        SEG=SEGMENT, BLOCK=block, VARLEN=varlen, USE_H0=h0 is not None)
    # 3. the outputs of every segment from its start state (all segments at once)
    _launch(_chunk_fwd_kernel, (D // bv, slots * H),
            (q, k, v, o, decay, states, states, cu, slot_seq, seq_first, float(scale), T, nseg),
            dict(common, SEGMENTED=True, USE_H0=True, STORE_HT=output_final_state,
                 SPLIT_S=split[0]), lowp)
    return o, (states[last] if output_final_state else None)


def chunk_bwd(q, k, v, decay, scale, h0, cu_seqlens, do, dht, need_dh0):
    B, T, H, D, N, bv, split, prec = _launch_args(q, cu_seqlens)
    dq, dk, dv = _empty(q), _empty(k), _empty(v)
    dh0 = _empty(q, N, H, D, D, dtype=torch.float32) if need_dh0 else None
    dummy = q.new_empty(1, dtype=torch.float32)
    cu = cu_seqlens if cu_seqlens is not None else dummy
    _launch(_chunk_bwd_kernel, (3 * (D // bv), N * H),
            (q, k, v, do, dq, dk, dv, decay, h0 if h0 is not None else dummy,
             dht if dht is not None else dummy, dh0 if dh0 is not None else dummy, cu, float(scale),
             T),
            dict(H=H, D=D, BT=BT, BV=bv, VARLEN=cu_seqlens is not None, USE_H0=h0 is not None,
                 USE_DHT=dht is not None, STORE_DH0=need_dh0, SPLIT_S=split[0], SPLIT_D=split[1],
                 IN_PREC=prec),
            q.dtype != torch.float32)
    return dq, dk, dv, dh0


class ChunkFunction(torch.autograd.Function):
    """Autograd wrapper: gradients for q, k, v and initial_state (decay is a constant)."""

    @staticmethod
    def forward(ctx, q, k, v, decay, scale, initial_state, cu_seqlens, output_final_state):
        o, ht = chunk_fwd(q, k, v, decay, scale, initial_state, cu_seqlens, output_final_state)
        ctx.save_for_backward(q, k, v, decay, initial_state, cu_seqlens)
        ctx.scale = scale
        return o, ht

    @staticmethod
    def backward(ctx, do, dht):
        q, k, v, decay, h0, cu_seqlens = ctx.saved_tensors
        need_dh0 = h0 is not None and ctx.needs_input_grad[5]
        dht = dht.contiguous().float() if dht is not None else None
        dq, dk, dv, dh0 = chunk_bwd(q, k, v, decay, ctx.scale, h0, cu_seqlens,
                                    do.to(q.dtype).contiguous(), dht, need_dh0)
        return dq, dk, dv, None, None, dh0, None, None
