"""The staleness bound of asynchronous rollout (rl.async_rollout) on a real engine, no trainer:
groups sampled under version 0 and still untrained when the trainer reaches version 3 are more
than max_staleness=2 versions behind; `stale_policy: drop` leaves their prompts untrained,
`resample` samples them again under the current weights, in their turn. Both counted."""

import dataclasses

import pytest

from rl.async_rollout import AsyncSampler
from rl.config import from_data
from rl.data import PromptRenderer, load_examples
from rl.groups import RolloutGroup
from rl.model import load_tokenizer, resolve_model_path
from rl.placement import Placement, connect

from .conftest import tiny_recipe

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def engine(tmp_path_factory, ray_local):
    data = tiny_recipe(tmp_path_factory.mktemp("bound"), rollout={"max_staleness": 2, "max_new_tokens": 8},
                       trainer={"num_ranks": 1})
    cfg = from_data(data)
    connect(cfg.ray.address)
    model = resolve_model_path(cfg)
    placement = Placement(cfg)
    rollout = RolloutGroup.start(placement, cfg, model, 0)
    renderer = PromptRenderer(load_tokenizer(model, False), cfg.data.train)
    yield cfg, load_examples(cfg.data.train, "data.train"), renderer, rollout
    rollout.kill()
    placement.remove()


@pytest.mark.parametrize("policy", ["drop", "resample"])
def test_groups_over_the_bound_are_dropped_or_resampled(engine, policy):
    cfg, train_set, renderer, rollout = engine
    cfg = dataclasses.replace(cfg, rollout=dataclasses.replace(cfg.rollout, stale_policy=policy))
    P, k = cfg.rollout.prompts_per_step, cfg.rollout.max_staleness
    rollout.set_version(0)
    sampler = AsyncSampler(cfg, train_set, renderer, rollout, cursor=0, in_flight=[])
    sampler.fill(P * (k + 1))  # launched and sampled under version 0
    old = [g.prompt_index for g in sampler.pool]
    while not all(g.done for g in sampler.pool):
        sampler.poll()
    rollout.set_version(k + 1)  # k + 1 updates later, none of them trained yet
    batch = sampler.next_batch(version=k + 1, step=1)
    if policy == "drop":
        assert batch.metrics["offpolicy/dropped_groups"] == len(old)
        assert not set(batch.prompt_indices) & set(old)  # never trained
        assert sampler.cursor == len(old) + P * min(k + 1, cfg.schedule.steps)  # the data order moved on
    else:
        assert batch.metrics["offpolicy/resampled_groups"] == len(old)
        assert batch.prompt_indices == old[:P]  # sampled again, in their turn
    assert all(s.completion.versions == ((k + 1, len(s.completion_ids)),) for s in batch.samples)
    sampler.rewind(0)
