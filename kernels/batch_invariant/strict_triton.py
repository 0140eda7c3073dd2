"""Strict mode's Triton kernels (CUDA): the GEMM, the activations, RMSNorm, the softmax attention
and the linear-attention recurrence, each batch invariant by construction — the twin of
``strict_cpu.c`` for GPUs (docs/decisions.md, "Strict mode on CUDA").

What makes an output element's bits independent of the batch, in every kernel here:

* **One compiled kernel for every call of an op.** Block sizes, warps and stages are
  constants (per dtype for the GEMM), never autotuned.  Triton compiles a variant per argument
  dtype and per "specialisation" (an integer equal to 1 or divisible by 16, a pointer 16-byte
  aligned), and a variant may lay a tile out over the threads differently (load vectorisation),
  which changes the order of a ``tl.sum``.  So: the arguments that differ between the engines'
  calls (row, token and query counts, strides of the engine's cache and state pool) are
  ``do_not_specialize``; every input is 16-byte aligned (:func:`_aligned` copies one that is
  not); optional inputs are always passed (the trainer's call builds the slots, lengths and
  block table the engine passes); and both engines pass the same dtypes (the trainer hands the
  attention K and V in the engine's cache dtype).  No fused multiply-add is formed by the
  compiler (``enable_fp_fusion=False``): each ``a·b + c`` rounds twice, wherever it sits.
* **A program computes whole outputs from their own inputs only**, and every reduction runs
  inside one program in an order fixed by those constants: the GEMM's K loop in order (no
  split-K), a row's sum of squares, a query's keys in blocks from position 0, a (sequence,
  head)'s tokens one after another.  Rows that are not there are masked loads of zeros, which
  change nothing in a row that is (a tensor-core MMA computes each output element from its own
  row of A and column of B).

Each launcher takes tensors on any device: CUDA tensors run compiled; CPU tensors run in Triton's
interpreter (``TRITON_INTERPRET=1`` before triton is imported — the CPU tests).  Production
dispatch (CUDA only, None where a kernel cannot take the call) is :mod:`.cuda`.
"""

from __future__ import annotations

import torch

from ..backend import HAS_TRITON, tl, triton

POISON_OUTPUTS = False  # tests: NaN-fill every output before the kernel runs
_OPTIONS = {"enable_fp_fusion": False}  # no FMA contraction: one rounding per + and ×

# The GEMM's one tile configuration per input dtype (16-bit: tensor cores; fp32: IEEE fp32
# products, not TF32).  Changing any of these changes strict mode's bits.
GEMM_TILES = {
    torch.bfloat16: dict(BLOCK_M=64, BLOCK_N=128, BLOCK_K=64, num_warps=4, num_stages=3),
    torch.float16: dict(BLOCK_M=64, BLOCK_N=128, BLOCK_K=64, num_warps=4, num_stages=3),
    torch.float32: dict(BLOCK_M=32, BLOCK_N=64, BLOCK_K=32, num_warps=4, num_stages=2),
}
ACTIVATION_BLOCK = 1024
KEY_BLOCK = 32     # keys per block of the attention's sum
VALUE_BLOCK = 32   # value columns of the state per recurrence program
NORM_WARPS = 4
ATTENTION_WARPS = 4
RECURRENCE_WARPS = 4


