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
    """RMSNorm over the last dim; returns fp32 (fp64 for fp64 weights)."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps
        self.strict = False  # strict mode (models.ring_linear.strict.use_strict)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
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
