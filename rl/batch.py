"""The one data contract that crosses Ray: a step's samples, from rollout to trainer.

Token lists stay ragged (one list per sample) so nothing is padded until the trainer packs
micro-batches. Every field is needed by the loss, the mismatch metrics or the report.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Sample:
    prompt_index: int  # index of the prompt in the step (samples of one group share it)
    prompt_ids: list[int]
    completion_ids: list[int]
    rollout_logprobs: list[float]  # a_t: the engine's log-prob of each sampled token
    finish_reason: str  # "stop" or "length"
    text: str = ""
    reward: float = 0.0
    reward_reason: str = ""
    advantage: float = 0.0
    # 1.0 for samples in the loss; 0.0 for padding samples that keep ranks' batches equal.
    weight: float = 1.0

    @property
    def truncated(self) -> bool:
        return self.finish_reason == "length"


@dataclass
class RolloutBatch:
    step: int
    weights_version: int  # trainer step whose weights sampled this batch
    samples: list[Sample] = field(default_factory=list)
