"""Asynchronous rollout: the engines keep sampling while the trainer updates, new weights reach
them between decode steps (rollout/engine_loop.py), and every token records the policy version
that sampled it (`Completion.versions`). Used when `rollout.asynchronous` (`max_staleness ≥ 2` or
`rollout.partial`); `max_staleness` 0 and 1 keep `rl.sampling.Sampler`.

The unit is the group (GRPO's advantages need all of a prompt's samples). The pool holds the
groups in flight in launch order, P = prompts_per_step, k = max_staleness:

- **In flight.** Before a step waits, the pool is filled to P × (k + 1) groups (fewer near the
  run's end: no more than the remaining steps can train): this step's batch and k batches'
  worth ahead, launched under the weights the engines hold then.
- **What a step takes.** Without partial rollouts, the P groups launched earliest, once all of
  them are complete (batches in data order; the engines sample the groups ahead meanwhile).
  With `rollout.partial`, the P complete groups launched earliest, as soon as P are complete:
  unfinished groups stay in flight into later steps, their tokens sampled by newer weights.
- **The bound.** A complete group whose oldest token is more than k versions behind the
  trainer's weights is over the bound (only partial rollouts let a group age that far): with
  `stale_policy: drop` its prompt is not trained, with `resample` it is sampled again from its
  prompt under the current weights, in its place in the launch order. Counted per step.
- **Checkpoints.** The data cursor (prompts launched so far) and the prompts in the pool; a
  resumed run samples those again from scratch, first (`data/inflight_resampled`): none is
  trained twice, none lost.
"""

from __future__ import annotations

from dataclasses import dataclass

from rl.batch import Sample, StepBatch
from rl.config import RunConfig
from rl.data import DataOrder, Example, PromptRenderer
from rl.groups import RolloutGroup
from rollout.completion import Completion

# How long one poll of the engines waits for a group to finish before the pool is looked at again.
POLL_S = 0.5


@dataclass
class Group:
    """One prompt's group in the pool."""

    key: str  # the engine's name for this submission: "<prompt index>.<attempt>"
    prompt_index: int  # in the training set
    prompt: list[int]
    engine: int  # which engine samples it
    completions: list[Completion] | None = None  # once every sample has finished

    @property
    def done(self) -> bool:
        return self.completions is not None

    @property
    def oldest_version(self) -> int:
        """The version of its oldest token (versions only grow along a completion)."""
        return min(c.oldest_version for c in self.completions)


def over_bound(group: Group, trainer_version: int, max_staleness: int) -> bool:
    """Whether a complete group has a token more than `max_staleness` versions behind the trainer."""
    return trainer_version - group.oldest_version > max_staleness


def over_bound_groups(pool: list[Group], trainer_version: int, max_staleness: int) -> list[Group]:
    """The complete groups of the pool over the bound (in flight ones are judged once complete:
    only then are their tokens' versions known)."""
    return [g for g in pool if g.done and over_bound(g, trainer_version, max_staleness)]


def choose_batch(pool: list[Group], groups: int, partial: bool) -> list[Group] | None:
    """The groups a step takes from the pool (launch order), or None while it must wait:
    the first `groups` launched once all are complete, or — partial rollouts — the first
    `groups` complete ones once that many are."""
    ready = [g for g in pool if g.done] if partial else pool[:groups]
    if len(ready) < groups or not all(g.done for g in ready[:groups]):
        return None
    return ready[:groups]


def pool_target(prompts_per_step: int, max_staleness: int, steps_left: int) -> int:
    """Groups to keep in flight before a step waits: its batch and k batches ahead, but no more
    than the steps left can train."""
    return prompts_per_step * min(max_staleness + 1, steps_left)


