"""Train/infer mismatch metrics (DESIGN.md §5): one definition used by the driver, the tests
and the report.

For each valid sampled token t: a_t = rollout log-prob, b_t = trainer log-prob of the same token
under the same weights, Δ_t = b_t − a_t, r_t = exp(Δ_t).
"""

from __future__ import annotations

import torch

# Token-position buckets for drift along the sequence: [0, 64), [64, 256), [256, 1024), [1024, ∞).
POSITION_BUCKETS = (0, 64, 256, 1024)


def mismatch_metrics(rollout_logp: torch.Tensor, trainer_logp: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor | None = None) -> dict[str, float]:
    """rollout_logp, trainer_logp: [N] (or any shape, same as mask); mask: bool/0-1, valid tokens;
    positions: completion position of each token (same shape), for the bucketed metrics."""
    m = mask.bool()
    a = rollout_logp[m].double()
    b = trainer_logp[m].double()
    if a.numel() == 0:
        return {}
    delta = b - a
    r = torch.exp(delta)
    abs_p = (torch.exp(b) - torch.exp(a)).abs()
    # Effective sample size of the importance ratios, normalised to (0, 1]: (Σr)² / (n Σr²).
    ess = (r.sum() ** 2 / (r.numel() * (r**2).sum())).item()
    out = {
        "mismatch/k1": (a - b).mean().item(),
        "mismatch/k3": (r - 1 - delta).mean().item(),
        "mismatch/abs_logp_diff_mean": delta.abs().mean().item(),
        "mismatch/abs_logp_diff_max": delta.abs().max().item(),
        "mismatch/abs_p_diff_mean": abs_p.mean().item(),
        "mismatch/abs_p_diff_max": abs_p.max().item(),
        "mismatch/frac_abs_p_diff_gt_0.8": (abs_p > 0.8).double().mean().item(),
        "mismatch/bitwise_equal_frac": (rollout_logp[m] == trainer_logp[m]).double().mean().item(),
        "mismatch/token_mult_prob_error": torch.exp(delta.abs()).mean().item(),
        "mismatch/is_ess": ess,
        # χ² divergence estimate E_a[(r − 1)²].
        "mismatch/chi2_token": ((r - 1) ** 2).mean().item(),
        "mismatch/num_tokens": float(a.numel()),
    }
    if positions is not None:
        pos = positions[m]
        edges = list(POSITION_BUCKETS) + [None]
        for lo, hi in zip(edges[:-1], edges[1:]):
            sel = pos >= lo if hi is None else (pos >= lo) & (pos < hi)
            if sel.any():
                name = f"{lo}+" if hi is None else f"{lo}-{hi}"
                d = delta[sel]
                out[f"mismatch/k3_pos_{name}"] = (torch.exp(d) - 1 - d).mean().item()
                out[f"mismatch/abs_logp_diff_max_pos_{name}"] = d.abs().max().item()
    return out
