"""The trainer side of a step: which samples train and with what advantage, then the policy
update over `trainer.num_minibatches` mini-batches (one optimiser step each).

Dropped groups and masked samples (ungraded rewards, `algorithm.ungraded`) stay in the batch
with weight 0: every rank runs the same micro-batches, and
the update's forward still yields their log-probs for the mismatch metrics.
"""

from __future__ import annotations

import logging

import torch

from rl.algorithms import advantages as adv
from rl.batch import Sample
from rl.config import AlgorithmConfig, RunConfig
from rl.groups import TrainerGroup
from trainer.batch import TokenLogprobs, UpdateStats
from trainer.losses import AGGREGATION_NORMALISERS

log = logging.getLogger("lockstep.driver")


def training_reward(s: Sample, algo: AlgorithmConfig) -> float:
    """The reward the advantages see: the verifier's, less the overlong penalty if it applies."""
    return s.reward - algo.overlong_penalty if s.truncated and algo.overlong == "penalty" else s.reward


def counted(samples: list[Sample], algo: AlgorithmConfig, group_size: int) -> torch.Tensor:
    """The samples whose rewards count (`algorithm.ungraded`): ungraded ones (reward timeout or
    crash) out, or their whole group out. [len(samples)] bool"""
    graded = torch.tensor([s.reward_graded for s in samples], dtype=torch.bool)
    return adv.graded_samples(graded, group_size, algo.ungraded)


def informative(samples: list[Sample], algo: AlgorithmConfig, group_size: int) -> list[bool]:
    """Per group: whether its counted samples' training rewards differ (dynamic sampling)."""
    rewards = torch.tensor([training_reward(s, algo) for s in samples])
    return adv.informative_groups(rewards, group_size, counted(samples, algo, group_size)).tolist()


def select_and_advantage(samples: list[Sample], cfg: RunConfig, step: int, metrics: dict[str, float]) -> bool:
    """Overlong handling, ungraded samples, group advantages, dynamic sampling: sets each
    sample's reward, advantage and weight. Returns False when no sample is left to train on
    (the update is skipped)."""
    algo, G = cfg.algorithm, cfg.rollout.group_size
    for s in samples:
        s.reward = training_reward(s, algo)
        if s.truncated and algo.overlong == "filter":
            s.weight = 0.0
    rewards = torch.tensor([s.reward for s in samples])
    # The verifier's timeouts and crashes are no verdict: out of the loss and of the baseline,
    # not trained on as wrong answers (a group left with < 2 counted samples has no baseline).
    valid = counted(samples, algo, G)
    in_loss = valid & adv.baseline_groups(valid, G).repeat_interleave(G)
    ungraded = torch.tensor([not s.reward_graded for s in samples])
    emptied = (ungraded.view(-1, G).any(dim=1) & ~in_loss.view(-1, G).any(dim=1))
    metrics["train/ungraded_samples"] = float(ungraded.sum())
    metrics["train/ungraded_masked"] = float((~in_loss).sum())  # samples out of the loss for it
    metrics["train/ungraded_dropped_groups"] = float(emptied.sum())  # groups left without any
    for s, a in zip(samples, adv.grpo_advantages(rewards, G, algo.std_normalize, valid=valid).tolist()):
        s.advantage = a
    informative = adv.informative_groups(rewards, G, valid)
    keep = informative if algo.dynamic_sampling else torch.ones(len(samples) // G, dtype=torch.bool)
    keep = keep.repeat_interleave(G) & in_loss
    metrics["advantage/informative_group_frac"] = informative.float().mean().item()
    chosen = int(keep.sum())
    metrics["train/samples"] = float(chosen)
    if not chosen:
        log.warning("step %d: no informative group%s; skipping the update", step,
                    " (ungraded rewards left none)" if ungraded.any() else "")
        metrics["train/skipped"] = 1.0
        return False
    for s, k in zip(samples, keep.tolist()):
        if not k:
            s.weight = 0.0
    metrics["train/padding_samples"] = float(len(samples) - chosen)  # zero-weight samples in the batch
    return True


def old_logprobs(samples: list[Sample], cfg: RunConfig,
                 b_t: list[TokenLogprobs] | None) -> list[list[float]] | None:
    """The behaviour log-probs of the ratio: the rollout's a_t, or the trainer's b_t (None: the
    update's own forward computes them)."""
    if cfg.algorithm.old_logprobs == "rollout":
        return [s.rollout_logprobs for s in samples]
    return None if b_t is None else [row.logprobs for row in b_t]


def update_policy(trainers: TrainerGroup, cfg: RunConfig, samples: list[Sample],
                  old: list[list[float]] | None) -> tuple[dict[str, float], list[TokenLogprobs]]:
    """The policy update; returns its metrics and every sample's log-probs and entropies from the
    training forward (pre-update weights when this is one optimiser step)."""
    minibatches = cfg.trainer.num_minibatches
    ref = None
    if cfg.algorithm.kl_coef > 0:
        ref = trainers.reference_logprobs([s.for_trainer() for s in samples])
    batch = [s.for_trainer(None if old is None else old[i], None if ref is None else ref[i])
             for i, s in enumerate(samples)]
    normaliser_fn = AGGREGATION_NORMALISERS[cfg.algorithm.loss_aggregation]
    totals, logps = UpdateStats(), []
    mb = len(samples) // minibatches
    for m in range(minibatches):
        part = batch[m * mb : (m + 1) * mb]
        lengths = [len(s.completion_ids) if s.weight > 0 else 0 for s in part]
        for result in trainers.train_step(part, normaliser_fn(lengths, cfg.rollout.max_new_tokens)):
            totals += result.stats
            logps.extend(result.logprobs)
    tokens = max(totals.tokens, 1.0)
    n_results = len(trainers.actors) * minibatches
    return {
        "train/loss": totals.loss / minibatches,
        "train/pg_loss_per_token": totals.pg_loss / tokens,
        "train/kl_per_token": totals.kl / tokens,
        "train/entropy_per_token": totals.entropy / tokens,
        "train/clip_frac": totals.clip_frac / tokens,
        "train/correction_weight_mean": totals.correction_weight / tokens,
        "train/correction_weight_max": totals.correction_weight_max,
        "train/correction_masked_frac": totals.correction_masked / tokens,
        "train/correction_ratio_below_frac": totals.correction_below / tokens,
        "train/correction_ratio_above_frac": totals.correction_above / tokens,
        "train/correction_ratio_min": totals.correction_ratio_min,
        "train/correction_ratio_max": totals.correction_ratio_max,
        "train/ppo_ratio_min": totals.ppo_ratio_min,
        "train/ppo_ratio_max": totals.ppo_ratio_max,
        "train/grad_norm": totals.grad_norm / n_results,
        "train/lr": totals.lr / n_results,
        # Mini-batches whose loss or gradients were NaN/Inf: their optimiser step was skipped.
        "train/nonfinite_skipped": totals.skipped / len(trainers.actors),
        "train/minibatches": float(minibatches),
        "trainer/padding_frac": totals.padded_tokens / max(totals.forward_tokens, 1.0),
        # strict mode on a GPU: a rank's strict op calls that ran a PyTorch formulation (0 expected)
        **({"strict/cuda_fallback_calls": totals.strict_cuda_fallbacks_max} if cfg.mode == "strict" else {}),
    }, logps
