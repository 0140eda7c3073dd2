"""The linear-attention recurrence as one token loop, for every use (strict mode):

    S_t = λ ⊙ S_{t−1} + k_tᵀ v_t          (λ = exp(decay) per head; elementwise products)
    o_t = (scale · q_t) S_t                (a 1 × d by d × d product per sequence and head)

Training, prefill (from a slot's state, a piece at a time) and decode (T = 1) call this same
function, so a token's output is the same bits whichever of them computes it: the state update
is elementwise (each element rounds the same everywhere), and the read-out is, per token, one
bmm of ``[B·H, 1, d] × [B·H, d, d]`` (fresh contiguous operands), whose rows depend neither on
B·H nor on the other rows (tests/kernels/test_batch_invariant.py).

On CPU in fp32 the loop runs in C (``strict_cpu.c``: ``decode_cpu.c``'s fp64 step, token after
token, each (sequence, head) by itself); on CUDA one Triton kernel (``strict_triton.py``: the
token loop inside, fp32 state in registers, one program per (sequence, head, 32 value columns));
the rollout engine calls either on its state pool's slots in place (:func:`into_slots`).
Elsewhere the torch ops below.

Chosen over re-running the open chunk at decode (the chunked form's bits depend on where a
token sits in its chunk): one definition, no chunk bookkeeping in the engine.  Its cost is the
forward's T sequential steps; the state is O(B·H·d²) whatever T (no per-token states kept).

Backward (training): only the forward's bits must agree between the engines, so the gradient is
the chunked form's (:func:`kernels.linear_attention.chunk`, fast mode's kernel), recomputed from
the saved q, k, v in the backward: the same function, differentiated in T/64 chunk steps instead
of T token steps, and no ``[B, T, H, d, d]`` of states held for it.
"""

from __future__ import annotations

import torch

from ..linear_attention import chunk
from . import cpu, cuda
from .recompute import recomputed_grads


def decay_factor(decay: torch.Tensor) -> torch.Tensor:
    """λ = exp(decay) fp32 ``[H]``, the C kernel's operand (both engines compute it here)."""
    return torch.exp(decay.detach().float()).contiguous()


def prefix_lengths(valid: torch.Tensor) -> torch.Tensor | None:
    """Each row's count of valid tokens when ``valid`` [B, T] is right padding (every row a
    prefix of True), else None."""
    lengths = valid.sum(1)
    prefix = torch.arange(valid.shape[1], device=valid.device) < lengths[:, None]
    return lengths if torch.equal(prefix, valid) else None


def into_slots(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, decay: torch.Tensor, scale: float,
               pool: torch.Tensor, slots: torch.Tensor, lengths: torch.Tensor | None) -> torch.Tensor | None:
    """The rollout engine's call: :func:`recurrence` on the pool's slots in place (no gather or
    scatter of states), by the C kernel (CPU) or the Triton kernel (CUDA) — the bits
    :func:`recurrence` computes with it.  q, k, v
    ``[B, T, H, d]``; pool fp32 ``[num_slots, H, d, d]``; slots int ``[B]`` (distinct, checked
    in range here); lengths ``[B]``: each sequence's tokens (right padding after).  Returns o, or
    None when the kernel cannot run (the caller then runs :func:`recurrence`)."""
    if q.is_cuda:  # vLLM's slots, unchecked: a host read of them per layer would stall every step
        return cuda.recurrence(q, k, v, decay_factor(decay), scale, pool, slots, lengths)
    if not cpu.available() or slots.numel() and not (0 <= int(slots.min()) and int(slots.max()) < pool.shape[0]):
        return None
    return cpu.recurrence(q, k, v, decay_factor(decay), scale, pool, slots, lengths)


