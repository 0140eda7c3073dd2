"""The PyTorch implementation of :func:`causal_attention`: one causal SDPA call per sequence
(the CPU production path).

A packed sequence gets exactly the SDPA call it gets alone — same shapes, same strides — so on
CPU it computes the same bits inside a pack as alone (``tests/unit/test_packing.py``).  On a GPU
this costs two launches per sequence per layer (forward and backward) plus a concatenation:
``causal_triton.py`` does the pack in one.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def causal_torch(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor | None = None,
                 scale: float | None = None) -> torch.Tensor:
    """q ``[B, T, H, D]``, k, v ``[B, T, KV, D]``; ``cu_seqlens`` ``[N + 1]`` (B = 1) or None (B
    sequences of T).  Returns o ``[B, T, H, D]`` in q's dtype.  The exported model code
    (``trainer/ring_linear/remote_code.py``) calls this in place of ``causal_attention``."""
    gqa = k.shape[2] != q.shape[2]
    q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)     # [B, heads, T, D]
    if cu_seqlens is None:
        o = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale, enable_gqa=gqa)
    else:
        bounds = cu_seqlens.tolist()
        o = torch.cat([F.scaled_dot_product_attention(q[:, :, a:b], k[:, :, a:b], v[:, :, a:b],
                                                      is_causal=True, scale=scale, enable_gqa=gqa)
                       for a, b in zip(bounds, bounds[1:]) if b > a] or [q[:, :, :0]], dim=2)
    return o.transpose(1, 2)
