"""What a step measures beyond its phases' own numbers: the rewards of every sample drawn, and
DESIGN §5's mismatch of the rollout's a_t against the trainer's b_t with the per-token records
the mismatch report reads."""

from __future__ import annotations

import math

import torch

from rl.algorithms.mismatch import mismatch_metrics
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
