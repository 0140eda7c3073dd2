"""A step's per-token mismatch records on disk, for `lockstep mismatch` (rl.report).

Two files per step under runs/<name>/tokens/:

- `step_N.summary.json`: what the report's numbers need over *every* token of the step, computed
  at run time: the scalars logged to metrics.jsonl (`mismatch/*`, or `offpolicy/*` for a batch
  sampled ahead) and the profile sums of `rl.algorithms.mismatch.mismatch_profile`.
- `step_N.jsonl`: one line per kept token (sample, position, token, a_t, b_t, entropy), bounded by
  `logging.token_records_per_step`. Beyond the bound, half the records are the step's largest |Δ|
  and half a seeded uniform sample of the rest; each carries `weight`, the inverse of its chance
  of being kept (1 for the largest, n_rest / n_drawn for the drawn ones), so a weighted mean over
  the records is an unbiased estimate of the step's mean (Horvitz–Thompson). The largest ones
  (`CONTEXT_RECORDS`) also carry the token ids around them, for the report to show them in their
  text.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

import torch

from rl.algorithms.mismatch import mismatch_profile

CONTEXT_RECORDS = 128  # the largest-|Δ| records that carry their neighbours' ids
CONTEXT_TOKENS = 8  # neighbours on each side (the prompt's tail before a completion's first tokens)


@dataclass
class StepTokens:
    """Every sampled token of one step. Flat over the step's tokens, sample by sample."""

    step: int
    stale: bool  # sampled by weights one update older (rollout.max_staleness=1)
    metrics: dict[str, float]  # the step's mismatch scalars, as logged
    rollout_logprobs: list[float]  # a_t
    trainer_logprobs: list[float]  # b_t
    entropies: list[float] | None  # the trainer's entropy at each token; None when not computed
    sample: list[int]  # which sample of the batch
    position: list[int]  # position in its completion
    prompts: list[list[int]]  # each sample's prompt ids
    completions: list[list[int]]  # each sample's completion ids

    def profile(self) -> dict:
        return mismatch_profile(torch.tensor(self.rollout_logprobs, dtype=torch.float32),
                                torch.tensor(self.trainer_logprobs, dtype=torch.float32),
                                torch.tensor(self.position), torch.tensor(self.sample))

    def kept(self, limit: int, seed: int) -> tuple[list[int], list[float]]:
        """Which tokens to keep (at most `limit`) and each one's weight: all of them, weight 1;
        or the limit//2 largest |Δ| (weight 1) and a seeded uniform draw from the rest
        (weight n_rest / n_drawn)."""
        n = len(self.sample)
        if n <= limit:
            return list(range(n)), [1.0] * n
        delta = (torch.tensor(self.trainer_logprobs, dtype=torch.float64)
                 - torch.tensor(self.rollout_logprobs, dtype=torch.float64)).abs()
        order = torch.sort(delta, descending=True, stable=True).indices.tolist()
        top, rest = order[: limit // 2], order[limit // 2 :]
        drawn = random.Random(seed + self.step).sample(rest, limit - len(top))
        return top + drawn, [1.0] * len(top) + [len(rest) / len(drawn)] * len(drawn)

    def record(self, i: int, weight: float) -> dict:
        n = self.sample[i]
        return {"step": self.step, "sample": n, "position": self.position[i],
                "token": self.completions[n][self.position[i]], "rollout_logprob": self.rollout_logprobs[i],
                "trainer_logprob": self.trainer_logprobs[i],
                "entropy": None if self.entropies is None else self.entropies[i],
                "length": len(self.completions[n]), "weight": weight, "stale": self.stale}

    def context(self, i: int) -> dict:
        """The ids around token i: up to CONTEXT_TOKENS before it (reaching into the prompt
        when the token is among the completion's first; `before_prompt` of them are the
        prompt's) and after it."""
        n, j = self.sample[i], self.position[i]
        completion = self.completions[n]
        before = completion[max(0, j - CONTEXT_TOKENS) : j]
        from_prompt = CONTEXT_TOKENS - len(before)
        prompt_tail = self.prompts[n][max(0, len(self.prompts[n]) - from_prompt) :] if from_prompt else []
        return {"before": prompt_tail + before, "before_prompt": len(prompt_tail),
                "after": completion[j + 1 : j + 1 + CONTEXT_TOKENS]}

    def write(self, token_dir: Path, limit: int, seed: int) -> None:
        """step_N.jsonl (the kept records) and step_N.summary.json (every token's sums)."""
        index, weights = self.kept(limit, seed)
        abs_delta = [abs(self.trainer_logprobs[i] - self.rollout_logprobs[i]) for i in index]
        with_context = set(sorted(range(len(index)), key=lambda k: -abs_delta[k])[:CONTEXT_RECORDS])
        with (token_dir / f"step_{self.step:06d}.jsonl").open("w") as f:
            for k, (i, w) in enumerate(zip(index, weights)):
                r = self.record(i, w) | (self.context(i) if k in with_context else {})
                f.write(json.dumps(r) + "\n")
        summary = {"step": self.step, "stale": self.stale, "num_tokens": len(self.sample),
                   "num_records": len(index), "metrics": self.metrics, "profile": self.profile()}
        (token_dir / f"step_{self.step:06d}.summary.json").write_text(json.dumps(summary))
