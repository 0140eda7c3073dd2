"""What an engine returns for one sampled completion (`RolloutWorker.generate`)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Completion:
    token_ids: list[int]
    logprobs: list[float]  # a_t: the engine's log-prob of each sampled token (temperature applied)
    finish_reason: str  # "stop" or "length"
    text: str  # decoded once, special tokens skipped: what the verifier reads

    @property
    def truncated(self) -> bool:
        """Cut at max_tokens rather than ended by the model."""
        return self.finish_reason == "length"
