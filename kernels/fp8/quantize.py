"""Block-scaled FP8 quantization: activations 1×128, weights 128×128, and the transposed forms.

Public functions (dispatch: CUDA → Triton, CPU → PyTorch in ``reference.py``; same bits):

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

Triton details: the kernels divide with ``div_rn`` (IEEE, like PyTorch) and round to the e4m3
grid themselves in fp32 (RTNE via the 1.5·2^e magic-number trick) before the final cast, so the
cast is exact on hardware and in the interpreter alike (the Triton 3.6 interpreter's own
fp32→fp8 cast does not round to nearest-even and loses the carry into the exponent).
"""

from __future__ import annotations

import torch

from .backend import HAS_TRITON, check_2d, pick_backend, tl, triton
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

if HAS_TRITON:

    @triton.jit
    def scale_from_amax(amax, POW2: tl.constexpr):
        """fp32 scale from a tile's amax (see reference.scale_from_amax)."""
        s = tl.math.div_rn(amax, 448.0)
        s = tl.where(amax > 0, s, 1.0)
        if POW2:
            bits = s.to(tl.int32, bitcast=True)
            exponent = bits & 0x7F800000
            mantissa = bits & 0x007FFFFF
            bits = tl.where(mantissa != 0, exponent + 0x00800000, exponent)
            s = bits.to(tl.float32, bitcast=True)
        return s

    @triton.jit
    def to_e4m3(x, scale):
        """round_to_nearest_even(clamp(x / scale, ±448)) on the e4m3 grid, returned as fp8."""
        v = tl.math.div_rn(x, scale)
        v = tl.minimum(tl.maximum(v, -448.0), 448.0)
        # Quantum of e4m3 at |v|: 2^(e-3) for e = floor(log2|v|) ≥ -6, 2^-9 below (subnormals).
        # Round |v| (so values rounding to zero keep their sign, as in PyTorch) and OR the sign back.
        vbits = v.to(tl.int32, bitcast=True)
        a = tl.abs(v)
        e = tl.maximum(((vbits >> 23) & 0xFF) - 127, -6)
        magic = (((e + 20 + 127) << 23) | 0x00400000).to(tl.float32, bitcast=True)  # 1.5·2^(e+20)
        r = (a + magic) - magic  # fp32 adds round to nearest even at the e4m3 quantum
        r = (r.to(tl.int32, bitcast=True) | (vbits & -2147483648)).to(tl.float32, bitcast=True)
        return r.to(tl.float8e4nv)

    @triton.jit
    def _quant_act_kernel(
        x_ptr, q_ptr, s_ptr, qt_ptr, st_ptr,
        M, K,
        stride_xm, stride_xk,
        stride_qm, stride_sm, stride_sk,
        stride_qtk, stride_stk, stride_stm,
        BLOCK_M: tl.constexpr, G: tl.constexpr,
        ROWWISE: tl.constexpr, COLWISE: tl.constexpr, POW2: tl.constexpr,
    ):
        # One program: a [BLOCK_M, G·128] tile of x. ROWWISE writes 1×128 quantization along K
        # (q [M, K]); COLWISE (BLOCK_M == 128) writes it along M into qt [K, M].
        BLOCK_K: tl.constexpr = G * 128
        pid_m = tl.program_id(0)
        pid_k = tl.program_id(1)
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_k = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
        mask_m = offs_m < M
        mask_k = offs_k < K
        mask = mask_m[:, None] & mask_k[None, :]
        x = tl.load(x_ptr + offs_m[:, None] * stride_xm + offs_k[None, :] * stride_xk,
                    mask=mask, other=0.0).to(tl.float32)
        if ROWWISE:
            x3 = tl.reshape(x, (BLOCK_M, G, 128))
            s = scale_from_amax(tl.max(tl.abs(x3), axis=2), POW2)  # [BLOCK_M, G]
            q = tl.reshape(to_e4m3(x3, s[:, :, None]), (BLOCK_M, BLOCK_K))
            tl.store(q_ptr + offs_m[:, None] * stride_qm + offs_k[None, :], q, mask=mask)
            groups = pid_k * G + tl.arange(0, G)
            tl.store(s_ptr + offs_m[:, None] * stride_sm + groups[None, :] * stride_sk, s,
                     mask=mask_m[:, None] & (groups[None, :] * 128 < K))
        if COLWISE:
            st = scale_from_amax(tl.max(tl.abs(x), axis=0), POW2)
            qt = tl.trans(to_e4m3(x, st[None, :]))  # [BLOCK_K, BLOCK_M], M contiguous in qt
            tl.store(qt_ptr + offs_k[:, None] * stride_qtk + offs_m[None, :], qt,
                     mask=mask_k[:, None] & mask_m[None, :])
            tl.store(st_ptr + offs_k * stride_stk + pid_m * stride_stm, st, mask=mask_k)

    @triton.jit
    def _quant_weight_kernel(w_ptr, q_ptr, s_ptr, N, K, stride_wn, stride_wk, stride_qn,
                             stride_sn, stride_sk, POW2: tl.constexpr, TRANSPOSED: tl.constexpr):
        # One 128×128 block. TRANSPOSED writes Wᵀ's quantization (q [K, N], scale [Kb, Nb]).
        pid_n = tl.program_id(0)
        pid_k = tl.program_id(1)
        offs_n = pid_n * 128 + tl.arange(0, 128)
        offs_k = pid_k * 128 + tl.arange(0, 128)
        mask = (offs_n[:, None] < N) & (offs_k[None, :] < K)
        w = tl.load(w_ptr + offs_n[:, None] * stride_wn + offs_k[None, :] * stride_wk,
                    mask=mask, other=0.0).to(tl.float32)
        s = scale_from_amax(tl.max(tl.max(tl.abs(w), axis=1), axis=0), POW2)
        q = to_e4m3(w, s)
        if TRANSPOSED:
            tl.store(q_ptr + offs_k[:, None] * stride_qn + offs_n[None, :], tl.trans(q),
                     mask=(offs_k[:, None] < K) & (offs_n[None, :] < N))
        else:
            tl.store(q_ptr + offs_n[:, None] * stride_qn + offs_k[None, :], q, mask=mask)
        tl.store(s_ptr + pid_n * stride_sn + pid_k * stride_sk, s)


