"""Train/infer mismatch metrics (DESIGN.md §5): one definition used by the driver, the tests
and the report.

For each valid sampled token t: a_t = rollout log-prob, b_t = trainer log-prob of the same token
under the same weights, Δ_t = b_t − a_t, r_t = exp(Δ_t).

`mismatch_metrics` gives the step's scalars (logged as `mismatch/*`); `mismatch_profile` the
sums behind the report's distributions (by |Δ| decade, token position, sequence length), kept as
sums so that steps combine exactly and the report never re-estimates them from a sample.
"""

from __future__ import annotations

import operator

import torch

# Token-position buckets for drift along the sequence: [0, 64), [64, 256), [256, 1024), [1024, ∞).
POSITION_BUCKETS = (0, 64, 256, 1024)
# Decades of |Δ| in the report's distribution: |Δ| < 1e-8 (fp32 noise and below) … |Δ| ≥ 10.
DECADE_MIN, DECADE_MAX = -9, 1


def k3_terms(delta: torch.Tensor) -> torch.Tensor:
    """k3 of each token, exp(Δ) − 1 − Δ ≥ 0 (Δ = b − a): its mean estimates KL(a ‖ b)."""
    return torch.exp(delta) - 1 - delta


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
        "mismatch/k3": k3_terms(delta).mean().item(),
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
                out[f"mismatch/k3_pos_{name}"] = k3_terms(d).mean().item()
                out[f"mismatch/abs_logp_diff_max_pos_{name}"] = d.abs().max().item()
    return out


# One line per metric, for the report and the README ("Mismatch metrics").
METRIC_DOCS = {
    "k1": "mean(a − b): the sample estimate of KL(rollout ‖ trainer); can be negative, noisy",
    "k3": "mean(r − 1 − Δ) with r = e^Δ: a low-variance, never-negative estimate of the same KL",
    "abs_logp_diff_mean": "mean |Δ| = mean |b − a| over the step's tokens",
    "abs_logp_diff_max": "the largest |b − a| of any token in the step",
    "abs_p_diff_mean": "mean |e^b − e^a|: the gap in probability rather than log-probability",
    "abs_p_diff_max": "the largest |e^b − e^a|",
    "frac_abs_p_diff_gt_0.8": "share of tokens whose probability differs by more than 0.8 (gross disagreement)",
    "bitwise_equal_frac": "share of tokens whose two log-probs are bit-for-bit equal",
    "token_mult_prob_error": "mean e^|Δ|: by what factor the two engines' probabilities of a token differ, "
                             "on average (1 = equal; 1.01 = 1% apart)",
    "is_ess": "effective sample size of the ratios r, (Σr)² / (n Σr²), normalised to (0, 1]: 1 when every "
              "ratio is equal, near 0 when a few tokens carry all the importance weight",
    "chi2_token": "mean (r − 1)²: the χ² divergence, which grows with the variance of importance weights",
    "num_tokens": "tokens measured in the step",
    "k3_pos_*": "k3 over the tokens at completion positions in that range (drift along the sequence)",
    "abs_logp_diff_max_pos_*": "the largest |Δ| at completion positions in that range",
}


def decade(abs_delta: torch.Tensor) -> torch.Tensor:
    """Decade index of |Δ| > 0 for the distribution: floor(log10 |Δ|) clamped to
    [DECADE_MIN, DECADE_MAX] (the first bin holds everything below 10^(DECADE_MIN+1))."""
    return torch.floor(torch.log10(abs_delta)).clamp(DECADE_MIN, DECADE_MAX).long()



def pow2_bucket(x: torch.Tensor) -> torch.Tensor:
    """Bucket of a position or length: 0 for [0, 8), then k for [2^(k+2), 2^(k+3)): fine where
    sequences start, coarser as they grow, and the same edges for every run."""
    return (torch.log2(x.double().clamp(min=1)).floor().long() - 2).clamp(min=0)


def pow2_bucket_range(k: int) -> tuple[int, int]:
    """[lo, hi) of bucket k of `pow2_bucket`."""
    return (0, 8) if k == 0 else (2 ** (k + 2), 2 ** (k + 3))


