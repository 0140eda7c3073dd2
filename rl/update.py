"""The trainer side of a step: which samples train and with what advantage, then the policy
update over `trainer.num_minibatches` mini-batches (one optimiser step each).

Dropped groups stay in the batch with weight 0: every rank runs the same micro-batches, and
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


def select_and_advantage(samples: list[Sample], cfg: RunConfig, step: int, metrics: dict[str, float]) -> bool:
    """Overlong handling, group advantages, dynamic sampling: sets each sample's reward,
    advantage and weight. Returns False when no group is informative (the update is skipped)."""
    algo, G = cfg.algorithm, cfg.rollout.group_size
    for s in samples:
        s.reward = training_reward(s, algo)
        if s.truncated and algo.overlong == "filter":
            s.weight = 0.0
    rewards = torch.tensor([s.reward for s in samples])
    for s, a in zip(samples, adv.grpo_advantages(rewards, G, algo.std_normalize).tolist()):
        s.advantage = a
    informative = adv.informative_groups(rewards, G)
    keep = informative if algo.dynamic_sampling else torch.ones(len(samples) // G, dtype=torch.bool)
    metrics["advantage/informative_group_frac"] = informative.float().mean().item()
    chosen = sum(int(keep[i // G]) for i in range(len(samples)))
    metrics["train/samples"] = float(chosen)
    if not chosen:
        log.warning("step %d: no informative group; skipping the update", step)
        metrics["train/skipped"] = 1.0
        return False
    for i, s in enumerate(samples):
        if not keep[i // G]:
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
        "train/grad_norm": totals.grad_norm / n_results,
        "train/lr": totals.lr / n_results,
    }, logps
