"""Asynchronous rollout's pure logic (rl.async_rollout, rl.step_metrics.versioned_mismatch):
token versions, the staleness bound, which groups a step takes, the per-lag metrics."""

import math

import pytest

from rl.async_rollout import Group, choose_batch, over_bound, over_bound_groups, pool_target
from rl.batch import Sample
from rl.step_metrics import lag_metrics, versioned_mismatch
from rollout.completion import Completion
from trainer.batch import TokenLogprobs


def completion(versions, logprobs=None) -> Completion:
    n = sum(c for _, c in versions)
    return Completion(list(range(n)), logprobs or [-1.0] * n, "stop", "", tuple(versions))


def group(index, *versions, done=True) -> Group:
    return Group(f"{index}.0", index, [1, 2], 0, [completion(v) for v in versions] if done else None)


def test_token_versions_expand_run_lengths():
    c = completion([(3, 2), (4, 1), (6, 3)])
    assert c.token_versions() == [3, 3, 4, 6, 6, 6]
    assert c.oldest_version == 3


def test_bound_is_on_the_oldest_token_of_any_sample_of_the_group():
    g = group(0, [(5, 4)], [(3, 1), (5, 2)])  # second sample began under version 3
    assert g.oldest_version == 3
    assert not over_bound(g, trainer_version=5, max_staleness=2)
    assert over_bound(g, trainer_version=6, max_staleness=2)
    pool = [g, group(1, [(5, 3)]), group(2, done=False)]
    assert over_bound_groups(pool, 6, 2) == [g]  # the unfinished one is judged once complete
    assert over_bound_groups(pool, 5, 2) == []


def test_without_partial_a_step_waits_for_the_groups_launched_first():
    pool = [group(0, [(0, 1)]), group(1, done=False), group(2, [(0, 1)]), group(3, [(0, 1)])]
    assert choose_batch(pool, 2, partial=False) is None  # group 1 still sampling
    pool[1].completions = [completion([(1, 2)])]
    assert [g.prompt_index for g in choose_batch(pool, 2, partial=False)] == [0, 1]


def test_partial_takes_the_first_complete_groups_in_launch_order():
    pool = [group(0, done=False), group(1, [(0, 1)]), group(2, done=False), group(3, [(0, 1)]), group(4, [(0, 1)])]
    assert [g.prompt_index for g in choose_batch(pool, 2, partial=True)] == [1, 3]
    assert choose_batch(pool, 4, partial=True) is None  # only 3 complete


def test_pool_target_keeps_k_batches_ahead_but_not_past_the_run():
    assert pool_target(4, 2, steps_left=10) == 12
    assert pool_target(4, 2, steps_left=2) == 8
    assert pool_target(4, 1, steps_left=1) == 4


def sample(versions, a, b_row):
    return Sample([1], completion(versions, a), "1"), TokenLogprobs(b_row, [])


def test_versioned_mismatch_splits_equal_weights_from_lagged_tokens():
    # Trainer version 5. Sample 0: all tokens version 5 (equal weights). Sample 1: began under 3,
    # went on under 4 and 5 (in-flight updates).
    s0, r0 = sample([(5, 2)], [-1.0, -2.0], [-1.0, -2.5])
    s1, r1 = sample([(3, 1), (4, 1), (5, 2)], [-1.0, -1.0, -1.0, -1.0], [-1.2, -1.0, -0.5, -1.0])
    m, records = versioned_mismatch([s0, s1], [r0, r1], step=7, trainer_version=5)
    k3 = lambda d: math.exp(d) - 1 - d  # noqa: E731
    assert m["mismatch/num_tokens"] == 2  # only sample 0
    assert m["mismatch/k3"] == pytest.approx((k3(0.0) + k3(-0.5)) / 2)
    assert m["offpolicy/num_tokens"] == 4  # sample 1, all its tokens (its context is stale)
    assert m["offpolicy/k3"] == pytest.approx((k3(-0.2) + k3(0.0) + k3(0.5) + k3(0.0)) / 4)
    assert m["offpolicy/lag_max"] == 2
    assert m["offpolicy/lag_mean"] == pytest.approx((0 + 0 + 2 + 1 + 0 + 0) / 6)
    assert m["offpolicy/tokens_lag_0"] == pytest.approx(4 / 6)
    assert m["offpolicy/tokens_lag_1"] == pytest.approx(1 / 6)
    assert m["offpolicy/tokens_lag_2"] == pytest.approx(1 / 6)
    assert m["offpolicy/k3_lag_2"] == pytest.approx(k3(-0.2))
    assert m["offpolicy/k3_lag_1"] == pytest.approx(k3(0.0))
    assert m["offpolicy/samples_current_frac"] == 0.5
    assert not records.stale and records.completions == [s0.completion_ids]  # records: equal weights only


def test_versioned_mismatch_with_every_sample_lagged_logs_offpolicy_only():
    s, r = sample([(2, 3)], [-1.0] * 3, [-1.0] * 3)
    m, records = versioned_mismatch([s], [r], step=3, trainer_version=3)
    assert not any(k.startswith("mismatch/") for k in m)
    assert m["offpolicy/tokens_lag_1"] == 1.0 and m["offpolicy/tokens_lag_0"] == 0.0 and records.stale


def test_lag_metrics_of_an_on_policy_batch():
    s, r = sample([(4, 2)], [-1.0, -1.0], [-1.0, -1.0])
    assert lag_metrics([s], [r], 4) == {"offpolicy/lag_mean": 0.0, "offpolicy/lag_max": 0.0,
                                         "offpolicy/tokens_lag_0": 1.0}
