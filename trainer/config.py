"""What a trainer rank is built with: the recipe's `trainer` section, the loss options it
applies (from the recipe's `algorithm` section), and the set-up of one engine.

These are frozen dataclasses that cross Ray as they are; `rl.config` composes them into the
recipe's tree (`TrainerConfig` is the `trainer` section verbatim) and validates them there.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


def _default_betas() -> list[float]:
    return [0.9, 0.999]


@dataclass(frozen=True)
class TrainerConfig:
    """The recipe's `trainer` section: DeepSpeed ranks and their optimiser."""

    num_ranks: int = 1
    """Trainer ranks (data parallel, one DeepSpeed ZeRO engine each; one device each on GPUs)."""
    zero_stage: Literal[0, 1, 2, 3] = 1
    """DeepSpeed ZeRO stage: what the ranks shard (1: optimiser state, 2: + gradients, 3: + weights)."""
    lr: float = 1e-5
    """AdamW learning rate of the RL stage."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    betas: list[float] = field(default_factory=_default_betas)
    """AdamW betas (two numbers in [0, 1))."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this."""
    warmup_steps: int = 0
    """Optimiser steps of linear learning-rate warm-up."""
    micro_batch_size: int = 16
    """Sequences per forward/backward on one rank (gradients accumulate up to the mini-batch)."""
    num_minibatches: int = 1
    """Optimiser steps per RL step: the step's samples are split into this many mini-batches."""
    pack_tokens: int = 0
    """Packed micro-batches: 0 pads each micro-batch of `micro_batch_size` sequences to its longest;
    N > 0 concatenates sequences into micro-batches of at most N tokens with no padding (a longer
    sequence runs alone), each sequence computed as it would be alone (`micro_batch_size` then
    only sets the loss scale's accumulation count). Not with `mode: strict` (refused)."""
    gradient_checkpointing: bool = False
    """Activation checkpointing per decoder layer: each layer's activations are recomputed in the
    backward pass instead of kept (less memory, one more forward; same gradients)."""
    sync_bucket_mib: float = 64.0
    """Size of the buckets the weight sync sends to the engines, in MiB."""
    cpu_threads: int = 0
    """torch threads of each rank on CPU (0: torch's default)."""


@dataclass(frozen=True)
class LossConfig:
    """The policy loss a rank applies (`trainer.losses`); the recipe's `algorithm` section
    documents each field (`rl.config.AlgorithmConfig.loss()` builds this)."""

    loss_aggregation: Literal["token_mean", "sequence_mean", "token_sum_norm"]
    clip_low: float
    clip_high: float
    kl_coef: float
    kl_estimator: Literal["k1", "k2", "k3"]
    entropy_coef: float
    correction: Literal["none", "tis", "masked_is", "icepop"]
    correction_low: float
    correction_high: float


@dataclass(frozen=True)
class TrainerSetup:
    """One DeepSpeed engine's set-up, the same for every rank of a group."""

    model_path: str
    dtype: Literal["float32", "bfloat16", "float16"]
    config: TrainerConfig
    lr: float
    # Micro-batches per optimiser step on each rank (DeepSpeed's gradient accumulation steps).
    micro_batches_per_step: int
    seed: int
    # The rollout's sampling temperature: log-probs of sampled tokens are taken under the
    # distribution they were sampled from (logits / temperature).
    temperature: float = 1.0
    # The RL loss; None for a supervised engine (the SFT warm start). A KL term
    # (`loss.kl_coef > 0`) makes the rank hold a frozen reference copy of the initial model.
    loss: LossConfig | None = None
    # `kernels.fp8.swap_linears_to_fp8`'s keyword options (the recipe's model.fp8), or None.
    fp8: dict[str, bool | int] | None = None
    # Strict mode (the recipe's `mode: strict`): the model runs kernels.batch_invariant, so its
    # log-probs are the rollout engine's bits (Ring-linear models only).
    strict: bool = False

    @property
    def use_reference(self) -> bool:
        return self.loss is not None and self.loss.kl_coef > 0
