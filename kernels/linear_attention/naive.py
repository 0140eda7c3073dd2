"""Reference: the token-by-token recurrence of DESIGN.md §3 step 4, in plain PyTorch.

    S_t = λ S_{t-1} + k_tᵀ v_t          (S is [K, V] per head, K = key dim, V = value dim)
    o_t = scale · q_t S_t                (the current token counts; no normaliser)

Slow on purpose (one step per token) and float64-capable: it computes in the promoted dtype of
its inputs and float32 (so float64 inputs give a float64 reference).  Differentiable through
autograd, which is how the tests get reference gradients.  Nothing in the engines calls it.
"""

from __future__ import annotations

import torch


def naive_recurrence(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, decay: torch.Tensor,
                     scale: float, initial_state: torch.Tensor | None = None,
                     cu_seqlens: torch.Tensor | None = None, output_final_state: bool = False):
    """Token loop.  Shapes as :func:`kernels.linear_attention.chunk`.

    Args:
        q, k: ``[B, T, H, K]``; v: ``[B, T, H, V]`` (``B == 1`` when ``cu_seqlens`` is given).
        decay: ``[H]`` log-decay ``g`` (λ = exp(g)).
        initial_state: ``[N, H, K, V]`` (N = B, or number of sequences), or None for zeros.
        cu_seqlens: ``[N + 1]`` int, sequence boundaries in the packed T dimension.
    Returns:
        ``o`` ``[B, T, H, V]`` and the final state ``[N, H, K, V]`` (or None), both in the compute
        dtype (float64 if any input is float64, else float32).
    """
    dt = torch.promote_types(torch.promote_types(q.dtype, v.dtype), torch.float32)
    if initial_state is not None:
        dt = torch.promote_types(dt, initial_state.dtype)
    q, k, v = q.to(dt), k.to(dt), v.to(dt)
    lam = torch.exp(decay.to(dt))[:, None, None]  # [H, 1, 1]
    B, T, H, K = q.shape
    V = v.shape[-1]
    if cu_seqlens is None:
        bounds = [(b, 0, T) for b in range(B)]
    else:
        cu = cu_seqlens.tolist()
        bounds = [(0, cu[i], cu[i + 1]) for i in range(len(cu) - 1)]
    outs, finals = [], []
    for n, (b, bos, eos) in enumerate(bounds):
        S = q.new_zeros(H, K, V) if initial_state is None else initial_state[n].to(dt)
        rows = []
        for t in range(bos, eos):
            S = lam * S + k[b, t][:, :, None] * v[b, t][:, None, :]
            rows.append(scale * torch.einsum("hk,hkv->hv", q[b, t], S))
        outs.append(torch.stack(rows, 0) if rows else q.new_zeros(0, H, V))
        finals.append(S)
    if cu_seqlens is None:
        o = torch.stack(outs, 0)
    else:
        o = torch.cat(outs, 0)[None]
    return o, (torch.stack(finals, 0) if output_final_state else None)
