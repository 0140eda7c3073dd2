"""Block-scaled FP8 quantization: activations 1×128, weights 128×128, and the transposed forms.

Public functions (dispatch: CUDA → Triton, CPU → PyTorch in ``reference.py``; same bits; on
Hopper ``quantize_act_t`` / ``quantize_act_both`` and the two weight quantizers run the Gluon
kernels in ``quantize_hopper.py``):

- ``quantize_act(x)``      x [M, K]  → q [M, K] e4m3, scale [M, ceil(K/128)] fp32 (tiles along K)
- ``quantize_act_t(x)``    x [M, K]  → q [K, M] e4m3, scale [K, ceil(M/128)] fp32 (tiles along M),
  i.e. ``quantize_act(x.t())``: what the weight-gradient GEMM needs (it reduces over tokens).
- ``quantize_act_both(x)`` both of the above (the backward pass quantizes the output gradient
  both ways).
- ``quantize_weight(w)``   w [N, K]  → q [N, K] e4m3, scale [ceil(N/128), ceil(K/128)] fp32
- ``quantize_weight_t(w)`` w [N, K]  → q [K, N], scale [ceil(K/128), ceil(N/128)]: the same
  128×128 blocks, transposed (the data-gradient GEMM reads Wᵀ).

Scale tensors of activations are returned with M-major strides (a transposed contiguous
buffer, as DeepGEMM lays them out) so the GEMM reads them coalesced; their shape is as above.

Triton details: q = e4m3(RN(x / scale)) must equal PyTorch's IEEE division, clamp and cast
bit for bit. Compiled kernels divide with FMAs and one reciprocal per tile (exact: see
``to_e4m3``) and round with the hardware's round-to-nearest-even cast; under the interpreter
(whose fma rounds twice and whose fp8 cast does not round to nearest even) they use ``div_rn``
and round to the e4m3 grid by hand. Transposed outputs are packed four bytes to an int32 before
the transpose, so a program's qt rows leave as 16-byte stores.
"""

from __future__ import annotations

import functools
import os

import torch

from .backend import HAS_TRITON, check_2d, launch, log, pick_backend, tl, triton
from .reference import (
    BLOCK,
    FP8_DTYPE,
    FP8_MAX,
    _cdiv,
    quantize_act_ref,
    quantize_act_t_ref,
    quantize_weight_ref,
)