if HAS_TRITON:

    @triton.jit(do_not_specialize=["row_blocks", "O"])
    def _linear_kernel(x, w, y, blocks, row_blocks, K, O, group_stride, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                       BLOCK_K: tl.constexpr, IEEE: tl.constexpr):
        """y[r, c] = Σ_k x[r, k] w[g, c, k], k in BLOCK_K steps in order, fp32 accumulation, one
        rounding to y's dtype.  Program row-block i covers rows blocks[0, i]..blocks[1, i]-1 (at
        most BLOCK_M) with weight g = blocks[2, i] (``blocks`` int64 [3, row_blocks])."""
        i_m, i_n = tl.program_id(0), tl.program_id(1)
        start = tl.load(blocks + i_m)
        end = tl.load(blocks + row_blocks + i_m)
        group = tl.load(blocks + 2 * row_blocks + i_m)
        rows = start + tl.arange(0, BLOCK_M)
        cols = i_n * BLOCK_N + tl.arange(0, BLOCK_N)
        row_ok, col_ok = rows < end, cols < O
        x_rows = x + rows[:, None] * K
        w_cols = w + group * group_stride + cols[None, :] * K
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            ks = k0 + tl.arange(0, BLOCK_K)
            k_ok = ks < K
            a = tl.load(x_rows + ks[None, :], mask=row_ok[:, None] & k_ok[None, :], other=0.0)
            b = tl.load(w_cols + ks[:, None], mask=k_ok[:, None] & col_ok[None, :], other=0.0)  # [BK, BN] = Wᵀ
            if IEEE:
                acc = tl.dot(a, b, acc, input_precision="ieee")
            else:
                acc = tl.dot(a, b, acc)
        tl.store(y + rows[:, None] * O + cols[None, :], acc.to(y.dtype.element_ty),
                 mask=row_ok[:, None] & col_ok[None, :])

    @triton.jit(do_not_specialize=["n"])
    def _activation_kernel(x, y, n, SILU: tl.constexpr, BLOCK: tl.constexpr):
        """sigmoid(x) = 1 / (1 + exp(−x)) (SILU: x · sigmoid(x)) in fp32, rounded once to y's dtype."""
        offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        ok = offs < n
        v = tl.load(x + offs, mask=ok, other=0.0).to(tl.float32)
        s = 1.0 / (1.0 + tl.exp(-v))
        if SILU:
            s = v * s
        tl.store(y + offs, s.to(y.dtype.element_ty), mask=ok)

    @triton.jit
    def _rms_norm_kernel(x, w, y, D, groups, eps, BLOCK_D: tl.constexpr):
        """One row of D values per program (row r: group r % groups of the weight):
        y = (x · 1/√(Σ x² / D + eps)) · w, the sum one tree over the row, fp32."""
        row = tl.program_id(0).to(tl.int64)
        offs = tl.arange(0, BLOCK_D)
        ok = offs < D
        v = tl.load(x + row * D + offs, mask=ok, other=0.0).to(tl.float32)
        wt = tl.load(w + (row % groups) * D + offs, mask=ok, other=0.0).to(tl.float32)
        inv = 1.0 / tl.sqrt(tl.sum(v * v, axis=0) / D + eps)
        tl.store(y + row * D + offs, (v * inv) * wt, mask=ok)

    @triton.jit
    def _key_block(k, table, qv, offs_d, d_ok, i, p, g, head, scale, table_stride, block, s_blk, s_pos,
                   BLOCK_KEYS: tl.constexpr):
        """Block i of the keys 0..p of sequence g: (s_j = scale · q·k_j for its keys, which keys are
        ≤ p, their offsets in the paged cache). Both passes of the kernel read the keys this way."""
        j = i * BLOCK_KEYS + tl.arange(0, BLOCK_KEYS)
        j_ok = j <= p
        where = tl.load(table + g * table_stride + j // block, mask=j_ok, other=0).to(tl.int64)
        at = where * s_blk + (j % block) * s_pos + head
        kb = tl.load(k + at[:, None] + offs_d[None, :], mask=j_ok[:, None] & d_ok[None, :], other=0.0)
        s = tl.sum(kb.to(tl.float32) * qv[None, :], axis=1) * scale
        return s, j_ok, at

    @triton.jit(do_not_specialize=["Tq", "table_stride", "block", "s_blk", "s_pos", "s_head"])
    def _attention_kernel(q, k, v, o, table, positions, scale, Tq, H, rep, table_stride, block, s_blk, s_pos,
                          s_head, D: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_KEYS: tl.constexpr):
        """One (query, head) per program: query (g, t) at position p = positions[g, t] over keys
        0..p of sequence g, key j in cache block table[g, j // block] at row j % block.
        s_j = scale · Σ_d q_d k_jd;  m = max_j s_j;  o = Σ_j e^(s_j − m) v_j / Σ_j e^(s_j − m),
        the sums per block of BLOCK_KEYS keys, the blocks added in key order.  Keys past p are
        never read (a paged cache's stale slots may hold anything)."""
        gt, h = tl.program_id(0).to(tl.int64), tl.program_id(1)
        g = gt // Tq
        p = tl.load(positions + gt).to(tl.int64)
        head = (h // rep).to(tl.int64) * s_head
        offs_d = tl.arange(0, BLOCK_D)
        d_ok = offs_d < D
        row = (gt * H + h) * D
        qv = tl.load(q + row + offs_d, mask=d_ok, other=0.0).to(tl.float32)
        n_blocks = p // BLOCK_KEYS + 1
        # loop-carried values are [BLOCK_D] vectors (each lane the same number): a 0-d loop value
        # is not a type every Triton version carries
        m = tl.full((BLOCK_D,), float("-inf"), tl.float32)
        for i in range(0, n_blocks):                      # pass 1: the exact max of the scores
            s, j_ok, at = _key_block(k, table, qv, offs_d, d_ok, i, p, g, head, scale, table_stride, block,
                                     s_blk, s_pos, BLOCK_KEYS)
            m = tl.maximum(m, tl.max(tl.where(j_ok, s, float("-inf")), axis=0))
        m = tl.max(m, axis=0)
        acc = tl.zeros((BLOCK_D,), dtype=tl.float32)
        total = tl.zeros((BLOCK_D,), dtype=tl.float32)
        for i in range(0, n_blocks):                      # pass 2: Σ P v and Σ P, block after block
            s, j_ok, at = _key_block(k, table, qv, offs_d, d_ok, i, p, g, head, scale, table_stride, block,
                                     s_blk, s_pos, BLOCK_KEYS)
            pj = tl.where(j_ok, tl.exp(s - m), 0.0)
            vb = tl.load(v + at[:, None] + offs_d[None, :], mask=j_ok[:, None] & d_ok[None, :], other=0.0)
            acc = acc + tl.sum(pj[:, None] * vb.to(tl.float32), axis=0)
            total = total + tl.sum(pj, axis=0)
        tl.store(o + row + offs_d, (acc / total).to(o.dtype.element_ty), mask=d_ok)

    @triton.jit(do_not_specialize=["T", "s_slot"])
    def _recurrence_kernel(q, k, v, o, lam, state, slots, lengths, scale, T, H, s_slot,
                           D: tl.constexpr, BV: tl.constexpr):
        """One (sequence b, head h, block of BV value columns) per program, its fp32 state
        S [D, BV] in registers (slot slots[b]), its first n = lengths[b] tokens in order:
            S ← λ_h S + k_tᵀ v_t        o_t = (Σ_i q_ti S_i·) · scale
        then S back to its slot; o is 0 for tokens t ≥ n.  q, k, v, o contiguous [B, T, H, D]."""
        i_v, i_bh = tl.program_id(0), tl.program_id(1)
        b, h = (i_bh // H).to(tl.int64), i_bh % H
        slot = tl.load(slots + b)
        n = tl.load(lengths + b).to(tl.int32)
        o_k = tl.arange(0, D)
        o_v = i_v * BV + tl.arange(0, BV)
        p_s = state + slot * s_slot + h * D * D + o_k[:, None] * D + o_v[None, :]
        S = tl.load(p_s)
        decay = tl.load(lam + h)
        for t in range(0, n):
            at = ((b * T + t) * H + h) * D
            b_q = tl.load(q + at + o_k).to(tl.float32)
            b_k = tl.load(k + at + o_k).to(tl.float32)
            b_v = tl.load(v + at + o_v).to(tl.float32)
            S = S * decay + b_k[:, None] * b_v[None, :]
            b_o = tl.sum(S * b_q[:, None], axis=0) * scale
            tl.store(o + at + o_v, b_o.to(o.dtype.element_ty))
        for t in range(n, T):
            tl.store(o + ((b * T + t) * H + h) * D + o_v, tl.zeros((BV,), dtype=o.dtype.element_ty))
        tl.store(p_s, S)


def _new(like: torch.Tensor, *shape: int, dtype: torch.dtype | None = None) -> torch.Tensor:
    out = torch.empty(*shape, dtype=dtype or like.dtype, device=like.device)
    return out.fill_(float("nan")) if POISON_OUTPUTS else out


def _aligned(t: torch.Tensor) -> torch.Tensor:
    """t contiguous and 16-byte aligned (a copy when it is not): the pointer specialisation is
    then the same in every call."""
    t = t.contiguous()
    return t.clone() if t.data_ptr() % 16 else t


def linear(x: torch.Tensor, weight: torch.Tensor, counts: list[int] | None = None) -> torch.Tensor:
    """``x Wᵀ``: x ``[N, K]``, weight ``[O, K]`` → ``[N, O]`` in x's dtype (bf16, fp16, fp32; one
    dtype).  With ``counts``: weight ``[G, O, K]``, the first counts[0] rows use weight 0, the
    next counts[1] weight 1, … (a row block never straddles two groups)."""
    N, K = x.shape
    O = weight.shape[-2]
    x, weight = _aligned(x), _aligned(weight)
    tiles = GEMM_TILES[x.dtype]
    bm, bn = tiles["BLOCK_M"], tiles["BLOCK_N"]
    y = _new(x, N, O)
    if counts is None:  # one group: the row blocks built on the device (no host copy)
        starts = torch.arange(0, N, bm, dtype=torch.int64, device=x.device)
        blocks = torch.stack((starts, torch.full_like(starts, N), torch.zeros_like(starts)))
    else:
        rows, start = [], 0
        for g, count in enumerate(counts):
            rows += [(r, start + count, g) for r in range(start, start + count, bm)]
            start += count
        blocks = torch.tensor(rows, dtype=torch.int64).t().contiguous().to(x.device, non_blocking=True)
    row_blocks = blocks.shape[1] if blocks.dim() == 2 else 0
    if row_blocks and O:
        _linear_kernel[(row_blocks, triton.cdiv(O, bn))](
            x, weight, y, blocks, row_blocks, K, O, O * K, IEEE=x.dtype == torch.float32, **tiles, **_OPTIONS)
    return y


def activation(x: torch.Tensor, silu: bool) -> torch.Tensor:
    """sigmoid(x) or silu(x) element by element, computed in fp32, in x's dtype."""
    x = x.contiguous()
    y = _new(x, *x.shape)
    n = x.numel()
    if n:
        _activation_kernel[(triton.cdiv(n, ACTIVATION_BLOCK),)](x, y, n, SILU=silu, BLOCK=ACTIVATION_BLOCK,
                                                                **_OPTIONS)
    return y


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float, groups: int = 1) -> torch.Tensor:
    """RMSNorm over ``groups`` equal slices of the last dim of x (any float dtype), one weight
    ``[dim]`` (read as fp32) → fp32 of x's shape."""
    dim = x.shape[-1]
    D = dim // groups
    x = _aligned(x)
    y = _new(x, *x.shape, dtype=torch.float32)
    rows = x.numel() // D
    if rows:
        _rms_norm_kernel[(rows,)](x, _aligned(weight.float()), y, D, groups, float(eps),
                                  BLOCK_D=triton.next_power_of_2(D), num_warps=NORM_WARPS, **_OPTIONS)
    return y


def paged_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, table: torch.Tensor, block: int,
                    positions: torch.Tensor, scale: float) -> torch.Tensor:
    """Causal GQA attention over a paged KV cache, the contract of
    :func:`kernels.batch_invariant.cpu.paged_attention`: q ``[G, Tq, H, d]``; k, v
    ``[blocks, block, KV, d]`` views with equal strides, a contiguous last dim and 16-byte
    aligned (any float dtype: read as fp32; the same dtype in both engines, see the module
    docstring); table int ``[G, blocks per sequence]`` (or ``[G]``: one block each); positions
    int ``[G, Tq]``.  → ``[G, Tq, H, d]`` in q's dtype."""
    G, Tq, H, D = q.shape
    KV = k.shape[2]
    q = _aligned(q)
    table = _aligned(table.to(torch.int64))
    positions = _aligned(positions.to(torch.int64))
    out = _new(q, G, Tq, H, D)
    if G * Tq * H:
        _attention_kernel[(G * Tq, H)](
            q, k, v, out, table, positions, float(scale), Tq, H, H // KV, table.stride(0) if table.dim() > 1 else 1,
            block, k.stride(0), k.stride(1), k.stride(2), D=D, BLOCK_D=triton.next_power_of_2(D),
            BLOCK_KEYS=KEY_BLOCK, num_warps=ATTENTION_WARPS, **_OPTIONS)
    return out


def recurrence(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, lam: torch.Tensor, scale: float,
               state: torch.Tensor, slots: torch.Tensor | None = None, lengths: torch.Tensor | None = None
               ) -> torch.Tensor:
    """The linear-attention recurrence, ``state`` updated in place; the contract of
    :func:`kernels.batch_invariant.cpu.recurrence`: q, k, v ``[B, T, H, D]`` (D a power of two);
    lam = exp(decay) fp32 ``[H]``; state fp32 ``[slots, H, D, D]`` (each slot contiguous, the
    pool 16-byte aligned); sequence b on slot ``slots[b]`` (None: b), its first ``lengths[b]``
    tokens (None: all; later outputs 0).  → o ``[B, T, H, D]`` in q's dtype."""
    B, T, H, D = q.shape
    q, k, v = _aligned(q), _aligned(k), _aligned(v)
    out = _new(q, B, T, H, D)
    bv = min(VALUE_BLOCK, D)
    # always passed (one compiled kernel for the trainer's call and the engine's)
    slots = torch.arange(B, device=q.device) if slots is None else slots.to(torch.int64)
    lengths = torch.full((B,), T, device=q.device) if lengths is None else lengths.to(torch.int64)
    if B * T * H:
        _recurrence_kernel[(D // bv, B * H)](
            q, k, v, out, _aligned(lam.float()), state, _aligned(slots), _aligned(lengths), float(scale), T, H,
            state.stride(0), D=D, BV=bv, num_warps=RECURRENCE_WARPS, **_OPTIONS)
    return out


__all__ = ["linear", "activation", "rms_norm", "paged_attention", "recurrence", "GEMM_TILES", "KEY_BLOCK"]
