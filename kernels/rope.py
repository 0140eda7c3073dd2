"""Rotary position embedding, NeoX style, on the first ``rotary_dim`` dims of each head.

    inv_freq_i = theta^(-2i / r)          angle_{p,i} = p · inv_freq_i        i < r/2
    x' = [x1·cos − x2·sin,  x2·cos + x1·sin,  x_rest]    (x1, x2 = the two halves of the first r dims)

One table builder and one rotation for both engines (DESIGN.md §4): angles are computed in
float64 from integer positions and rounded once to the compute dtype, so the trainer (positions
0..T-1) and the rollout engine (vLLM's per-token positions) get the same cos/sin bits for the
same position whatever the batch looks like.
"""

from __future__ import annotations

import torch


def rope_cos_sin(positions: torch.Tensor, rotary_dim: int, theta: float,
                 dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin tables ``[*positions.shape, rotary_dim // 2]`` in ``dtype``."""
    i = torch.arange(0, rotary_dim, 2, dtype=torch.float64, device=positions.device)
    inv_freq = 1.0 / (theta ** (i / rotary_dim))
    angle = positions.to(torch.float64)[..., None] * inv_freq
    return angle.cos().to(dtype), angle.sin().to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotates the first ``2·cos.shape[-1]`` dims of each head of x ``[..., T, H, d]``.

    cos, sin: one row per token, ``[T, r/2]`` or ``[..., T, r/2]`` (broadcast over heads), in
    x's dtype."""
    half = cos.shape[-1]
    cos, sin = cos.unsqueeze(-2), sin.unsqueeze(-2)
    x1, x2, rest = x[..., :half], x[..., half:2 * half], x[..., 2 * half:]
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin, rest), dim=-1)


__all__ = ["rope_cos_sin", "apply_rope"]
