"""Triton kernels of the FP8 quantizers (1×128 activations, both orientations; 128×128 weights),
the per-tile math they share with the Gluon kernels (``quantize_hopper.py``) and the fused ops
(``fused.py``), and the output layouts the GPU path allocates.

The tile math: q = e4m3(RN(x / scale)) must equal PyTorch's IEEE division, clamp and cast bit
for bit (``quantize_torch.py``). Compiled kernels divide with FMAs and one reciprocal per tile
(exact: see ``to_e4m3``) and round with the hardware's round-to-nearest-even cast; under the
interpreter (whose fma rounds twice and whose fp8 cast does not round to nearest even) they use
``div_rn`` and round to the e4m3 grid by hand. Transposed outputs are packed four bytes to an
int32 before the transpose, so a program's qt rows leave as 16-byte stores.

Scale tensors of activations are allocated with M-major strides (a transposed contiguous
buffer, as DeepGEMM lays them out) so the GEMM reads them coalesced.
"""

from __future__ import annotations

import os

import torch

from ..backend import HAS_TRITON, tl, triton
from .format import FP8_DTYPE, cdiv

# The interpreter runs tl.fma as two roundings and casts fp32 → fp8 without round-to-nearest-
# even, so it takes the plain path (IEEE division, rounding done by hand); compiled kernels take
# the fast path. Both give the same bits (the GPU tests and benchmark check them against the
# PyTorch path).
_INTERPRETED = tl.constexpr(os.environ.get("TRITON_INTERPRET", "0") == "1") if HAS_TRITON else True

