"""The driver's record of a step's samples: what an engine sampled, the verifier's score, the
advantage and loss weight; `Sample.for_trainer` gives what the trainer receives
(`trainer.batch.TrainSample`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from rollout.completion import Completion
from trainer.batch import TrainSample


@dataclass
class Sample:
    prompt_ids: list[int]
    completion: Completion
    answer: str  # the reference answer the verifier checks the completion against
    reward: float = 0.0
    reward_reason: str = ""  # the verifier's reason: correct, wrong, timeout, …
    reward_graded: bool = True  # False: the verifier reached no verdict (timeout, crash)
    advantage: float = 0.0
    # 1.0 for samples in the loss; 0.0 for samples that only keep ranks' batches equal.
    weight: float = 1.0

    @property
    def completion_ids(self) -> list[int]:
        return self.completion.token_ids

    @property
    def rollout_logprobs(self) -> list[float]:
        return self.completion.logprobs  # a_t

    @property
    def truncated(self) -> bool:
        return self.completion.truncated

    def for_trainer(self, old_logprobs: list[float] | None = None,
                    ref_logprobs: list[float] | None = None) -> TrainSample:
        return TrainSample(self.prompt_ids, self.completion_ids, self.rollout_logprobs, self.advantage,
                           self.weight, old_logprobs, ref_logprobs)


@dataclass
class StepBatch:
    """A step's samples, group-major (`rollout.group_size` consecutive samples per prompt)."""

    prompt_indices: list[int]  # every prompt drawn this step, in the data order
    drawn: list[Sample]  # every sample drawn and scored (the reward metrics)
    samples: list[Sample]  # the batch that trains: `drawn`, or the groups refill rounds chose
    stale: bool  # sampled ahead, by weights one update older than the trainer's
    # Asynchronous rollout (rl.async_rollout): the trainer's weights version, against which each
    # token's own version (`Completion.versions`) gives its lag; None: one version per batch.
    version: int | None = None
    metrics: dict[str, float | str] = field(default_factory=dict)  # the sampler's counts for this step
