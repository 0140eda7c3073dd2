"""Fused producers of FP8 GEMM inputs: RMSNorm + quantize, SwiGLU + quantize (one pass each).

Contract (what makes fused and unfused paths agree): the fused op computes its output y in
fp32, rounds it to ``out_dtype`` (the model dtype, bf16 by default), and quantizes THAT rounded
value, so ``yq, ys == quantize_act(y)`` bitwise. A trainer that runs the unfused norm and then
``fp8_linear(y)`` quantizes exactly what the rollout engine's fused kernel did, provided y
itself agrees (same fp32 norm math; the tests bound y against the fp32 reference).

- ``rmsnorm_quant(x, weight, eps)``: x [M, D] (fp32 residual stream or bf16), weight [D] →
  (yq [M, D] e4m3, scale [M, ceil(D/128)] fp32), plus y [M, D] out_dtype if return_y.
  y = x · rsqrt(mean(x²) + eps) · weight, in fp32.
- ``silu_mul_quant(x)``: x [M, 2I] = [gate | up] → (yq [M, I], scale [M, ceil(I/128)]),
  plus y [M, I] if return_y. y = silu(gate) · up in fp32.

Forward only (rollout, and training forwards that hand ``x_quant`` to ``fp8_linear``).
"""

from __future__ import annotations

import torch

from .backend import HAS_TRITON, check_2d, pick_backend, tl, triton
from .quantize import _empty_act_scale
from .reference import BLOCK, FP8_DTYPE, _cdiv, quantize_act_ref, rmsnorm_ref, silu_mul_ref

_FLOAT_IN = (torch.float32, torch.bfloat16, torch.float16)

