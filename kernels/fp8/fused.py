"""Fused producers of FP8 GEMM inputs: RMSNorm + quantize, SwiGLU + quantize (one pass each).

Contract (what makes fused and unfused paths agree): the fused op computes its output y in
fp32, rounds it to ``out_dtype`` (the model dtype, bf16 by default), and quantizes THAT rounded
value, so ``yq, ys == quantize_act(y)`` bitwise. A trainer that runs the unfused norm and then
``fp8_linear(y)`` quantizes exactly what the rollout engine's fused kernel did, provided y
itself agrees (same fp32 norm math; the tests bound y against the fp32 reference).

- ``rmsnorm_quant(x, weight, eps)``: x [M, D] (fp32 residual stream or bf16), weight [D] →
  (yq [M, D] e4m3, scale [M, ceil(D/128)] fp32), plus y [M, D] if return_y (in ``y_dtype``:
  fp32 for the models here, whose norms return fp32; the quantization is of y's out_dtype
  rounding either way). y = x · rsqrt(mean(x²) + eps) · weight, in fp32 (the PyTorch path is
  :func:`kernels.norm.rms_norm` itself).
- ``silu_mul_quant(x)`` / ``silu_mul_quant(gate, up)``: x [M, 2I] = [gate | up] or two [M, I]
  → (yq [M, I], scale [M, ceil(I/128)]), plus y [M, I] if return_y. y = silu(gate) · up in
  fp32 (:func:`silu_mul_fp32`, the PyTorch path).

Forward only (rollout, and training forwards that hand ``x_quant`` to ``fp8_linear``).
``backend=`` as in :mod:`kernels.backend`: the PyTorch path (fp32 math here, then
``quantize_act_torch``) or the Triton kernels here (whose tile math is ``quantize_triton.py``'s).
"""

from __future__ import annotations

import torch

from ..backend import HAS_TRITON, Backend, resolve_backend, tl, triton
from ..norm import rms_norm
from .format import BLOCK, FP8_DTYPE, cdiv, check_2d
from .launch import launch
from .quantize_torch import quantize_act_torch
from .quantize_triton import empty_act_scale

_FLOAT_IN = (torch.float32, torch.bfloat16, torch.float16)

