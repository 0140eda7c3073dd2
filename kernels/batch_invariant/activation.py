"""Sigmoid and SiLU with an element's bits independent of its offset in the tensor.

``torch.sigmoid`` and ``F.silu`` on CPU compute the vectorised body of a tensor and its scalar
tail with different formulas, so the same value rounds differently at different offsets (seen:
rows cut from a larger tensor differ in the last bit).  ``exp`` and the IEEE operations
``+ − × ÷`` round the same everywhere, so the composition below does too:

    sigmoid(x) = 1 / (1 + exp(−x))        silu(x) = x · sigmoid(x)

Differentiable through autograd.
"""

from __future__ import annotations

import torch


def sigmoid(x: torch.Tensor) -> torch.Tensor:
    return 1.0 / (1.0 + torch.exp(-x))


def silu(x: torch.Tensor) -> torch.Tensor:
    return x * sigmoid(x)


__all__ = ["sigmoid", "silu"]
