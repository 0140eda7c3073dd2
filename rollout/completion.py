"""What an engine returns for one sampled completion (`RolloutWorker.generate`)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Completion:
    token_ids: list[int]
    logprobs: list[float]  # a_t: the engine's log-prob of each sampled token (temperature applied)
    finish_reason: str  # "stop" or "length"
    text: str  # decoded once, special tokens skipped: what the verifier reads
    # The policy version that sampled each token, run-length encoded: ((version, count), ...) in
    # token order, counts summing to len(token_ids). One pair unless a weight update reached the
    # engine while the completion was in flight (asynchronous rollout). Empty: not recorded.
    versions: tuple[tuple[int, int], ...] = ()

    @property
    def truncated(self) -> bool:
        """Cut at max_tokens rather than ended by the model."""
        return self.finish_reason == "length"

    def token_versions(self) -> list[int]:
        """The version of every token (the run-length pairs expanded)."""
        return [v for v, count in self.versions for _ in range(count)]

    @property
    def oldest_version(self) -> int:
        """The version of the first token: the oldest weights this completion depends on."""
        return self.versions[0][0]