def _empty_act_scale(rows: int, cols: int, device) -> torch.Tensor:
    # Shape [rows, cols], stored M-major (column-major) for coalesced GEMM loads.
    return torch.empty(cols, rows, dtype=torch.float32, device=device).t()


# (BLOCK_M, G, num_warps) per mode; tuned on an H100 (benchmarks/fp8.py).
_QUANT_CFG = {"row": (64, 1, 4), "col": (128, 1, 8), "both": (128, 1, 8)}


def _quant_act_triton(x: torch.Tensor, rowwise: bool, colwise: bool, pow2_scale: bool, cfg=None):
    m, k = x.shape
    q = s = qt = st = None
    if rowwise:
        q = torch.empty(m, k, dtype=FP8_DTYPE, device=x.device)
        s = _empty_act_scale(m, _cdiv(k, BLOCK), x.device)
    if colwise:
        qt = torch.empty(k, m, dtype=FP8_DTYPE, device=x.device)
        st = _empty_act_scale(k, _cdiv(m, BLOCK), x.device)
    mode = "both" if rowwise and colwise else ("row" if rowwise else "col")
    block_m, g, warps = cfg or _QUANT_CFG[mode]
    if colwise and block_m != BLOCK:
        raise ValueError("transposed quantization needs BLOCK_M == 128")
    qq, ss = (q, s) if rowwise else (qt, st)
    qqt, sst = (qt, st) if colwise else (q, s)
    grid = (_cdiv(m, block_m), _cdiv(k, BLOCK * g))
    _quant_act_kernel[grid](
        x, qq, ss, qqt, sst, m, k,
        x.stride(0), x.stride(1),
        qq.stride(0), ss.stride(0), ss.stride(1),
        qqt.stride(0), sst.stride(0), sst.stride(1),
        BLOCK_M=block_m, G=g, ROWWISE=rowwise, COLWISE=colwise, POW2=pow2_scale,
        num_warps=warps,
    )
    return q, s, qt, st