if HAS_TRITON:

    @triton.jit
    def as_f32(x):
        """x (bf16/fp16/fp32) → fp32 exactly (the interpreter's bf16 cast mangles subnormals;
        bf16 is the top half of an fp32, so the exact conversion is a shift)."""
        if _INTERPRETED and x.dtype == tl.bfloat16:
            return (x.to(tl.int16, bitcast=True).to(tl.int32) << 16).to(tl.float32, bitcast=True)
        else:
            return x.to(tl.float32)

    @triton.jit
    def tile_scale(amax, POW2: tl.constexpr, AMAX16: tl.constexpr = False):
        """Per tile, from its amax: the scale s (see format.scale_from_amax) and what the
        division x / s needs (see to_e4m3): c, b = s·c and inv = RN(1 / b).

        c = 2^64 when s < 2^-64, else 1: scaling x and s by the same power of two leaves the
        quotient unchanged and keeps b, x·c and the remainders of the FMA division normal.
        AMAX16: amax is a bf16 / fp16 value (or +inf); s = RN(amax / 448) is then one FMA
        correction of amax·RN(1/448), as to_e4m3 divides bf16 values (exhaustive check over
        every such amax in tests/kernels/test_fp8.py): 3 instructions instead of div.rn's ~9.
        """
        if AMAX16 and not _INTERPRETED:
            q = amax * 0.002232142857142857  # RN(1/448)
            s = tl.fma(tl.fma(q, -448.0, amax), 0.002232142857142857, q)
            s = tl.where(amax == float("inf"), amax, s)  # (the remainder of inf is NaN)
        else:
            s = tl.math.div_rn(amax, 448.0)
        s = tl.where(s > 0, s, 1.0)
        if POW2:  # round up to a power of two by bit manipulation (exact)
            bits = s.to(tl.int32, bitcast=True)
            exponent = bits & 0x7F800000
            bits = tl.where((bits & 0x007FFFFF) != 0, exponent + 0x00800000, exponent)
            s = bits.to(tl.float32, bitcast=True)
        c = tl.where(s < 5.421010862427522e-20, 1.8446744073709552e19, 1.0)
        b = s * c
        return s, b, c, tl.math.div_rn(1.0, b)

    @triton.jit
    def to_e4m3(x, b, c, inv, BF16_IN: tl.constexpr):
        """e4m3(RN(x / s)) for s = b / c (tile_scale): PyTorch's (x / s).clamp(±448).to(e4m3).

        x: fp32 values; BF16_IN: they are bf16 values (one FMA correction suffices, see below).
        """
        a = x * c
        if _INTERPRETED:
            v = tl.math.div_rn(a, b)
            v = tl.minimum(tl.maximum(v, -448.0), 448.0)
            # Round to the e4m3 quantum 2^(e-3), e = max(floor(log2|v|), -6), by the
            # 1.5·2^(e+20) magic-number add (fp32 adds round to nearest even); round |v| so
            # values rounding to zero keep their sign, as in PyTorch.
            vbits = v.to(tl.int32, bitcast=True)
            e = tl.maximum(((vbits >> 23) & 0xFF) - 127, -6)
            magic = (((e + 20 + 127) << 23) | 0x00400000).to(tl.float32, bitcast=True)
            r = (tl.abs(v) + magic) - magic
            r = (r.to(tl.int32, bitcast=True) | (vbits & -2147483648)).to(tl.float32, bitcast=True)
            return r.to(tl.float8e4nv)
        else:
            # IEEE a / b without a divide (div.rn costs a reciprocal, five FMAs and a branch per
            # element; here the divisor is the tile's, so inv = RN(1/b) is computed once).
            # q0 = RN(a·inv); with the remainder r = a - b·q (exact in an FMA), q1 = RN(q0 +
            # r0·inv) is faithful, and q2 = RN(q1 + r1·inv) == RN(a / b) by Markstein's theorem
            # (inv within 1/2 ulp of 1/b, q1 within 1 ulp of a/b, no underflow). For bf16 a,
            # q1 already equals RN(a / b): checked exhaustively over all pairs of significands
            # (tests/kernels/test_fp8.py emulates both sequences in exact arithmetic).
            q = a * inv
            q = tl.fma(tl.fma(-b, q, a), inv, q)
            if not BF16_IN:
                q = tl.fma(tl.fma(-b, q, a), inv, q)
            # Magnitude at least 2^-100 (tiny quotients round to ±0 either way, and the fp8 cast
            # is not trusted with fp32 subnormals), sign from a (a = ±0 gives +0 above).
            mag = tl.maximum(q.to(tl.int32, bitcast=True) & 0x7FFFFFFF, 0x0D800000)
            qb = mag | (a.to(tl.int32, bitcast=True) & -2147483648)
            # cvt.rn.satfinite: round to nearest even, |q| ≤ 448.00003 rounds to ≤ 448 (no clamp).
            return qb.to(tl.float32, bitcast=True).to(tl.float8e4nv)

    @triton.jit
    def _pack4(q):
        """fp8 [R, C, 4] → int32 [R, C]: the 4 bytes of the last dim, first one lowest (little
        endian), i.e. 4 consecutive fp8 values of a contiguous row of the output."""
        j = tl.arange(0, 4)[None, None, :]
        return tl.sum(q.to(tl.uint8, bitcast=True).to(tl.int32) << (8 * j), axis=2)  # disjoint bits

    @triton.jit
    def quant_act_kernel(
        x_ptr, q_ptr, s_ptr, qt_ptr, st_ptr,
        M, K, M_WORDS,
        stride_xm, stride_xk, stride_qm, stride_sk, stride_qtk, stride_stm,
        BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr,
        ROWWISE: tl.constexpr, COLWISE: tl.constexpr, POW2: tl.constexpr,
    ):
        # One program: a [BLOCK_M, BLOCK_K] tile of x, read once. ROWWISE writes the 1×128
        # quantization along K (q [M, K], scales s [M, Kb] with s.stride(0) == 1); COLWISE
        # (BLOCK_M == 128) the one along M into qt [K, M] (scales st [K, Mb], st.stride(0) == 1).
        # Rows are indexed (i, j) ↦ 4i + j with j the last axis, so that the 4 fp8 values of
        # rows 4i..4i+3 in one column sit in one thread and pack into one int32 of a qt row: the
        # transpose then moves 32-bit words (tl.trans), and qt rows are stored 16 bytes at a time.
        pid_m = tl.program_id(0)
        pid_k = tl.program_id(1)
        i = tl.arange(0, BLOCK_M // 4)[:, None, None]
        j = tl.arange(0, 4)[None, None, :]
        rows = pid_m * BLOCK_M + 4 * i + j  # [BM/4, 1, 4]
        cols = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)[None, :, None]  # [1, BK, 1]
        mask = (rows < M) & (cols < K)
        BF16_IN: tl.constexpr = x_ptr.dtype.element_ty == tl.bfloat16
        x = as_f32(tl.load(x_ptr + rows * stride_xm + cols * stride_xk, mask=mask, other=0.0))
        if ROWWISE:  # BLOCK_K = G·128
            G: tl.constexpr = BLOCK_K // 128
            x4 = tl.reshape(x, (BLOCK_M // 4, G, 128, 4))
            s, b, c, inv = tile_scale(tl.max(tl.abs(x4), axis=2), POW2)  # [BM/4, G, 4]
            q = to_e4m3(x4, b[:, :, None, :], c[:, :, None, :], inv[:, :, None, :], BF16_IN)
            tl.store(q_ptr + rows * stride_qm + cols, tl.reshape(q, (BLOCK_M // 4, BLOCK_K, 4)),
                     mask=mask)
            groups = pid_k * G + tl.arange(0, G)[None, :, None]
            tl.store(s_ptr + rows + groups * stride_sk, s, mask=(rows < M) & (groups * 128 < K))
        if COLWISE:
            st, b, c, inv = tile_scale(tl.max(tl.max(tl.abs(x), axis=2), axis=0), POW2)  # [BK]
            q = to_e4m3(x, b[None, :, None], c[None, :, None], inv[None, :, None], BF16_IN)
            words = tl.trans(_pack4(q))  # [BK, BM/4] int32: qt[k, 4i..4i+3]
            w_col = pid_m * (BLOCK_M // 4) + tl.arange(0, BLOCK_M // 4)[None, :]
            k_row = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)[:, None]
            # qt rows are padded to whole words (the wrapper allocates them), so partial words
            # at the end of a row are stored whole: their extra bytes are padding.
            tl.store(qt_ptr + k_row * stride_qtk + w_col, words, mask=(k_row < K) & (w_col < M_WORDS))
            kk = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
            tl.store(st_ptr + kk + pid_m * stride_stm, st, mask=kk < K)

    @triton.jit
    def quant_weight_kernel(w_ptr, q_ptr, s_ptr, qt_ptr, N, K, N_WORDS, stride_wn, stride_wk, stride_qn,
                             stride_qtk, stride_sn, stride_sk, POW2: tl.constexpr,
                             DIRECT: tl.constexpr, TRANSPOSED: tl.constexpr):
        # One 128×128 block, rows indexed (i, j) ↦ 4i + j as in quant_act_kernel. DIRECT writes
        # q [N, K]; TRANSPOSED writes Wᵀ's quantization into qt [K, N] (packed words, rows padded
        # to whole words); scale [Nb, Kb] either way (Wᵀ's scale is its transpose).
        pid_n = tl.program_id(0)
        pid_k = tl.program_id(1)
        i = tl.arange(0, 32)[:, None, None]
        j = tl.arange(0, 4)[None, None, :]
        rows = pid_n * 128 + 4 * i + j
        cols = pid_k * 128 + tl.arange(0, 128)[None, :, None]
        mask = (rows < N) & (cols < K)
        w = as_f32(tl.load(w_ptr + rows * stride_wn + cols * stride_wk, mask=mask, other=0.0))
        s, b, c, inv = tile_scale(tl.max(tl.max(tl.max(tl.abs(w), axis=2), axis=1), axis=0), POW2)
        q = to_e4m3(w, b, c, inv, w_ptr.dtype.element_ty == tl.bfloat16)
        if DIRECT:
            tl.store(q_ptr + rows * stride_qn + cols, q, mask=mask)
        if TRANSPOSED:
            words = tl.trans(_pack4(q))  # [128, 32]
            w_col = pid_n * 32 + tl.arange(0, 32)[None, :]
            k_row = pid_k * 128 + tl.arange(0, 128)[:, None]
            tl.store(qt_ptr + k_row * stride_qtk + w_col, words, mask=(k_row < K) & (w_col < N_WORDS))
        tl.store(s_ptr + pid_n * stride_sn + pid_k * stride_sk, s)


def empty_act_scale(rows: int, cols: int, device) -> torch.Tensor:
    # Shape [rows, cols], stored M-major (column-major) for coalesced GEMM loads, columns padded
    # to 16 bytes so the wgrad GEMM can TMA-load them (gemm_hopper.scales_tma_ok). One
    # allocation call (empty + slice + transpose cost three on the host's hot path).
    return torch.empty_strided((rows, cols), (1, cdiv(rows, 4) * 4), dtype=torch.float32, device=device)


def empty_transposed(rows: int, cols: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """fp8 [rows, cols] whose rows are padded to 16 bytes (the kernels store whole 4-byte words;
    TMA wants 16-byte row strides), and the int32 view of the padded buffer the kernels write."""
    buf = torch.empty(rows, cdiv(cols, 16) * 16, dtype=FP8_DTYPE, device=device)
    return buf[:, :cols], buf.view(torch.int32)


def empty_padded_rows(rows: int, cols: int, device) -> torch.Tensor:
    """fp8 [rows, cols] with rows padded to 16 bytes, as ``empty_transposed``, in one call, for
    the Gluon kernels (their TMA stores clip to [rows, cols]: no whole words past the end)."""
    return torch.empty_strided((rows, cols), (cdiv(cols, 16) * 16, 1), dtype=FP8_DTYPE, device=device)
