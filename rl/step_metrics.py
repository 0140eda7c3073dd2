"""What a step measures beyond its phases' own numbers: the rewards of every sample drawn, and
DESIGN §5's mismatch of the rollout's a_t against the trainer's b_t with the per-token records
the mismatch report reads."""

from __future__ import annotations

import math

import torch

from rl.algorithms.mismatch import k3_terms, mismatch_metrics
from rl.batch import Sample
from rl.token_records import StepTokens
from trainer.batch import TokenLogprobs


def reward_metrics(samples: list[Sample], pool_stats: dict[str, int]) -> dict[str, float]:
    """Rewards of the graded samples (a timeout's or crash's 0 is no verdict; NaN when nothing
    was graded), how many were not graded, lengths, reasons and the pool's counters."""
    rewards = [s.reward for s in samples if s.reward_graded] or [math.nan]
    lengths = [len(s.completion_ids) for s in samples]
    out = {
        "reward/mean": sum(rewards) / len(rewards),
        "reward/max": max(rewards),
        "reward/min": min(rewards),
        "reward/ungraded": float(sum(not s.reward_graded for s in samples)),
        "response/length_mean": sum(lengths) / len(lengths),
        "response/truncated_frac": sum(s.truncated for s in samples) / len(samples),
    }
    for reason in {s.reward_reason for s in samples}:
        out[f"reward/reason_{reason}"] = float(sum(s.reward_reason == reason for s in samples))
    for k, v in pool_stats.items():
        out[f"reward_pool/{k}"] = float(v)
    return out


def mismatch(samples: list[Sample], b_t: list[TokenLogprobs], step: int,
             stale: bool) -> tuple[dict[str, float], StepTokens]:
    """The metrics of a_t (rollout) vs b_t (trainer), and every token's values for the records
    the report reads (`StepTokens.write`). `stale`: the batch was sampled ahead, by weights one
    update older than the trainer's, so the numbers include that update's drift: logged as
    offpolicy/* (the sync probe still measures the engines' mismatch on equal weights every
    step)."""
    a = torch.tensor([x for s in samples for x in s.rollout_logprobs], dtype=torch.float32)
    b = torch.tensor([x for row in b_t for x in row.logprobs], dtype=torch.float32)
    pos = torch.tensor([j for s in samples for j in range(len(s.completion_ids))])
    out = mismatch_metrics(a, b, torch.ones_like(a, dtype=torch.bool), pos)
    if stale:
        out = {k.replace("mismatch/", "offpolicy/", 1): v for k, v in out.items()}
    entropies = [x for row in b_t for x in row.entropies]
    tokens = StepTokens(
        step=step, stale=stale, metrics=dict(out),
        rollout_logprobs=[x for s in samples for x in s.rollout_logprobs],
        trainer_logprobs=[x for row in b_t for x in row.logprobs],
        entropies=entropies if len(entropies) == len(a) else None,
        sample=[n for n, s in enumerate(samples) for _ in s.completion_ids], position=pos.tolist(),
        prompts=[s.prompt_ids for s in samples], completions=[s.completion_ids for s in samples])
    if tokens.entropies:
        out["policy/entropy"] = sum(tokens.entropies) / len(tokens.entropies)
    return out, tokens


def versioned_mismatch(samples: list[Sample], b_t: list[TokenLogprobs], step: int,
                       trainer_version: int) -> tuple[dict[str, float], StepTokens]:
    """The mismatch metrics of a batch whose tokens carry the version that sampled them
    (asynchronous rollout), against the trainer's weights `trainer_version` (b_t):

    - `mismatch/*` (and the token records) over the samples whose every token is of the trainer's
      version: equal weights. A sample that took a weight update in flight is not, even in its
      newer tokens: their context's KV cache and linear-attention state came from older weights.
    - `offpolicy/*` over the other samples (a_t vs b_t: the engine's kernels and the updates'
      drift together), and by lag (trainer_version − token version): `lag_mean`, `lag_max`,
      `tokens_lag_<j>` (share of the batch's tokens), `k3_lag_<j>`; `samples_current_frac`.
    """
    current = [all(v == trainer_version for v, _ in s.completion.versions) for s in samples]
    on = [i for i, c in enumerate(current) if c]
    off = [i for i, c in enumerate(current) if not c]
    out: dict[str, float] = {}
    records = None
    if off:  # offpolicy/*: mismatch's definitions on the lagged samples, renamed (stale=True)
        out, records = mismatch([samples[i] for i in off], [b_t[i] for i in off], step, stale=True)
    if on:
        on_metrics, records = mismatch([samples[i] for i in on], [b_t[i] for i in on], step, stale=False)
        out |= on_metrics
    out |= lag_metrics(samples, b_t, trainer_version)
    out["offpolicy/samples_current_frac"] = len(on) / len(samples)
    return out, records


def lag_metrics(samples: list[Sample], b_t: list[TokenLogprobs], trainer_version: int) -> dict[str, float]:
    """Per-token lag = trainer_version − the token's version: its mean, max, the share of tokens
    at each lag and the k3 of a_t vs b_t at each lag ≥ 1 (lag 0 is mismatch/*'s measure, or
    an equal-weights token after a stale context)."""
    lags = torch.tensor([trainer_version - v for s in samples for v in s.completion.token_versions()])
    a = torch.tensor([x for s in samples for x in s.rollout_logprobs], dtype=torch.float64)
    b = torch.tensor([x for row in b_t for x in row.logprobs], dtype=torch.float64)
    k3 = k3_terms(b - a)
    out = {"offpolicy/lag_mean": lags.double().mean().item(), "offpolicy/lag_max": float(lags.max())}
    for lag in range(int(lags.max()) + 1):
        at = lags == lag
        out[f"offpolicy/tokens_lag_{lag}"] = at.double().mean().item()
        if lag and at.any():
            out[f"offpolicy/k3_lag_{lag}"] = k3[at].mean().item()
    return out