class AsyncSampler:
    """The pool of groups in flight on the engines (module docstring)."""

    ahead = None  # no batch waits for the weight sync: the engines take weights between steps

    def __init__(self, cfg: RunConfig, train_set: list[Example], renderer: PromptRenderer,
                 rollout: RolloutGroup, cursor: int, in_flight: list[int]):
        self.cfg = cfg.rollout
        self.steps = cfg.schedule.steps
        self.order = DataOrder(len(train_set), cfg.seed, cfg.data.shuffle)
        self.train_set, self.renderer, self.rollout = train_set, renderer, rollout
        self.cursor = cursor  # prompts launched so far in the data order
        self.requeue = list(in_flight)  # prompts to sample (again) before the cursor's
        self.pool: list[Group] = []
        self.attempts = 0  # submissions so far: makes every key unique
        self.counts = {"offpolicy/dropped_groups": 0, "offpolicy/resampled_groups": 0,
                       "data/inflight_resampled": len(self.requeue)}

    # -- what the driver calls ------------------------------------------------------------

    def next_batch(self, version: int, step: int) -> StepBatch:
        """Step `step`'s batch, trained by weights `version`: fills the pool, waits for the
        groups the step takes, applying the staleness bound to every group that completes."""
        while True:
            self.fill(pool_target(self.cfg.prompts_per_step, self.cfg.max_staleness, self.steps - step + 1))
            self.enforce_bound(version)  # complete groups age in the pool too: judged against this step
            chosen = choose_batch(self.pool, self.cfg.prompts_per_step, self.cfg.partial)
            if chosen is not None:
                break
            self.poll()
        taken = {id(g) for g in chosen}
        self.pool = [g for g in self.pool if id(g) not in taken]
        idx = [g.prompt_index for g in chosen]
        samples = [Sample(g.prompt, c, self.train_set[g.prompt_index].answer) for g in chosen for c in g.completions]
        stale = any(v < version for s in samples for v, _ in s.completion.versions)
        metrics: dict[str, float | str] = {k: float(v) for k, v in self.counts.items()}
        metrics["rollout/groups_in_flight"] = float(len(self.pool))
        # Which prompts trained, in the step's record (a field, not a scalar): with groups taken
        # out of launch order, the audit that no prompt trains twice needs the list itself.
        metrics["data/prompts"] = " ".join(map(str, idx))
        self.counts = dict.fromkeys(self.counts, 0)
        return StepBatch(idx, samples, samples, stale, version=version, metrics=metrics)

    def sample_ahead(self) -> None:
        """Nothing to start: the pool is filled when the next step waits (`next_batch`)."""

    def consumed_cursor(self) -> int:
        """The data cursor a checkpoint records: every prompt before it is trained, dropped
        (counted) or in flight (`in_flight`)."""
        return self.cursor

    def in_flight(self) -> list[int]:
        """The prompts launched and not yet trained, in launch order (then those waiting to be)."""
        return [g.prompt_index for g in self.pool] + self.requeue

    def rewind(self, cursor: int, in_flight: list[int] | tuple = ()) -> None:
        """Back to a checkpoint's (or a step's start) position: the groups on the engines are
        stopped, and `in_flight` is sampled again first, counted."""
        if self.pool:
            self.rollout.abort_groups()
        self.pool, self.cursor, self.requeue = [], cursor, list(in_flight)
        self.counts["data/inflight_resampled"] += len(self.requeue)

    # -- the pool -------------------------------------------------------------------------

    def fill(self, target: int) -> None:
        """Launches prompts (requeued ones first, then the data order's) until `target` are in flight."""
        missing = target - len(self.pool)
        if missing <= 0:
            return
        take = min(missing, len(self.requeue))
        idx, self.requeue = self.requeue[:take], self.requeue[take:]
        idx += self.order.indices(self.cursor, missing - take)
        self.cursor += missing - take
        groups = [Group("", i, self.renderer.ids(self.train_set[i]), 0) for i in idx]
        self.submit(groups)
        self.pool += groups

    def submit(self, groups: list[Group]) -> None:
        """Starts sampling `groups` (new keys each), spread over the engines by their load."""
        load = [0] * len(self.rollout.actors)
        for g in self.pool:
            if not g.done:
                load[g.engine] += 1
        per_engine: dict[int, list[Group]] = {}
        for g in groups:
            g.engine = min(range(len(load)), key=load.__getitem__)
            load[g.engine] += 1
            g.key, g.completions = f"{g.prompt_index}.{self.attempts}", None
            self.attempts += 1
            per_engine.setdefault(g.engine, []).append(g)
        c = self.cfg
        self.rollout.gather([self.rollout.actors[e].submit.remote(
            [g.key for g in gs], [g.prompt for g in gs], c.group_size, c.max_new_tokens, c.temperature, c.top_p,
            c.top_k, c.ignore_eos) for e, gs in per_engine.items()])

    def poll(self) -> None:
        """Waits up to POLL_S for groups to finish, and records those that did."""
        by_key = {g.key: g for g in self.pool}
        for answers in self.rollout.gather([a.take.remote(POLL_S) for a in self.rollout.actors]):
            for key, completions in answers:
                if key in by_key:  # else: a group aborted by a rewind that finished meanwhile
                    by_key[key].completions = completions

    def enforce_bound(self, version: int) -> None:
        """Complete groups more than max_staleness versions behind `version`: dropped or sampled
        again (rollout.stale_policy), counted."""
        stale = over_bound_groups(self.pool, version, self.cfg.max_staleness)
        if not stale:
            return
        if self.cfg.stale_policy == "drop":
            self.counts["offpolicy/dropped_groups"] += len(stale)
            dropped = {id(g) for g in stale}
            self.pool = [g for g in self.pool if id(g) not in dropped]
        else:
            self.counts["offpolicy/resampled_groups"] += len(stale)
            self.submit(stale)  # in place: they keep their turn in the launch order