def mismatch_profile(rollout_logp: torch.Tensor, trainer_logp: torch.Tensor, positions: torch.Tensor,
                     sequence: torch.Tensor, weights: torch.Tensor | None = None) -> dict:
    """Sums over a step's tokens that the report draws (Δ's distribution, drift by position, by
    sequence length). rollout_logp, trainer_logp, positions: [N] for the N sampled tokens;
    sequence: [N] the index of each token's sequence (0..S−1, tokens of a sequence adjacent or
    not); weights: [N] how many tokens each one stands for (a weighted sample of a step's
    tokens; None: every token, weight 1). Each list is indexed by bucket; `combine_profiles`
    adds steps."""
    a, b = rollout_logp.double(), trainer_logp.double()
    w = torch.ones_like(a) if weights is None else weights.double()
    delta = b - a
    k3 = w * k3_terms(delta)
    nonzero = delta != 0
    dec = decade(delta.abs()[nonzero]) - DECADE_MIN
    n_dec = DECADE_MAX - DECADE_MIN + 1
    neg, pos = delta[nonzero] < 0, delta[nonzero] > 0
    hist = {"zero": float(w[~nonzero].sum()),
            "neg": torch.bincount(dec[neg], weights=w[nonzero][neg], minlength=n_dec).tolist(),
            "pos": torch.bincount(dec[pos], weights=w[nonzero][pos], minlength=n_dec).tolist()}
    # Per sequence: its length, Σ k3, max |Δ| and its log importance ratio Σ Δ (what a
    # sequence-level correction would weigh it by).
    n_seq = int(sequence.max()) + 1 if sequence.numel() else 0
    seq_len = torch.bincount(sequence, weights=w, minlength=n_seq)
    seq_k3 = torch.zeros(n_seq, dtype=torch.float64).index_add_(0, sequence, k3)
    seq_logratio = torch.zeros(n_seq, dtype=torch.float64).index_add_(0, sequence, w * delta)
    seq_max = torch.zeros(n_seq, dtype=torch.float64).scatter_reduce_(0, sequence, delta.abs(), "amax")
    present = seq_len > 0
    by_length = bucket_sums(pow2_bucket(seq_len[present]), {
        "sequences": torch.ones(int(present.sum()), dtype=torch.float64), "tokens": seq_len[present],
        "sum_k3": seq_k3[present], "sum_abs_logratio": seq_logratio[present].abs()}, seq_max[present])
    by_position = bucket_sums(pow2_bucket(positions), {
        "tokens": w, "sum_delta": w * delta, "sum_k3": k3}, delta.abs())
    return {"delta_hist": hist, "by_position": by_position, "by_length": by_length}


def bucket_sums(bucket: torch.Tensor, sums: dict[str, torch.Tensor], abs_delta: torch.Tensor) -> dict:
    """{name: per-bucket Σ of each tensor in `sums`} plus `max_abs`, the per-bucket max of abs_delta."""
    n = int(bucket.max()) + 1 if bucket.numel() else 0
    out = {name: torch.zeros(n, dtype=torch.float64).index_add_(0, bucket, v).tolist() for name, v in sums.items()}
    out["max_abs"] = torch.zeros(n, dtype=torch.float64).scatter_reduce_(0, bucket, abs_delta, "amax").tolist()
    return out


def combine_profiles(profiles: list[dict]) -> dict:
    """The profile of several steps' tokens together: sums add, maxima take the max."""
    def add(lists: list[list[float]], op) -> list[float]:
        n = max((len(x) for x in lists), default=0)
        out = [0.0] * n
        for x in lists:
            for i, v in enumerate(x):
                out[i] = op(out[i], v)
        return out

    def tables(key: str) -> dict:
        names = {name for p in profiles for name in p[key]}
        return {name: add([p[key].get(name, []) for p in profiles], max if name == "max_abs" else operator.add)
                for name in sorted(names)}

    hist = {"zero": sum(p["delta_hist"]["zero"] for p in profiles),
            "neg": add([p["delta_hist"]["neg"] for p in profiles], operator.add),
            "pos": add([p["delta_hist"]["pos"] for p in profiles], operator.add)}
    return {"delta_hist": hist, "by_position": tables("by_position"), "by_length": tables("by_length")}
