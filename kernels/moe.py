"""Mixture-of-experts routing and combination, shared by the trainer and the rollout model.

Router (Ring-linear / DeepSeek-V3 style): ``s = sigmoid(x W_gᵀ)`` in fp32; the balancing bias
``b`` steers the *selection* only: groups of experts are ranked by the sum of their top-2 biased
scores, the best ``topk_group`` groups are kept, the top-k biased experts inside them are chosen,
and their gates are the *unbiased* scores renormalised over the k (``norm_topk_prob``) times
``routed_scaling_factor``.

Alignment (DESIGN.md §4): router in fp32, stable top-k (ties go to the lower expert index),
and each token's expert outputs are summed in expert-index order whatever the batch, so both
engines add the same terms in the same order.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .norm import compute_dtype


def stable_topk(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the k largest entries of the last dim; ties go to the lower index."""
    return torch.sort(scores, dim=-1, descending=True, stable=True).indices[..., :k]


def route(logits: torch.Tensor, expert_bias: torch.Tensor, top_k: int, n_group: int,
          topk_group: int, norm_topk_prob: bool, routed_scaling_factor: float
          ) -> tuple[torch.Tensor, torch.Tensor]:
    """logits ``[N, E]`` (fp32/fp64), expert_bias ``[E]`` → (indices int64 ``[N, k]``, gate
    weights ``[N, k]`` in the logits' dtype).  Experts outside the kept groups are excluded."""
    N, E = logits.shape
    scores = torch.sigmoid(logits)
    biased = scores + expert_bias.to(scores.dtype)
    if n_group > 1:
        grouped = biased.view(N, n_group, E // n_group)
        group_score = grouped.topk(2, dim=-1).values.sum(-1)                     # [N, n_group]
        keep = torch.zeros_like(group_score, dtype=torch.bool)
        keep.scatter_(1, stable_topk(group_score, topk_group), True)
        biased = grouped.masked_fill(~keep[..., None], float("-inf")).view(N, E)
    idx = stable_topk(biased, top_k)
    w = scores.gather(1, idx)
    if norm_topk_prob and top_k > 1:
        w = w / (w.sum(-1, keepdim=True) + 1e-20)
    return idx, w * routed_scaling_factor


def combine_experts(x: torch.Tensor, idx: torch.Tensor, w: torch.Tensor, num_experts: int,
                    expert: Callable[[int, torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """``out[n] = Σ_j w[n, j] · expert(idx[n, j], x[n])``, the k terms of each token added left
    to right in expert-index order.

    x ``[N, D]``; idx, w ``[N, k]``; ``expert(e, rows)`` maps ``[n_e, D]`` → ``[n_e, D]``.
    Returns ``[N, D]`` in w's dtype.  A fixed number of tensor ops plus one expert call per
    expert (decode batches are tiny: per-op overhead, not FLOPs, is the cost).  Every expert is
    called, in index order, also on zero rows: under ZeRO-3 an expert's weights are gathered by
    a collective in its forward hook, so all ranks must call the same modules.  The sum is an
    explicit loop over the k slots, not a reduction kernel, so its order is fixed everywhere."""
    N, k = idx.shape
    idx, slot_order = torch.sort(idx, dim=1, stable=True)       # each token's experts ascending
    w = w.gather(1, slot_order)
    by_expert = torch.sort(idx.reshape(-1), stable=True).indices  # (token, slot) rows grouped by expert
    counts = torch.bincount(idx.reshape(-1), minlength=num_experts).tolist()  # one host sync
    rows = x[by_expert // k]
    ys = torch.cat([expert(e, part).to(w.dtype) for e, part in enumerate(rows.split(counts))])
    back = torch.empty_like(by_expert)
    back[by_expert] = torch.arange(N * k, device=idx.device)
    y = ys[back].view(N, k, -1) * w[..., None]                     # [N, k, D], slots in expert order
    out = y[:, 0]
    for j in range(1, k):
        out = out + y[:, j]
    return out


# ---------------------------------------------------------------------------------------------
# The modules (one definition for both engines; parameter names are the checkpoint's)


class SwiGLU(nn.Module):
    """``down(silu(gate(x)) · up(x))`` in the weight dtype (inputs cast to it)."""

    def __init__(self, hidden_size: int, intermediate_size: int):
        super().__init__()
        self.gate_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.up_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.down_proj = nn.Linear(intermediate_size, hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.gate_proj.weight.dtype)
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class MoEGate(nn.Module):
    """The router: ``weight [E, D]`` and the fp32 balancing bias ``expert_bias [E]`` (not trained
    by gradient).  Routing happens inside this module's call, so that ZeRO-3 has both
    parameters gathered."""

    def __init__(self, config):
        super().__init__()
        self.cfg = config
        self.weight = nn.Parameter(torch.empty(config.num_experts, config.hidden_size))
        self.expert_bias = nn.Parameter(torch.zeros(config.num_experts, dtype=torch.float32), requires_grad=False)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x ``[N, D]`` → (expert indices int64 ``[N, k]``, gates ``[N, k]`` fp32, fp64 for fp64 weights)."""
        c, dt = self.cfg, compute_dtype(self.weight)
        logits = F.linear(x.to(dt), self.weight.to(dt))  # router in fp32
        return route(logits, self.expert_bias, c.num_experts_per_tok, c.n_group, c.topk_group,
                     c.norm_topk_prob, c.routed_scaling_factor)


class MoE(nn.Module):
    """Routed SwiGLU experts + an optional shared expert; ``config`` carries the Ring-linear /
    DeepSeek-V3 MoE fields (num_experts, num_experts_per_tok, n_group, topk_group, …)."""

    def __init__(self, config):
        super().__init__()
        self.cfg = config
        self.gate = MoEGate(config)
        self.experts = nn.ModuleList(SwiGLU(config.hidden_size, config.moe_intermediate_size)
                                     for _ in range(config.num_experts))
        shared = config.moe_shared_expert_intermediate_size * config.num_shared_experts
        self.shared_experts = SwiGLU(config.hidden_size, shared) if config.num_shared_experts > 0 else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x ``[..., D]`` (fp32 normed) → ``[..., D]`` fp32 (fp64 for fp64 weights)."""
        flat = x.reshape(-1, x.shape[-1])
        idx, w = self.gate(flat)
        out = combine_experts(flat, idx, w, self.cfg.num_experts, lambda e, rows: self.experts[e](rows))
        if self.shared_experts is not None:
            out = out + self.shared_experts(flat).to(out.dtype)
        return out.view(x.shape)


__all__ = ["stable_topk", "route", "combine_experts", "SwiGLU", "MoEGate", "MoE"]
