"""Sigmoid and SiLU with an element's bits independent of its offset in the tensor.

``torch.sigmoid`` and ``F.silu`` on CPU compute the vectorised body of a tensor and its scalar
tail with different formulas, so the same value rounds differently at different offsets (seen:
rows cut from a larger tensor differ in the last bit).  ``exp`` and the IEEE operations
``+ − × ÷`` round the same everywhere, so the composition below does too:

    sigmoid(x) = 1 / (1 + exp(−x))        silu(x) = x · sigmoid(x)

On CPU in fp32 one C call computes it (``strict_cpu.c``, glibc's ``expf``: one pass instead of
four tensor ops); on CUDA one Triton kernel (``strict_triton.py``: fp32 arithmetic, one rounding
to x's dtype; every element runs the same instructions, whatever its offset); elsewhere the
tensor ops.  Differentiable: the backward is the ordinary
derivative from ``torch.sigmoid`` (only the forward's bits must agree between the engines).
"""

from __future__ import annotations

import torch

from . import cpu, cuda


class _Activation(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, silu: bool) -> torch.Tensor:
        ctx.save_for_backward(x)
        ctx.silu = silu
        return _kernel(x, silu)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (x,) = ctx.saved_tensors
        s = torch.sigmoid(x)
        return grad * (s * (1 + x * (1 - s)) if ctx.silu else s * (1 - s)), None


def _kernel(x: torch.Tensor, silu: bool) -> torch.Tensor:
    """The C kernel (CPU, fp32) or the Triton kernel (CUDA); the caller checked one takes x."""
    return cuda.activation(x, silu) if x.is_cuda else cpu.sigmoid(x, silu)


def _activation(x: torch.Tensor, silu: bool) -> torch.Tensor:
    if cpu.takes(x) or x.is_cuda and cuda.activation_takes(x):
        if torch.is_grad_enabled() and x.requires_grad:
            return _Activation.apply(x, silu)
        return _kernel(x, silu)
    return _activation_torch(x, silu)


def _activation_torch(x: torch.Tensor, silu: bool) -> torch.Tensor:
    s = 1.0 / (1.0 + torch.exp(-x))
    return x * s if silu else s


def sigmoid(x: torch.Tensor) -> torch.Tensor:
    return _activation(x, silu=False)


def silu(x: torch.Tensor) -> torch.Tensor:
    return _activation(x, silu=True)


__all__ = ["sigmoid", "silu"]