def _recurrence_forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, decay: torch.Tensor, scale: float,
             state: torch.Tensor | None, valid: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The forward's bits (no autograd).  Shapes as :func:`recurrence`.  On CPU in fp32 the C
    kernel (``strict_cpu.c``: decode_cpu.c's fp64 step, token after token), on CUDA the Triton
    kernel (``strict_triton.py``), else the torch ops of :func:`_token_loop`."""
    B, T, H, d = q.shape
    lengths = None if valid is None else prefix_lengths(valid)
    kernels = cuda if q.is_cuda else cpu
    if (q.is_cuda or cpu.available()) and (valid is None or lengths is not None):
        S = q.new_zeros(B, H, d, d) if state is None else state.to(q.dtype, copy=True).contiguous()
        o = kernels.recurrence(q, k, v, decay_factor(decay), scale, S, None, lengths)
        if o is not None:
            return o, S
    return _token_loop(q, k, v, decay, scale, state, valid)


def _token_loop(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, decay: torch.Tensor, scale: float,
                state: torch.Tensor | None, valid: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The token loop in torch ops (no autograd).  Shapes as :func:`recurrence`."""
    B, T, H, d = q.shape
    lam = torch.exp(decay.to(q.dtype))[:, None, None]                               # [H, 1, 1]
    S = q.new_zeros(B, H, d, d) if state is None else state.to(q.dtype)
    q_steps = (q * scale).transpose(0, 1).contiguous()                              # [T, B, H, d]
    o = q.new_empty(T, B, H, d)
    for t in range(T):
        new = lam * S + k[:, t, :, :, None] * v[:, t, :, None, :]
        S = new if valid is None else torch.where(valid[:, t, None, None, None], new, S)
        o[t] = torch.bmm(q_steps[t].view(B * H, 1, d), S.view(B * H, d, d)).view(B, H, d)
    return o.transpose(0, 1), S


class _Recurrence(torch.autograd.Function):
    """The token loop forward; the chunked form's gradient backward (recomputed, see above)."""

    @staticmethod
    def forward(ctx, q, k, v, decay, scale, state):
        o, final = _recurrence_forward(q, k, v, decay, scale, state, None)
        ctx.save_for_backward(q, k, v, decay, state)
        ctx.scale = scale
        ctx.mark_non_differentiable(final)
        return o, final

    @staticmethod
    def backward(ctx, grad_o, _grad_final):
        q, k, v, decay, state = ctx.saved_tensors
        needs = (*ctx.needs_input_grad[:3], state is not None and ctx.needs_input_grad[5])

        def fast(q, k, v, state):  # the chunked kernel takes contiguous operands
            q, k, v = (t.contiguous() for t in (q, k, v))
            initial = None if state is None else state.contiguous()
            return chunk(q, k, v, decay, scale=ctx.scale, initial_state=initial)[0]

        gq, gk, gv, gs = recomputed_grads(fast, (q, k, v, state), needs, grad_o)
        return gq, gk, gv, None, None, gs


def recurrence(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, decay: torch.Tensor, scale: float,
               state: torch.Tensor | None = None, valid: torch.Tensor | None = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """Args:
        q, k, v: ``[B, T, H, d]`` (fp32 or fp64).
        decay: ``[H]`` log-decay (λ = exp(decay)); a constant (no gradient).
        state: ``[B, H, d, d]`` initial state (None: zeros); not modified.
        valid: bool ``[B, T]`` — tokens that update the state (False: padding after a
            sequence's end; its state is carried, its output is garbage).  None: all.
    Returns:
        o ``[B, T, H, d]`` and the final state ``[B, H, d, d]``.  Differentiable in q, k, v and
        state through o (the training forward: ``valid`` must be None there); the final state
        carries no gradient.
    """
    needs_grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (q, k, v, state))
    if not needs_grad:
        return _recurrence_forward(q, k, v, decay.detach(), scale, state, valid)
    if valid is not None:
        raise ValueError("batch_invariant.recurrence: gradients need every token valid (valid=None): "
                         "right padding after a sequence's end only changes outputs nobody reads")
    return _Recurrence.apply(q, k, v, decay.detach(), scale, state)


__all__ = ["recurrence", "into_slots"]
