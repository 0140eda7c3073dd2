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


__all__ = ["stable_topk", "route", "combine_experts"]
