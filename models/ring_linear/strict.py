"""Strict mode's switch for a Ring-linear model of either engine (docs/decisions.md, "Strict
mode").  The layers that compute something order-dependent — the attention layers, the MLPs and
experts, the routers — hold a ``strict`` flag; with it they call :mod:`kernels.batch_invariant`
(row-tiled GEMMs, offset-invariant activations, block-ordered softmax attention, the one-loop
linear-attention recurrence) instead of the fast ops.  Norms, RoPE, embeddings, residual adds
and the expert combination are batch invariant as they are and have no flag."""

from __future__ import annotations

import functools

import torch
from torch import nn

from kernels.batch_invariant import linear as invariant_linear

_PROJECT = ("models", "trainer", "rollout")


def _invariant_forward(module: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    if module.bias is not None:
        raise ValueError("strict mode: projections with a bias are not supported")
    return invariant_linear(x, module.weight)


def use_strict(model: nn.Module) -> int:
    """Sets ``strict`` on every Lockstep layer of ``model`` that has the flag, and gives every
    plain ``nn.Linear`` the row-tiled forward (the module is still called, so ZeRO-3's hooks
    gather its weight first); returns how many modules were switched."""
    switched = 0
    for module in model.modules():
        if type(module) is nn.Linear:
            module.forward = functools.partial(_invariant_forward, module)
            switched += 1
        elif type(module).__module__.split(".")[0] in _PROJECT and isinstance(getattr(module, "strict", None), bool):
            module.strict = True
            switched += 1
    return switched


__all__ = ["use_strict"]