if HAS_TRITON:
    from .quantize import scale_from_amax, to_e4m3

    @triton.jit
    def _quantize_groups_and_store(y, offs, mask, row, q_ptr, s_ptr, stride_qm, stride_sm,
                                   stride_sk, first_group, N, BLOCK: tl.constexpr,
                                   POW2: tl.constexpr):
        # y: fp32 [BLOCK] (zeros where masked) → quantize each 128-group, store q and scales.
        G: tl.constexpr = BLOCK // 128
        y2 = tl.reshape(y, (G, 128))
        s = scale_from_amax(tl.max(tl.abs(y2), axis=1), POW2)
        q = tl.reshape(to_e4m3(y2, s[:, None]), (BLOCK,))
        tl.store(q_ptr + row * stride_qm + offs, q, mask=mask)
        groups = first_group + tl.arange(0, G)
        tl.store(s_ptr + row * stride_sm + groups * stride_sk, s, mask=groups * 128 < N)

    @triton.jit
    def _rmsnorm_quant_kernel(x_ptr, w_ptr, y_ptr, q_ptr, s_ptr, D, eps,
                              stride_xm, stride_ym, stride_qm, stride_sm, stride_sk,
                              BLOCK_D: tl.constexpr, STORE_Y: tl.constexpr, POW2: tl.constexpr):
        row = tl.program_id(0)
        offs = tl.arange(0, BLOCK_D)
        mask = offs < D
        x = tl.load(x_ptr + row * stride_xm + offs, mask=mask, other=0.0).to(tl.float32)
        w = tl.load(w_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        var = tl.sum(x * x, axis=0) / D
        r = tl.math.div_rn(1.0, tl.math.sqrt_rn(var + eps))
        y = (x * r * w).to(y_ptr.dtype.element_ty)
        if STORE_Y:
            tl.store(y_ptr + row * stride_ym + offs, y, mask=mask)
        _quantize_groups_and_store(y.to(tl.float32), offs, mask, row, q_ptr, s_ptr, stride_qm,
                                   stride_sm, stride_sk, 0, D, BLOCK_D, POW2)

    @triton.jit
    def _silu_mul_quant_kernel(x_ptr, y_ptr, q_ptr, s_ptr, I,
                               stride_xm, stride_ym, stride_qm, stride_sm, stride_sk,
                               BLOCK_I: tl.constexpr, STORE_Y: tl.constexpr, POW2: tl.constexpr):
        row = tl.program_id(0)
        pid = tl.program_id(1)
        offs = pid * BLOCK_I + tl.arange(0, BLOCK_I)
        mask = offs < I
        g = tl.load(x_ptr + row * stride_xm + offs, mask=mask, other=0.0).to(tl.float32)
        u = tl.load(x_ptr + row * stride_xm + I + offs, mask=mask, other=0.0).to(tl.float32)
        sig = tl.math.div_rn(1.0, 1.0 + tl.exp(-g))
        y = (g * sig * u).to(y_ptr.dtype.element_ty)
        if STORE_Y:
            tl.store(y_ptr + row * stride_ym + offs, y, mask=mask)
        _quantize_groups_and_store(y.to(tl.float32), offs, mask, row, q_ptr, s_ptr, stride_qm,
                                   stride_sm, stride_sk, pid * (BLOCK_I // 128), I, BLOCK_I, POW2)


def _next_pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def rmsnorm_quant(x, weight, eps: float = 1e-6, *, out_dtype=torch.bfloat16, pow2_scale=False,
                  return_y=False, backend=None):
    """Fused fp32 RMSNorm + 1×128 FP8 quantization (see module docstring for shapes).

    Returns (yq, scale) or, with return_y, (y, yq, scale).
    """
    check_2d("x", x, _FLOAT_IN)
    m, d = x.shape
    if weight.shape != (d,):
        raise ValueError(f"weight must be [D]={d}, got {tuple(weight.shape)}")
    if x.stride(1) != 1:
        raise ValueError("x must be contiguous along D")
    if pick_backend("rmsnorm_quant", x, backend) == "torch":
        y = rmsnorm_ref(x, weight, eps).to(out_dtype)
        yq, ys = quantize_act_ref(y, pow2_scale)
    else:
        y = torch.empty(m, d, dtype=out_dtype, device=x.device)
        yq = torch.empty(m, d, dtype=FP8_DTYPE, device=x.device)
        ys = _empty_act_scale(m, _cdiv(d, BLOCK), x.device)
        block_d = max(BLOCK, _next_pow2(d))
        _rmsnorm_quant_kernel[(m,)](
            x, weight, y, yq, ys, d, eps, x.stride(0), y.stride(0), yq.stride(0),
            ys.stride(0), ys.stride(1), BLOCK_D=block_d, STORE_Y=return_y, POW2=pow2_scale,
            num_warps=min(16, max(4, block_d // 512)),
        )
    return (y, yq, ys) if return_y else (yq, ys)


def silu_mul_quant(x, *, out_dtype=torch.bfloat16, pow2_scale=False, return_y=False,
                   backend=None):
    """Fused SwiGLU (silu(gate) · up, fp32) + 1×128 FP8 quantization; x [M, 2I] = [gate | up].

    Returns (yq [M, I], scale [M, ceil(I/128)]) or, with return_y, (y, yq, scale).
    """
    check_2d("x", x, _FLOAT_IN)
    m, two_i = x.shape
    if two_i % 2:
        raise ValueError(f"x must be [M, 2I] (gate then up), got odd last dim {two_i}")
    if x.stride(1) != 1:
        raise ValueError("x must be contiguous along its last dim")
    i = two_i // 2
    if pick_backend("silu_mul_quant", x, backend) == "torch":
        y = silu_mul_ref(x).to(out_dtype)
        yq, ys = quantize_act_ref(y, pow2_scale)
    else:
        y = torch.empty(m, i, dtype=out_dtype, device=x.device)
        yq = torch.empty(m, i, dtype=FP8_DTYPE, device=x.device)
        ys = _empty_act_scale(m, _cdiv(i, BLOCK), x.device)
        block_i = min(1024, max(BLOCK, _next_pow2(i)))
        _silu_mul_quant_kernel[(m, _cdiv(i, block_i))](
            x, y, yq, ys, i, x.stride(0), y.stride(0), yq.stride(0), ys.stride(0), ys.stride(1),
            BLOCK_I=block_i, STORE_Y=return_y, POW2=pow2_scale, num_warps=4,
        )
    return (y, yq, ys) if return_y else (yq, ys)


__all__ = ["rmsnorm_quant", "silu_mul_quant"]
