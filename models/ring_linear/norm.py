"""The Ring-linear model's norm modules (parameter ``weight``, as in the checkpoint), for both
engines: :class:`RMSNorm` and :class:`GroupRMSNorm` (the linear layers' output norm), computing
:func:`kernels.norm.rms_norm` / :func:`kernels.norm.group_rms_norm` in fp32.  In strict mode
(``strict``) through :func:`kernels.batch_invariant.invariant_rms_norm`: the same on CPU, a
one-row-per-program kernel on CUDA."""

from __future__ import annotations

import torch
from torch import nn

from kernels.batch_invariant import invariant_rms_norm
from kernels.norm import group_rms_norm, rms_norm


class RMSNorm(nn.Module):
    """RMSNorm over the last dim; returns fp32 (fp64 for fp64 weights).

    ``forward(x, quantize=True)`` returns ``(y, x_quant)``: x_quant = (yq, ys), the 1×128 FP8
    quantization of ``y.to(dtype)`` over the flattened ``[N, D]`` rows, computed in the norm's
    own pass (:func:`kernels.fp8.fused_grad.rms_norm_fp8`) when FP8 projections read y
    (``fp8_input`` = their (pow2_scale, dtype), set by
    :func:`models.ring_linear.fp8_inputs.fuse_fp8_inputs`), else None. Called through the module
    (not a method) so that ZeRO-3 gathers the weight."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps
        self.strict = False  # strict mode (models.ring_linear.strict.use_strict)
        self.fp8_input: tuple[bool, torch.dtype] | None = None

    def forward(self, x: torch.Tensor, quantize: bool = False):
        if not quantize:
            return self.normed(x)
        if self.fp8_input is None:
            return self.normed(x), None
        try:  # in a try: the exported checkpoint code keeps it, plain transformers never gets here
            from kernels.fp8 import rms_norm_fp8
        except ImportError as err:
            raise RuntimeError("FP8 inputs are a Lockstep path: they need its kernels.fp8") from err
        pow2_scale, dtype = self.fp8_input
        y, x_quant = rms_norm_fp8(x.reshape(-1, x.shape[-1]), self.weight, self.eps, dtype, pow2_scale)
        return y.view(x.shape), x_quant

    def normed(self, x: torch.Tensor) -> torch.Tensor:
        """y = rms_norm(x): the batch-invariant kernel in strict mode (which excludes FP8)."""
        if self.strict:
            return invariant_rms_norm(x, self.weight, self.eps)
        return rms_norm(x, self.weight, self.eps)


class GroupRMSNorm(RMSNorm):
    """RMSNorm over ``groups`` equal slices of the last dim; one ``[dim]`` weight."""

    def __init__(self, dim: int, groups: int, eps: float):
        super().__init__(dim, eps)
        self.groups = groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.strict:
            return invariant_rms_norm(x, self.weight, self.eps, self.groups)
        return group_rms_norm(x, self.weight, self.groups, self.eps)


__all__ = ["RMSNorm", "GroupRMSNorm"]
