"""What crosses Ray into and out of a trainer rank: the samples it trains on and the per-token
log-probs and update statistics it returns.

Token lists stay ragged (one list per sample): nothing is padded until the rank packs its
micro-batches. Every field is read by the loss, the log-prob passes or the driver's metrics.
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass, fields


@dataclass(frozen=True)
class TrainSample:
    prompt_ids: list[int]
    completion_ids: list[int]
    rollout_logprobs: list[float]  # a_t: the engine's log-prob of each sampled token
    advantage: float = 0.0
    # 1.0 for samples in the loss; 0.0 for samples that only keep ranks' batches equal.
    weight: float = 1.0
    # Behaviour log-probs for the ratio; None (on every sample of a batch): the update's own
    # forward, detached (`TrainerRank.train_step`).
    old_logprobs: list[float] | None = None
    # The frozen reference model's log-probs, for the KL term (`LossConfig.kl_coef > 0`).
    ref_logprobs: list[float] | None = None


@dataclass(frozen=True)
class TrainBatch:
    """One rank's share of a mini-batch."""

    samples: list[TrainSample]
    # The loss normaliser of the whole mini-batch over all ranks (`losses.AGGREGATION_NORMALISERS`).
    normaliser: float


@dataclass(frozen=True)
class TokenLogprobs:
    """A sample's completion tokens under the trainer: log-probs b_t and entropies (fp32)."""

    logprobs: list[float]
    entropies: list[float]  # empty when not computed


@dataclass
class UpdateStats:
    """Sums over one rank's tokens of one optimiser step (the driver divides by `tokens`), and
    extremes (`*_min`, `*_max`: combined by min and max)."""

    loss: float = 0.0  # this rank's share of the mini-batch loss
    pg_loss: float = 0.0
    kl: float = 0.0
    entropy: float = 0.0
    clip_frac: float = 0.0  # tokens whose gradient the PPO clip removed
    correction_weight: float = 0.0  # Σ w_t of the train/infer correction
    correction_masked: float = 0.0  # tokens the correction dropped (w_t = 0)
    correction_below: float = 0.0  # tokens with ρ_t = exp(b_t − a_t) < correction_low
    correction_above: float = 0.0  # tokens with ρ_t > correction_high
    tokens: float = 0.0
    forward_tokens: float = 0.0  # positions the forwards ran, samples' tokens and padding
    padded_tokens: float = 0.0  # of which padding (or a rank's empty packs)
    grad_norm: float = 0.0
    lr: float = 0.0
    correction_weight_max: float = -math.inf
    correction_ratio_min: float = math.inf
    correction_ratio_max: float = -math.inf
    ppo_ratio_min: float = math.inf  # exp(logp − old_logp) of the policy loss
    ppo_ratio_max: float = -math.inf
    # 1.0 when the loss or the gradients were NaN/Inf and the optimiser step was skipped (the
    # weights and the optimiser state are those before the step).
    skipped: float = 0.0
    # strict mode on CUDA: this rank's calls so far that ran a PyTorch formulation instead of a
    # Triton kernel (kernels.batch_invariant.cuda.FALLBACKS; combined by max)
    strict_cuda_fallbacks_max: float = 0.0

    def __add__(self, other: UpdateStats) -> UpdateStats:
        def combine(name: str):
            op = max if name.endswith("_max") else min if name.endswith("_min") else operator.add
            return op(getattr(self, name), getattr(other, name))

        return UpdateStats(**{f.name: combine(f.name) for f in fields(self)})


@dataclass(frozen=True)
class SFTStepStats:
    """One rank's share of one SFT step: target-token NLL summed and counted (the driver's loss is
    Σ nll / Σ target_tokens over ranks), every token it ran (prompts too, for the throughput),
    and the optimiser's global grad norm and learning rate (the same on every rank)."""

    nll: float
    target_tokens: int
    tokens: int
    grad_norm: float
    lr: float


@dataclass(frozen=True)
class UpdateResult:
    stats: UpdateStats
    # Every sample's log-probs from the training forward: with one optimiser step per RL step,
    # those of the weights that sampled the batch (b_t) at no extra cost.
    logprobs: list[TokenLogprobs]
