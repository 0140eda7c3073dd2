"""The linear-attention recurrence as one token loop, for every use (strict mode):

    S_t = λ ⊙ S_{t−1} + k_tᵀ v_t          (λ = exp(decay) per head; elementwise products)
    o_t = (scale · q_t) S_t                (a 1 × d by d × d product per sequence and head)

Training (autograd through the loop), prefill (from a slot's state, a piece at a time) and
decode (T = 1) call this same function, so a token's output is the same bits whichever of them
computes it: the state update is elementwise (each element rounds the same everywhere), and the
read-out is one bmm of ``[n, 1, d] × [n, d, d]`` over every (sequence, token, head), whose rows
do not depend on n (tests/kernels/test_batch_invariant.py).

Chosen over re-running the open chunk at decode (the chunked form's bits depend on where a
token sits in its chunk): one definition, no chunk bookkeeping in the engine.  It costs the
chunked form's speed (T sequential steps instead of T/64 chunks) and, in training, memory for
every S_t (``[B, T, H, d, d]``), which the read-out's backward needs; fine at demo lengths.
"""

from __future__ import annotations

import torch


class _ReadOut(torch.autograd.Function):
    """``o[n] = q[n] S[n]`` for q ``[n, 1, d]``, S ``[n, d, d]``: one bmm forward (the bits both
    engines share); the backward as broadcast products, which are much faster than bmm's
    backward over thousands of 1 × d matrices (only the forward's bits must agree)."""

    @staticmethod
    def forward(ctx, q: torch.Tensor, states: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(q, states)
        return torch.bmm(q, states)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        q, states = ctx.saved_tensors
        gq = (grad * states).sum(-1)[:, None] if ctx.needs_input_grad[0] else None        # g Sᵀ
        gs = q.transpose(1, 2) * grad if ctx.needs_input_grad[1] else None                  # qᵀ g
        return gq, gs


def recurrence(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, decay: torch.Tensor, scale: float,
               state: torch.Tensor | None = None, valid: torch.Tensor | None = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """Args:
        q, k, v: ``[B, T, H, d]`` (fp32 or fp64).
        decay: ``[H]`` log-decay (λ = exp(decay)).
        state: ``[B, H, d, d]`` initial state (None: zeros); not modified.
        valid: bool ``[B, T]`` — tokens that update the state (False: padding after a
            sequence's end; its state is carried, its output is garbage).  None: all.
    Returns:
        o ``[B, T, H, d]`` and the final state ``[B, H, d, d]``.
    """
    B, T, H, d = q.shape
    lam = torch.exp(decay.to(q.dtype))[:, None, None]                               # [H, 1, 1]
    S = q.new_zeros(B, H, d, d) if state is None else state.to(q.dtype)
    q = q * scale
    states = []
    for t in range(T):
        new = lam * S + k[:, t, :, :, None] * v[:, t, :, None, :]
        S = new if valid is None else torch.where(valid[:, t, None, None, None], new, S)
        states.append(S)
    every = torch.stack(states, dim=1).reshape(B * T * H, d, d)                     # S_t per (b, t, h)
    o = _ReadOut.apply(q.reshape(B * T * H, 1, d), every).view(B, T, H, d)
    return o, S


__all__ = ["recurrence"]