_FLOAT_IN = (torch.float32, torch.bfloat16, torch.float16)

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
        """Per tile, from its amax: the scale s (see reference.scale_from_amax) and what the
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
    def _quant_act_kernel(
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
    def _quant_weight_kernel(w_ptr, q_ptr, s_ptr, qt_ptr, N, K, N_WORDS, stride_wn, stride_wk, stride_qn,
                             stride_qtk, stride_sn, stride_sk, POW2: tl.constexpr,
                             DIRECT: tl.constexpr, TRANSPOSED: tl.constexpr):
        # One 128×128 block, rows indexed (i, j) ↦ 4i + j as in _quant_act_kernel. DIRECT writes
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


def _empty_act_scale(rows: int, cols: int, device) -> torch.Tensor:
    # Shape [rows, cols], stored M-major (column-major) for coalesced GEMM loads, columns padded
    # to 16 bytes so the wgrad GEMM can TMA-load them (gemm_hopper.scales_tma_ok). One
    # allocation call (empty + slice + transpose cost three on the host's hot path).
    return torch.empty_strided((rows, cols), (1, _cdiv(rows, 4) * 4), dtype=torch.float32, device=device)


def _empty_transposed(rows: int, cols: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """fp8 [rows, cols] whose rows are padded to 16 bytes (the kernels store whole 4-byte words;
    TMA wants 16-byte row strides), and the int32 view of the padded buffer the kernels write."""
    buf = torch.empty(rows, _cdiv(cols, 16) * 16, dtype=FP8_DTYPE, device=device)
    return buf[:, :cols], buf.view(torch.int32)


def _empty_padded_rows(rows: int, cols: int, device) -> torch.Tensor:
    """fp8 [rows, cols] with rows padded to 16 bytes, as ``_empty_transposed``, in one call, for
    the Gluon kernels (their TMA stores clip to [rows, cols]: no whole words past the end)."""
    return torch.empty_strided((rows, cols), (_cdiv(cols, 16) * 16, 1), dtype=FP8_DTYPE, device=device)


# (BLOCK_M, BLOCK_K, num_warps[, maxnreg]) per mode; tuned on an H100 (benchmarks/fp8/ops.py).
# "both" holds 64 fp32 values per thread plus both outputs: capped at 128 registers it runs two
# blocks per SM (a few spills) and beats one block at 165 registers (0.56 vs 0.46 of copy).
_QUANT_CFG = {"row": (32, 128, 4), "col": (128, 64, 4), "both": (128, 128, 8, 128)}
# Modes that run the Gluon kernels (quantize_hopper.py) on Hopper when TMA can load x; the row
# mode stays on Triton (0.89-0.95 of copy vs 0.73-0.94 for Gluon on an H100, BENCHMARKS.md).
# Weights: 0.80-0.87 of copy vs Triton's 0.54-0.72 (BENCHMARKS.md, session 6).
_GLUON_MODES = {"col", "both", "weight", "weight_t"}
_gluon_logged: set = set()


def _use_gluon(x: torch.Tensor, mode: str, cfg) -> bool:
    """Gluon kernel for this call? cfg: None (the default per mode), "gluon" or ("gluon",
    *the Gluon launch config*: STAGES, programs per SM or 0 for one per tile, register cap,
    options; see ``quantize_hopper.quant_act_gluon``) to ask for it, a Triton tile config to ask
    for Triton. Where the Gluon kernel cannot run, the Triton kernel does, logged once per
    reason."""
    if cfg is not None and not (cfg == "gluon" or cfg[0] == "gluon"):
        return False
    if cfg is None and mode not in _GLUON_MODES:
        return False
    why = _hopper().gluon_quant_supported(x)
    if why is not None:
        if cfg is not None:
            raise ValueError(f"quantize ({mode}): Gluon kernel asked for but unusable: {why}")
        if (mode, why) not in _gluon_logged:  # the Triton kernel runs instead: say so once
            _gluon_logged.add((mode, why))
            log.info("quantize (%s): Triton kernel, Gluon kernel not used: %s", mode, why)
    return why is None


@functools.cache
def _hopper():
    """quantize_hopper, imported on first use (it imports this module's tile math)."""
    from . import quantize_hopper

    return quantize_hopper


def _quant_act_triton(x: torch.Tensor, rowwise: bool, colwise: bool, pow2_scale: bool, cfg=None):
    """The GPU / interpreter path of the three activation quantizers: allocates the outputs and
    runs the Gluon kernel (see _use_gluon) or the Triton one. Returns (q, s, qt, st), None where
    not asked for."""
    m, k = x.shape
    mode = "both" if rowwise and colwise else ("row" if rowwise else "col")
    gluon = x.is_cuda and _use_gluon(x, mode, cfg)
    q = s = qt = st = qt_words = None
    if rowwise:
        q = torch.empty(m, k, dtype=FP8_DTYPE, device=x.device)
        s = _empty_act_scale(m, _cdiv(k, BLOCK), x.device)
    if colwise:
        if gluon:
            qt = _empty_padded_rows(k, m, x.device)
        else:
            qt, qt_words = _empty_transposed(k, m, x.device)
        st = _empty_act_scale(k, _cdiv(m, BLOCK), x.device)
    if gluon:
        _hopper().quant_act_gluon(x, q, s, qt, st, rowwise, colwise, pow2_scale,
                                  None if cfg in (None, "gluon") else cfg[1:])
        return q, s, qt, st
    block_m, block_k, warps, *maxnreg = cfg or _QUANT_CFG[mode]  # optional register cap
    if colwise and block_m != BLOCK or rowwise and block_k % BLOCK:
        raise ValueError("tiles must be 128 rows (transposed) and a multiple of 128 wide (rows)")
    # Unused outputs get a stand-in (never written: their branch is compiled out).
    qq, ss = (q, s) if rowwise else (qt_words, st)
    qqt, sst = (qt_words, st) if colwise else (q, s)
    launch(_quant_act_kernel, (_cdiv(m, block_m), _cdiv(k, block_k)),
        x, qq, ss, qqt, sst, m, k, _cdiv(m, 4),
        x.stride(0), x.stride(1), qq.stride(0), ss.stride(1), qqt.stride(0), sst.stride(1),
        BLOCK_M=block_m, BLOCK_K=block_k, ROWWISE=rowwise, COLWISE=colwise, POW2=pow2_scale,
        num_warps=warps, **({"maxnreg": maxnreg[0]} if maxnreg else {}),
    )
    return q, s, qt, st


def _quantize_act_both_cpu(x: torch.Tensor, pow2_scale: bool):
    """quantize_act_both on CPU: both orientations from one fp32 copy of x (the references
    start with x.float(), a no-op on it, so the bits are theirs)."""
    xf = x.float()
    return (*quantize_act_ref(xf, pow2_scale), *quantize_act_t_ref(xf, pow2_scale))


def _quantize_act(op: str, x, pow2_scale: bool, backend, rowwise: bool, colwise: bool):
    """Shared body of the three activation quantizers: (q, s) and/or (qt, st)."""
    check_2d("x", x, _FLOAT_IN)
    if pick_backend(op, x, backend) == "torch":
        if rowwise and colwise:
            return _quantize_act_both_cpu(x, pow2_scale)
        return quantize_act_ref(x, pow2_scale) if rowwise else quantize_act_t_ref(x, pow2_scale)
    q, s, qt, st = _quant_act_triton(x, rowwise, colwise, pow2_scale)
    return ((q, s) if rowwise else ()) + ((qt, st) if colwise else ())


def quantize_act(x: torch.Tensor, pow2_scale: bool = False, *, backend: str | None = None):
    """1×128 FP8 quantization along the last dim.

    x: [M, K] fp32/bf16/fp16 (any K; a partial last tile is zero padded for its amax).
    Returns (q [M, K] float8_e4m3fn, scale [M, ceil(K/128)] fp32) with x ≈ q * scale.
    """
    return _quantize_act("quantize_act", x, pow2_scale, backend, True, False)


def quantize_act_t(x: torch.Tensor, pow2_scale: bool = False, *, backend: str | None = None):
    """1×128 FP8 quantization along the FIRST dim, output transposed.

    x: [M, K]. Returns (q [K, M] e4m3, scale [K, ceil(M/128)] fp32) == quantize_act(x.t());
    on CUDA q's rows are padded to a multiple of 16 bytes (q.stride(0) >= M).
    """
    return _quantize_act("quantize_act_t", x, pow2_scale, backend, False, True)


def quantize_act_both(x: torch.Tensor, pow2_scale: bool = False, *, backend: str | None = None):
    """(quantize_act(x), quantize_act_t(x)) from one read of x in one kernel: (q, s, qt, st)."""
    return _quantize_act("quantize_act_both", x, pow2_scale, backend, True, True)


def _quant_weight_triton(w: torch.Tensor, pow2_scale: bool, transposed: bool, cfg=None):
    """GPU / interpreter path of quantize_weight(_t): the Gluon kernel on Hopper (see _use_gluon;
    cfg "gluon" or ("gluon", STAGES, per SM, warps) asks for it, "triton" for Triton), else the
    Triton kernel."""
    n, k = w.shape
    nb, kb = _cdiv(n, BLOCK), _cdiv(k, BLOCK)
    gluon = w.is_cuda and _use_gluon(w, "weight_t" if transposed else "weight", cfg)
    if transposed:  # q [K, N], scale [Kb, Nb]
        if gluon:
            q = out = _empty_padded_rows(k, n, w.device)
        else:
            q, out = _empty_transposed(k, n, w.device)
        s = torch.empty(kb, nb, dtype=torch.float32, device=w.device)
        s_n, s_k = s.stride(1), s.stride(0)
    else:
        q = out = torch.empty(n, k, dtype=FP8_DTYPE, device=w.device)
        s = torch.empty(nb, kb, dtype=torch.float32, device=w.device)
        s_n, s_k = s.stride(0), s.stride(1)
    if gluon:
        _hopper().quant_weight_gluon(w, None if transposed else q, q if transposed else None, s, pow2_scale,
                                     None if cfg in (None, "gluon") else cfg[1:])
        return q, s
    launch(_quant_weight_kernel, (nb, kb), w, out, s, out, n, k, _cdiv(n, 4), w.stride(0), w.stride(1), out.stride(0),
                                   out.stride(0), s_n, s_k, POW2=pow2_scale,
                                   DIRECT=not transposed, TRANSPOSED=transposed, num_warps=8)
    return q, s


def quantize_weight(w: torch.Tensor, pow2_scale: bool = False, *, backend: str | None = None):
    """128×128 block FP8 quantization.

    w: [N, K] fp32/bf16/fp16. Returns (q [N, K] e4m3, scale [ceil(N/128), ceil(K/128)] fp32).
    """
    check_2d("w", w, _FLOAT_IN)
    if pick_backend("quantize_weight", w, backend) == "torch":
        return quantize_weight_ref(w, pow2_scale)
    return _quant_weight_triton(w, pow2_scale, transposed=False)


def transpose_quantized_weight(q: torch.Tensor, scale: torch.Tensor):
    """Wᵀ of a 128×128-quantized weight: (q.t() contiguous [K, N], scale.t() [Kb, Nb]).

    Exact: a 128×128 block of Wᵀ is the transpose of a block of W, with the same scale.
    """
    return q.t().contiguous(), scale.t().contiguous()


def quantize_weight_t(w: torch.Tensor, pow2_scale: bool = False, *, backend: str | None = None):
    """128×128 FP8 quantization of Wᵀ. w [N, K] → (q [K, N] e4m3, scale [ceil(K/128), ceil(N/128)]).

    Bitwise equal to ``transpose_quantized_weight(*quantize_weight(w))``; the Triton path writes
    the transposed layout directly from the master weight (the backward pass's dgrad operand).
    """
    check_2d("w", w, _FLOAT_IN)
    if pick_backend("quantize_weight_t", w, backend) == "torch":
        return transpose_quantized_weight(*quantize_weight_ref(w, pow2_scale))
    return _quant_weight_triton(w, pow2_scale, transposed=True)


__all__ = [
    "FP8_DTYPE",
    "FP8_MAX",
    "quantize_act",
    "quantize_act_t",
    "quantize_act_both",
    "quantize_weight",
    "quantize_weight_t",
    "transpose_quantized_weight",
]
