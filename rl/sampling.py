"""The rollout side of a step: the data order, the prompts each round draws, the engines'
completions as the driver's samples, and sampling ahead (`rollout.max_staleness=1`: the next
step's batch is sampled while the trainer updates on this one).
"""

from __future__ import annotations

from dataclasses import dataclass

from rl.batch import Sample, StepBatch
from rl.config import RunConfig
from rl.data import DataOrder, Example, PromptRenderer
from rl.groups import Pending, RolloutGroup
from rollout.completion import Completion


@dataclass
class Round:
    """One rollout round in flight: prompts_per_step prompts, group_size completions each."""

    prompt_indices: list[int]
    prompts: list[list[int]]
    completions: Pending[list[list[Completion]]]


class Sampler:
    def __init__(self, cfg: RunConfig, train_set: list[Example], renderer: PromptRenderer,
                 rollout: RolloutGroup, cursor: int):
        self.cfg = cfg.rollout
        self.order = DataOrder(len(train_set), cfg.seed, cfg.data.shuffle)
        self.train_set, self.renderer, self.rollout = train_set, renderer, rollout
        self.cursor = cursor  # prompts drawn so far in the data order (resumable)
        self.ahead: Round | None = None  # the next step's batch, sampled during this step's update

    def next_batch(self, version: int, step: int) -> StepBatch:
        """The batch sampled ahead during the previous step's update, else one sampled now
        (`version`, `step`: what rl.async_rollout's sampler needs; one round needs neither)."""
        stale = self.ahead is not None
        launched, self.ahead = self.ahead or self.launch(), None
        idx, samples = self.collect(launched)
        return StepBatch(idx, samples, samples, stale)

    def sample_ahead(self) -> None:
        """Starts the next step's batch. Queued behind the calls the engines already have, so it
        samples with the weights that sampled this step; the weight sync waits for it."""
        self.ahead = self.launch()

    def consumed_cursor(self) -> int:
        """The cursor less the prompts of a batch still being sampled ahead: what a checkpoint
        records, so a resumed run samples those prompts again."""
        return self.cursor - (len(self.ahead.prompt_indices) if self.ahead else 0)

    def in_flight(self) -> list[int]:
        """Prompts a checkpoint must list as in flight: none, the cursor leaves out the batch ahead."""
        return []

    def rewind(self, cursor: int, in_flight: list[int] | tuple = ()) -> None:
        """Back to `cursor` in the data order, any batch in flight dropped (its engines or the
        weights that sampled it are gone): the next batch starts with the prompt at `cursor`.
        (`in_flight` is always empty here: `in_flight`.)"""
        self.cursor, self.ahead = cursor, None

    def launch(self) -> Round:
        """Draws the next rollout.prompts_per_step prompts and starts sampling them."""
        idx = self.order.indices(self.cursor, self.cfg.prompts_per_step)
        self.cursor += len(idx)
        prompts = [self.renderer.ids(self.train_set[i]) for i in idx]
        c = self.cfg
        return Round(idx, prompts, self.rollout.launch(prompts, c.group_size, c.max_new_tokens, c.temperature,
                                                       c.top_p, c.top_k, c.ignore_eos))

    def collect(self, launched: Round) -> tuple[list[int], list[Sample]]:
        """Waits for a round; returns its prompt indices and its samples, group-major."""
        groups = launched.completions.result()
        samples = [Sample(prompt, c, self.train_set[i].answer)
                   for i, prompt, group in zip(launched.prompt_indices, launched.prompts, groups)
                   for c in group]
        return launched.prompt_indices, samples
