"""RMSNorm (and group RMSNorm) with a row's bits independent of the batch (strict mode).

On CPU :func:`kernels.norm.rms_norm` is invariant as it is (a reduction over a contiguous last
dim, checked in tests/kernels/test_batch_invariant.py) and runs unchanged.  On CUDA it is not by
construction: torch's reduction kernel picks its launch configuration — threads per output,
and for few outputs a split of each row over several blocks — from the number of rows, so a
decode of one token may sum a row in another order than a training batch does.  There the
Triton kernel (``strict_triton.py``) sums each row in one program, in an order fixed by the row
width alone.  The backward is the torch formula's gradient, recomputed from the saved inputs
(only the forward's bits must agree between the engines).
"""

from __future__ import annotations

import torch

from ..norm import group_rms_norm, rms_norm as rms_norm_torch
from . import cuda
from .recompute import recomputed_grads


def _norm_torch(x: torch.Tensor, weight: torch.Tensor, eps: float, groups: int) -> torch.Tensor:
    return rms_norm_torch(x, weight, eps) if groups == 1 else group_rms_norm(x, weight, groups, eps)


def _norm_forward(x: torch.Tensor, weight: torch.Tensor, eps: float, groups: int) -> torch.Tensor:
    """The forward's bits: the Triton kernel on CUDA, else the torch formula."""
    y = cuda.rms_norm(x, weight, eps, groups) if x.is_cuda else None
    return _norm_torch(x, weight, eps, groups) if y is None else y


class _RMSNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, eps, groups):
        ctx.save_for_backward(x, weight)
        ctx.eps, ctx.groups = eps, groups
        return _norm_forward(x, weight, eps, groups)

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        fast = lambda x, w: _norm_torch(x, w, ctx.eps, ctx.groups)  # noqa: E731
        return (*recomputed_grads(fast, (x, weight), ctx.needs_input_grad[:2], grad), None, None)


def invariant_rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float, groups: int = 1) -> torch.Tensor:
    """:func:`kernels.norm.rms_norm` (``groups`` > 1: :func:`kernels.norm.group_rms_norm`), batch
    invariant: fp32 (fp64 for fp64 weights) of x's shape.  Differentiable in x and weight."""
    if not x.is_cuda:  # the torch formula as it is (invariant on CPU), autograd included
        return _norm_torch(x, weight, eps, groups)
    if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad):
        return _RMSNorm.apply(x, weight, eps, groups)
    return _norm_forward(x, weight, eps, groups)


__all__ = ["invariant_rms_norm"]
