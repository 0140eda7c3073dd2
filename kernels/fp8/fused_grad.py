"""The fused FP8 producers with a backward: a training forward's RMSNorm and SwiGLU hand their
consumer FP8 projections the quantized input (``fp8_linear(x_quant=...)``) from the same pass that
computes their output, instead of each projection quantizing it again.

- ``rms_norm_fp8(x, weight, eps, out_dtype)`` → (y fp32, (yq, ys)): y = RMSNorm(x) as
  :func:`kernels.norm.rms_norm` returns it (fp32: the residual stream's norm, which the router
  reads unrounded), (yq, ys) = ``quantize_act(y.to(out_dtype))`` — what an FP8 projection in
  out_dtype quantizes. One kernel (:func:`~kernels.fp8.fused.rmsnorm_quant`).
- ``silu_mul_fp8(gate, up, out_dtype)`` → (y out_dtype, (yq, ys)): y = silu(gate)·up in fp32
  rounded once to out_dtype, (yq, ys) = ``quantize_act(y)``. One kernel
  (:func:`~kernels.fp8.fused.silu_mul_quant`).

Backward: the gradient is the unfused op's, recomputed (memory-bound, cheap next to the GEMMs):
the forward saves only its inputs, and the backward runs the unfused expression
(:func:`kernels.norm.rms_norm`, :func:`~kernels.fp8.fused.silu_mul_fp32`) under autograd — the
same ops, so on the PyTorch path the gradients are bitwise the unfused model's (tested at model
level). The quantized outputs carry no gradient (the consumer's backward reads its own dy).
"""

from __future__ import annotations

import torch

from ..backend import Backend
from ..norm import rms_norm
from .fused import rmsnorm_quant, silu_mul_fp32, silu_mul_quant


class _RMSNormFP8(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, eps, out_dtype, pow2_scale, backend):
        y, yq, ys = rmsnorm_quant(x, weight, eps, out_dtype=out_dtype, y_dtype=torch.float32,
                                  pow2_scale=pow2_scale, return_y=True, backend=backend)
        ctx.save_for_backward(x, weight)
        ctx.eps = eps
        ctx.mark_non_differentiable(yq, ys)
        return y, yq, ys

    @staticmethod
    def backward(ctx, dy, _dyq, _dys):
        x, weight = ctx.saved_tensors
        return (*_recomputed_grads(lambda x, w: rms_norm(x, w, ctx.eps), (x, weight), dy,
                                   ctx.needs_input_grad[:2]), None, None, None, None)


class _SiluMulFP8(torch.autograd.Function):
    @staticmethod
    def forward(ctx, gate, up, out_dtype, pow2_scale, backend):
        y, yq, ys = silu_mul_quant(gate, up, out_dtype=out_dtype, pow2_scale=pow2_scale, return_y=True,
                                   backend=backend)
        ctx.save_for_backward(gate, up)
        ctx.out_dtype = out_dtype
        ctx.mark_non_differentiable(yq, ys)
        return y, yq, ys

    @staticmethod
    def backward(ctx, dy, _dyq, _dys):
        gate, up = ctx.saved_tensors
        return (*_recomputed_grads(lambda g, u: silu_mul_fp32(g, u).to(ctx.out_dtype), (gate, up), dy,
                                   ctx.needs_input_grad[:2]), None, None, None)


def _recomputed_grads(fn, inputs, dy, needed):
    """Gradients of fn(*inputs) · dy w.r.t. the inputs in ``needed`` (None for the others), by
    running fn again under autograd."""
    with torch.enable_grad():
        leaves = [t.detach().requires_grad_(need) for t, need in zip(inputs, needed)]
        wanted = [t for t in leaves if t.requires_grad]
        grads = iter(torch.autograd.grad(fn(*leaves), wanted, dy) if wanted else ())
    return tuple(next(grads) if need else None for need in needed)


def rms_norm_fp8(x: torch.Tensor, weight: torch.Tensor, eps: float, out_dtype: torch.dtype,
                 pow2_scale: bool = False, backend: Backend = "auto"
                 ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """RMSNorm that also quantizes its output for FP8 consumers; differentiable in x and weight.
    x [M, D], weight [D] → (y [M, D] fp32, (yq [M, D] e4m3, ys [M, ceil(D/128)] fp32)) with
    (yq, ys) = quantize_act(y.to(out_dtype))."""
    y, yq, ys = _RMSNormFP8.apply(x, weight, eps, out_dtype, pow2_scale, backend)
    return y, (yq, ys)


def silu_mul_fp8(gate: torch.Tensor, up: torch.Tensor, out_dtype: torch.dtype, pow2_scale: bool = False,
                 backend: Backend = "auto") -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """SwiGLU's silu(gate)·up (fp32, rounded once to out_dtype) that also quantizes its output
    for the down projection; differentiable in gate and up. gate, up [M, I] → (y [M, I]
    out_dtype, (yq [M, I] e4m3, ys [M, ceil(I/128)] fp32)) with (yq, ys) = quantize_act(y)."""
    y, yq, ys = _SiluMulFP8.apply(gate, up, out_dtype, pow2_scale, backend)
    return y, (yq, ys)


__all__ = ["rms_norm_fp8", "silu_mul_fp8"]