if HAS_TRITON:
    from .quantize_triton import _INTERPRETED, as_f32, tile_scale, to_e4m3

    @triton.jit
    def _quantize_rows_and_store(y, rows, cols, group0, M, N, q_ptr, s_ptr, stride_qm, stride_sk,
                                 BF16_Y: tl.constexpr, POW2: tl.constexpr):
        # y: fp32 [R, C] (zeros where masked) for output rows `rows` [R] and columns `cols` [C]
        # (C a multiple of 128, cols starting at 128·group0): quantize each 1×128 group, store q and
        # the scales (s[m, g] at m + g·stride_sk, M-major as empty_act_scale lays it out).
        R: tl.constexpr = y.shape[0]
        G: tl.constexpr = y.shape[1] // 128
        y3 = tl.reshape(y, (R, G, 128))
        s, b, c, inv = tile_scale(tl.max(tl.abs(y3), axis=2), POW2)  # [R, G]
        q = to_e4m3(y3, b[:, :, None], c[:, :, None], inv[:, :, None], BF16_Y)
        q = tl.reshape(q, (R, G * 128))
        row_ok = rows[:, None] < M
        tl.store(q_ptr + rows[:, None] * stride_qm + cols[None, :], q,
                 mask=row_ok & (cols[None, :] < N))
        groups = group0 + tl.arange(0, G)[None, :]
        tl.store(s_ptr + rows[:, None] + groups * stride_sk, s, mask=row_ok & (groups * 128 < N))

    @triton.jit
    def _round_to(y, ROUND: tl.constexpr):
        # y (fp32) rounded to the model dtype (0: fp32, 1: bf16, 2: fp16), the values quantized.
        # The interpreter's fp32 → bf16 cast truncates and flushes subnormals; there the bf16 bits
        # are rounded to nearest even by hand (on the top 16 bits of the fp32; finite values).
        if ROUND == 1:
            if _INTERPRETED:
                bits = y.to(tl.int32, bitcast=True)
                bits = (bits + (0x7FFF + ((bits >> 16) & 1))) >> 16
                return bits.to(tl.int16).to(tl.bfloat16, bitcast=True)
            return y.to(tl.bfloat16)
        elif ROUND == 2:
            return y.to(tl.float16)
        else:
            return y

    @triton.jit
    def _rmsnorm_quant_kernel(x_ptr, w_ptr, y_ptr, q_ptr, s_ptr, M, D, eps,
                              stride_xm, stride_ym, stride_qm, stride_sk, ROWS: tl.constexpr,
                              BLOCK_D: tl.constexpr, STORE_Y: tl.constexpr, POW2: tl.constexpr,
                              ROUND: tl.constexpr, Y_FP32: tl.constexpr):
        rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
        cols = tl.arange(0, BLOCK_D)
        mask = (rows[:, None] < M) & (cols[None, :] < D)
        x = tl.load(x_ptr + rows[:, None] * stride_xm + cols[None, :], mask=mask,
                    other=0.0).to(tl.float32)
        w = tl.load(w_ptr + cols, mask=cols < D, other=0.0).to(tl.float32)
        var = tl.sum(x * x, axis=1) / D
        r = tl.math.div_rn(1.0, tl.math.sqrt_rn(var + eps))
        y = x * r[:, None] * w[None, :]
        y_rounded = _round_to(y, ROUND)
        if STORE_Y:  # the rounded y, or (Y_FP32) y unrounded: for a consumer that reads it so (the router)
            y_out = y if Y_FP32 else y_rounded
            tl.store(y_ptr + rows[:, None] * stride_ym + cols[None, :], y_out.to(y_ptr.dtype.element_ty), mask=mask)
        _quantize_rows_and_store(as_f32(y_rounded), rows, cols, 0, M, D, q_ptr, s_ptr, stride_qm,
                                 stride_sk, ROUND == 1, POW2)

    @triton.jit
    def _silu_mul_quant_kernel(g_ptr, u_ptr, y_ptr, q_ptr, s_ptr, M, I,
                               stride_gm, stride_um, stride_ym, stride_qm, stride_sk, ROWS: tl.constexpr,
                               BLOCK_I: tl.constexpr, STORE_Y: tl.constexpr, POW2: tl.constexpr):
        rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
        cols = tl.program_id(1) * BLOCK_I + tl.arange(0, BLOCK_I)
        mask = (rows[:, None] < M) & (cols[None, :] < I)
        g = tl.load(g_ptr + rows[:, None] * stride_gm + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        u = tl.load(u_ptr + rows[:, None] * stride_um + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        # silu(g) = g / (1 + e^-g) with the fast exp and division (y is rounded to bf16 next;
        # only the quantization of y must match quantize_act bitwise, and it does).
        y = (g / (1.0 + tl.exp(-g)) * u).to(y_ptr.dtype.element_ty)
        if STORE_Y:
            tl.store(y_ptr + rows[:, None] * stride_ym + cols[None, :], y, mask=mask)
        _quantize_rows_and_store(as_f32(y), rows, cols, tl.program_id(1) * (BLOCK_I // 128),
                                 M, I, q_ptr, s_ptr, stride_qm,
                                 stride_sk, y_ptr.dtype.element_ty == tl.bfloat16, POW2)


def _next_pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


# (rows per program, num_warps); tuned on an H100 (benchmarks/fp8/ops.py).
_SILU_CFG = (1, 4)


def _rmsnorm_config(block_d: int) -> tuple[int, int]:
    return max(1, 4096 // block_d), min(16, max(4, block_d // 512))


def silu_mul_fp32(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """SwiGLU's silu(gate) · up in fp32: gate, up [M, I] (any float dtype) → fp32 [M, I]. The
    PyTorch path of ``silu_mul_quant`` and the FP8 experts' unfused SwiGLU (differentiable), so
    fused and unfused agree bitwise on CPU."""
    g, u = gate.float(), up.float()
    return g * torch.sigmoid(g) * u


_ROUND_CODE = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}


def rmsnorm_quant(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6, *,
                  out_dtype: torch.dtype = torch.bfloat16, pow2_scale: bool = False, return_y: bool = False,
                  y_dtype: torch.dtype | None = None, backend: Backend = "auto",
                  config: tuple[int, int] | None = None) -> tuple[torch.Tensor, ...]:
    """Fused fp32 RMSNorm + 1×128 FP8 quantization.

    x [M, D] fp32/bf16/fp16 (contiguous along D), weight [D]. Returns (yq [M, D] e4m3,
    scale [M, ceil(D/128)] fp32) or, with return_y, (y [M, D] y_dtype, yq, scale). What is
    quantized is y rounded to out_dtype (the consuming projection's dtype); y itself is returned
    in y_dtype (default out_dtype; fp32 for a model whose norms return fp32, DESIGN §4: the
    router reads it unrounded, and the FP8 projections quantize its out_dtype rounding).
    config: (rows per program, num_warps) for the Triton kernel (benchmarks).
    """
    check_2d("x", x, _FLOAT_IN)
    m, d = x.shape
    y_dtype = y_dtype or out_dtype
    if weight.shape != (d,):
        raise ValueError(f"weight must be [D]={d}, got {tuple(weight.shape)}")
    if x.stride(1) != 1:
        raise ValueError("x must be contiguous along D")
    if out_dtype not in _ROUND_CODE or y_dtype not in (out_dtype, torch.float32):
        raise ValueError(f"out_dtype must be among {tuple(_ROUND_CODE)} and y_dtype out_dtype or float32, "
                         f"got {out_dtype}, {y_dtype}")
    if resolve_backend("rmsnorm_quant", x, backend) == "torch":
        y32 = rms_norm(x, weight.float(), eps)  # the model's own fp32 RMSNorm, bit for bit
        yq, ys = quantize_act_torch(y32.to(out_dtype), pow2_scale)
        y = y32.to(y_dtype)
    else:
        y = torch.empty(m, d, dtype=y_dtype, device=x.device)
        yq = torch.empty(m, d, dtype=FP8_DTYPE, device=x.device)
        ys = empty_act_scale(m, cdiv(d, BLOCK), x.device)
        block_d = max(BLOCK, _next_pow2(d))
        rows, warps = config or _rmsnorm_config(block_d)
        launch(_rmsnorm_quant_kernel, (cdiv(m, rows),),
            x, weight, y, yq, ys, m, d, eps, x.stride(0), y.stride(0), yq.stride(0), ys.stride(1),
            ROWS=rows, BLOCK_D=block_d, STORE_Y=return_y, POW2=pow2_scale, ROUND=_ROUND_CODE[out_dtype],
            Y_FP32=y_dtype != out_dtype, num_warps=warps,
        )
    return (y, yq, ys) if return_y else (yq, ys)


def silu_mul_quant(x: torch.Tensor, up: torch.Tensor | None = None, *, out_dtype: torch.dtype = torch.bfloat16,
                   pow2_scale: bool = False, return_y: bool = False, backend: Backend = "auto",
                   config: tuple[int, int] | None = None) -> tuple[torch.Tensor, ...]:
    """Fused SwiGLU (silu(gate) · up, fp32) + 1×128 FP8 quantization.

    x [M, 2I] = [gate | up], or x = gate [M, I] and ``up`` [M, I] (two GEMMs' outputs, no
    concatenation); fp32/bf16/fp16, contiguous along the last dim. Returns (yq [M, I] e4m3,
    scale [M, ceil(I/128)] fp32) or, with return_y, (y [M, I] out_dtype, yq, scale).
    config: (rows per program, num_warps) for the Triton kernel (benchmarks).
    """
    check_2d("x", x, _FLOAT_IN)
    if up is None:
        m, two_i = x.shape
        if two_i % 2:
            raise ValueError(f"x must be [M, 2I] (gate then up), got odd last dim {two_i}")
        gate, up = x[:, : two_i // 2], x[:, two_i // 2:]
    else:
        check_2d("up", up, _FLOAT_IN)
        if up.shape != x.shape:
            raise ValueError(f"gate {tuple(x.shape)} and up {tuple(up.shape)} must have one shape [M, I]")
        gate = x
    if gate.stride(1) != 1 or up.stride(1) != 1:
        raise ValueError("x (and up) must be contiguous along the last dim")
    m, i = gate.shape
    if resolve_backend("silu_mul_quant", x, backend) == "torch":
        y = silu_mul_fp32(gate, up).to(out_dtype)
        yq, ys = quantize_act_torch(y, pow2_scale)
    else:
        y = torch.empty(m, i, dtype=out_dtype, device=x.device)
        yq = torch.empty(m, i, dtype=FP8_DTYPE, device=x.device)
        ys = empty_act_scale(m, cdiv(i, BLOCK), x.device)
        block_i = min(1024, max(BLOCK, _next_pow2(i)))
        rows, warps = config or _SILU_CFG
        launch(_silu_mul_quant_kernel, (cdiv(m, rows), cdiv(i, block_i)),
            gate, up, y, yq, ys, m, i, gate.stride(0), up.stride(0), y.stride(0), yq.stride(0), ys.stride(1),
            ROWS=rows, BLOCK_I=block_i, STORE_Y=return_y, POW2=pow2_scale, num_warps=warps,
        )
    return (y, yq, ys) if return_y else (yq, ys)


__all__ = ["rmsnorm_quant", "silu_mul_fp32", "silu_mul_quant"]
