"""Policy-gradient losses, KL estimators, train/infer corrections and loss aggregation.

All tensors are [B, T] over completion tokens with a 0/1 `mask`; each function returns
per-token values and the trainer sums them with `aggregate`, over a normaliser the driver takes
from `AGGREGATION_NORMALISERS`. Variants are looked up by name in small tables (the recipe's
`algorithm` names them, `trainer.config.LossConfig` carries them), never chosen by if-chains.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def clipped_policy_loss(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, clip_low: float,
                        clip_high: float) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO/GRPO surrogate with asymmetric clipping (DAPO's clip-higher):
    ratio ρ = exp(logp − old_logp); loss = −min(ρ A, clip(ρ, 1−ε_low, 1+ε_high) A).

    logp, old_logp: [B, T]; advantages: [B, T] (a sample's scalar broadcast) →
    (loss [B, T], clipped [B, T] bool: tokens whose gradient the clip removed)."""
    ratio = torch.exp(logp - old_logp)
    unclipped = ratio * advantages
    clipped = ratio.clamp(1 - clip_low, 1 + clip_high) * advantages
    loss = -torch.minimum(unclipped, clipped)
    return loss, clipped < unclipped


# KL(π‖π_ref) per token from samples of π, with log-ratio x = logp − ref_logp (Schulman's k1/k2/k3).
def kl_k1(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    return logp - ref_logp


def kl_k2(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    return 0.5 * (logp - ref_logp) ** 2


def kl_k3(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    # exp(−x) − 1 + x ≥ 0: unbiased, low variance.
    x = ref_logp - logp
    return torch.exp(x) - 1 - x


KL_ESTIMATORS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "k1": kl_k1, "k2": kl_k2, "k3": kl_k3}


# Train/infer corrections. The samples came from the rollout engine's distribution μ (log-probs
# a_t) while the loss assumes π_old (trainer log-probs b_t); each correction returns a per-token
# weight w_t (no gradient) that multiplies the token's loss, with ρ_t = exp(b_t − a_t).
def correction_none(old_logp: torch.Tensor, rollout_logp: torch.Tensor, low: float,
                    high: float) -> torch.Tensor:
    return torch.ones_like(old_logp)


def correction_tis(old_logp: torch.Tensor, rollout_logp: torch.Tensor, low: float,
                   high: float) -> torch.Tensor:
    """Truncated importance sampling: w = min(ρ, high)."""
    return torch.exp(old_logp - rollout_logp).clamp(max=high)


def correction_masked_is(old_logp: torch.Tensor, rollout_logp: torch.Tensor, low: float,
                         high: float) -> torch.Tensor:
    """Masked IS: w = ρ where low ≤ ρ ≤ high, else 0 (the token is dropped)."""
    rho = torch.exp(old_logp - rollout_logp)
    return torch.where((rho >= low) & (rho <= high), rho, torch.zeros_like(rho))


def correction_icepop(old_logp: torch.Tensor, rollout_logp: torch.Tensor, low: float,
                      high: float) -> torch.Tensor:
    """IcePop: two-sided mask without reweighting: w = 1 where low ≤ ρ ≤ high, else 0."""
    rho = torch.exp(old_logp - rollout_logp)
    return ((rho >= low) & (rho <= high)).to(old_logp.dtype)


CORRECTIONS = {"none": correction_none, "tis": correction_tis, "masked_is": correction_masked_is,
               "icepop": correction_icepop}


# Aggregation: per-token values [B, T] → the sum this rank contributes, divided by a
# normaliser computed once over the whole mini-batch on all ranks (from the samples' completion
# lengths), so the result does not depend on how the batch is split into micro-batches and ranks.
def token_mean_normaliser(lengths: list[int], max_new_tokens: int) -> float:
    """Σ of valid tokens: every token weighs the same (DAPO)."""
    return float(sum(lengths))


def sequence_mean_normaliser(lengths: list[int], max_new_tokens: int) -> float:
    """Each sequence weighs the same; tokens weigh 1/len within it (GRPO's original)."""
    return float(sum(1 for n in lengths if n > 0))


def token_sum_norm_normaliser(lengths: list[int], max_new_tokens: int) -> float:
    """Dr.GRPO: a constant, sequences × max_new_tokens, which removes the length bias."""
    return float(len(lengths) * max_new_tokens)


def aggregate(values: torch.Tensor, mask: torch.Tensor, kind: str, normaliser: float) -> torch.Tensor:
    """Σ of per-token `values` weighted per `kind`, divided by the mini-batch's normaliser."""
    mask = mask.to(values.dtype)
    if kind == "sequence_mean":
        per_seq = (values * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)
        return per_seq.sum() / max(normaliser, 1.0)
    return (values * mask).sum() / max(normaliser, 1.0)


AGGREGATION_NORMALISERS = {
    "token_mean": token_mean_normaliser,
    "sequence_mean": sequence_mean_normaliser,
    "token_sum_norm": token_sum_norm_normaliser,
}
