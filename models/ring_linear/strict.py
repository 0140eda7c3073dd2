"""Strict mode's switch for a Ring-linear model of either engine (docs/decisions.md, "Strict
mode").  The layers that compute something order-dependent — the attention layers, the MLPs and
experts, the routers — hold a ``strict`` flag; with it they call :mod:`kernels.batch_invariant`
(row-tiled GEMMs, offset-invariant activations, block-ordered softmax attention, the one-loop
linear-attention recurrence) instead of the fast ops.  Norms, RoPE, embeddings, residual adds
and the expert combination are batch invariant as they are and have no flag."""

from __future__ import annotations

from torch import nn

_PROJECT = ("models", "trainer", "rollout")


def use_strict(model: nn.Module) -> int:
    """Sets ``strict`` on every Lockstep layer of ``model`` that has the flag; returns how many."""
    switched = 0
    for module in model.modules():
        if type(module).__module__.split(".")[0] in _PROJECT and isinstance(getattr(module, "strict", None), bool):
            module.strict = True
            switched += 1
    return switched


__all__ = ["use_strict"]
