"""The float64-capable reference of :func:`causal_attention` (tests only): the softmax written
out with an explicit block-diagonal causal mask, no SDPA, no blocking.

    o_i = Σ_{j ∈ seq(i), j ≤ i} softmax_j(scale · q_i·k_j) v_j      (query head h reads KV head h // (H / KV))
"""

from __future__ import annotations

import torch


def naive_causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                           cu_seqlens: torch.Tensor | None = None, scale: float | None = None) -> torch.Tensor:
    """q ``[B, T, H, D]``, k, v ``[B, T, KV, D]`` (with ``cu_seqlens`` B = 1, sequences packed
    along T).  Computes in q's dtype (pass float64 for the reference); differentiable."""
    B, T, H, D = q.shape
    group = H // k.shape[2]
    scale = D ** -0.5 if scale is None else scale
    k, v = k.repeat_interleave(group, dim=2), v.repeat_interleave(group, dim=2)
    if cu_seqlens is None:
        seq = torch.zeros(T, dtype=torch.long)
    else:
        lengths = (cu_seqlens[1:] - cu_seqlens[:-1]).cpu()
        seq = torch.repeat_interleave(torch.arange(len(lengths)), lengths)
    pos = torch.arange(T)
    visible = (seq[:, None] == seq[None, :]) & (pos[None, :] <= pos[:, None])     # [T query, T key]
    scores = torch.einsum("bihd,bjhd->bhij", q, k) * scale
    scores = scores.masked_fill(~visible.to(q.device), float("-inf"))
    return torch.einsum("bhij,bjhd->bihd", scores.softmax(-1), v)
