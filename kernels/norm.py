"""RMSNorm and group RMSNorm in fp32 — one implementation for the trainer and the rollout model
(the modules that hold their weights: :mod:`models.ring_linear.norm`).

    rms_norm(x)       = x / sqrt(mean(x², -1) + eps) · w
    group_rms_norm(x) = the same over each of ``groups`` equal slices of the last dim, one [dim] w

Alignment rule (DESIGN.md §4): norms compute in fp32 with the same eps in both engines and
return fp32, whatever the input dtype; fp64 weights compute in fp64 (the float64 parity runs).
Plain PyTorch: these are memory-bound elementwise ops whose cost is small next to the GEMMs, and
one PyTorch expression is the surest way for two engines to get the same bits.
"""

from __future__ import annotations

import torch


def compute_dtype(t: torch.Tensor) -> torch.dtype:
    """fp32, or fp64 when ``t`` is fp64 (the float64 parity runs)."""
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm over the last dim in fp32 (fp64 for fp64 weights); returns that dtype."""
    dt = compute_dtype(weight)
    x = x.to(dt)
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight.to(dt)


def group_rms_norm(x: torch.Tensor, weight: torch.Tensor, groups: int, eps: float) -> torch.Tensor:
    """RMSNorm applied separately to ``groups`` equal slices of the last dim; weight ``[dim]``."""
    dt = compute_dtype(weight)
    xg = x.to(dt).unflatten(-1, (groups, -1))
    xg = xg * torch.rsqrt(xg.pow(2).mean(-1, keepdim=True) + eps)
    return xg.flatten(-2) * weight.to(dt)


__all__ = ["compute_dtype", "rms_norm", "group_rms_norm"]