def quantize_act(x: torch.Tensor, pow2_scale: bool = False, *, backend: str | None = None):
    """1×128 FP8 quantization along the last dim.

    x: [M, K] fp32/bf16/fp16 (any K; a partial last tile is zero padded for its amax).
    Returns (q [M, K] float8_e4m3fn, scale [M, ceil(K/128)] fp32) with x ≈ q * scale.
    """
    check_2d("x", x, _FLOAT_IN)
    if pick_backend("quantize_act", x, backend) == "torch":
        return quantize_act_ref(x, pow2_scale)
    q, s, _, _ = _quant_act_triton(x, True, False, pow2_scale)
    return q, s


def quantize_act_t(x: torch.Tensor, pow2_scale: bool = False, *, backend: str | None = None):
    """1×128 FP8 quantization along the FIRST dim, output transposed.

    x: [M, K]. Returns (q [K, M] e4m3, scale [K, ceil(M/128)] fp32) == quantize_act(x.t()).
    """
    check_2d("x", x, _FLOAT_IN)
    if pick_backend("quantize_act_t", x, backend) == "torch":
        return quantize_act_t_ref(x, pow2_scale)
    _, _, qt, st = _quant_act_triton(x, False, True, pow2_scale)
    return qt, st


def quantize_act_both(x: torch.Tensor, pow2_scale: bool = False, *, backend: str | None = None):
    """(quantize_act(x), quantize_act_t(x)) from a single read of x: returns (q, s, qt, st)."""
    check_2d("x", x, _FLOAT_IN)
    if pick_backend("quantize_act_both", x, backend) == "torch":
        return (*quantize_act_ref(x, pow2_scale), *quantize_act_t_ref(x, pow2_scale))
    # Two launches: on an H100 (Triton 3.6) the single-read kernel (ROWWISE and COLWISE
    # together) ran at 0.28 of copy bandwidth, slower than the two passes (0.70 and 0.45).
    q, s, _, _ = _quant_act_triton(x, True, False, pow2_scale)
    _, _, qt, st = _quant_act_triton(x, False, True, pow2_scale)
    return q, s, qt, st


def quantize_weight(w: torch.Tensor, pow2_scale: bool = False, *, backend: str | None = None):
    """128×128 block FP8 quantization.

    w: [N, K] fp32/bf16/fp16. Returns (q [N, K] e4m3, scale [ceil(N/128), ceil(K/128)] fp32).
    """
    check_2d("w", w, _FLOAT_IN)
    if pick_backend("quantize_weight", w, backend) == "torch":
        return quantize_weight_ref(w, pow2_scale)
    return _quant_weight_triton(w, pow2_scale, transposed=False)


def _quant_weight_triton(w: torch.Tensor, pow2_scale: bool, transposed: bool):
    n, k = w.shape
    nb, kb = _cdiv(n, BLOCK), _cdiv(k, BLOCK)
    q = torch.empty((k, n) if transposed else (n, k), dtype=FP8_DTYPE, device=w.device)
    s = torch.empty((kb, nb) if transposed else (nb, kb), dtype=torch.float32, device=w.device)
    s_n, s_k = (s.stride(1), s.stride(0)) if transposed else (s.stride(0), s.stride(1))
    _quant_weight_kernel[(nb, kb)](w, q, s, n, k, w.stride(0), w.stride(1), q.stride(0),
                                   s_n, s_k, POW2=pow2_scale, TRANSPOSED=transposed, num_warps=8)
    return q, s


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
