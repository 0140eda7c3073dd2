"""The backward of a strict op: only its forward's bits must agree between the engines, so its
gradient is that of the same function in fast ops (SDPA, the chunked linear attention),
recomputed from the saved inputs — no autograd graph through the batch-invariant forward.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch


def recomputed_grads(fast: Callable[..., torch.Tensor], inputs: Sequence[torch.Tensor | None],
                     needs: Sequence[bool], grad: torch.Tensor) -> list[torch.Tensor | None]:
    """∂⟨fast(*inputs), grad⟩ / ∂ each input whose `needs` is set (None for the others and for
    None inputs), `fast` run on detached copies of `inputs`."""
    with torch.enable_grad():
        leaves = [None if t is None else t.detach().requires_grad_(need) for t, need in zip(inputs, needs)]
        out = fast(*leaves)
        grads = iter(torch.autograd.grad(out, [t for t, need in zip(leaves, needs) if need], grad))
    return [next(grads) if need else None for need in needs]
