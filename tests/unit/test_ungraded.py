"""Samples the verifier could not grade (timeout, crash): masked out of the loss or their group
dropped (`algorithm.ungraded`), out of the group baseline, and counted — from the real reward
pool's verdicts to the weights and advantages the trainer receives."""

import math

import pytest

from rewards import Reason, Score
from rl.batch import Sample
from rl.config import ConfigError, RewardConfig, from_data
from rl.driver import set_scores
from rl.rewards_config import build_reward_pool
from rl.step_metrics import reward_metrics
from rl.update import informative, select_and_advantage
from rollout.completion import Completion

G = 4


def cfg(**algorithm):
    return from_data({"rollout": {"group_size": G, "prompts_per_step": 3}, "algorithm": algorithm})


def samples(texts: list[str]) -> list[Sample]:
    return [Sample([1, 2], Completion([3, 4], [-0.5, -0.5], "stop", t), "7") for t in texts]


def scored(verdicts: list[tuple[float, Reason]]) -> list[Sample]:
    batch = samples(["x"] * len(verdicts))
    set_scores(batch, [Score(v, r) for v, r in verdicts])
    return batch


C, W, T, X = (1.0, Reason.CORRECT), (0.0, Reason.WRONG), (0.0, Reason.TIMEOUT), (0.0, Reason.CRASH)
# group 0: one timeout among 1, 0, 1; group 1: a crash and a timeout, the graded ones tie;
# group 2: only one graded sample left.
VERDICTS = [C, T, W, C,  C, X, T, C,  T, T, X, C]


def test_mask_keeps_ungraded_out_of_loss_and_baseline():
    batch, m = scored(VERDICTS), {}
    assert [s.reward_graded for s in batch] == [True, False, True, True, True, False, False, True,
                                                False, False, False, True]
    assert select_and_advantage(batch, cfg(), step=1, metrics=m)
    s = math.sqrt(1 / 3)  # group 0's graded rewards 1, 0, 1: mean 2/3, unbiased std sqrt(1/3)
    assert [x.advantage for x in batch] == pytest.approx(
        [(1 / 3) / s, 0, (-2 / 3) / s, (1 / 3) / s] + [0] * 8, abs=1e-5)
    # In the loss: group 0's and group 1's graded samples; group 2 has no baseline.
    assert [x.weight for x in batch] == [1, 0, 1, 1, 1, 0, 0, 1, 0, 0, 0, 0]
    assert m["train/ungraded_samples"] == 6 and m["train/ungraded_masked"] == 7
    assert m["train/ungraded_dropped_groups"] == 1 and m["train/samples"] == 5
    assert m["train/padding_samples"] == 7


def test_drop_group_drops_every_group_with_an_ungraded_sample():
    batch, m = scored([C, T, W, C,  C, W, W, C,  T, T, X, C]), {}
    assert select_and_advantage(batch, cfg(ungraded="drop_group"), step=1, metrics=m)
    assert [x.weight for x in batch] == [0, 0, 0, 0, 1, 1, 1, 1, 0, 0, 0, 0]
    assert [x.advantage for x in batch[:4] + batch[8:]] == [0] * 8
    assert batch[4].advantage > 0 > batch[5].advantage
    assert m["train/ungraded_dropped_groups"] == 2 and m["train/ungraded_masked"] == 8
    assert m["train/samples"] == 4


def test_nothing_graded_skips_the_update_and_counts():
    batch, m = scored([T] * 12), {}
    assert not select_and_advantage(batch, cfg(), step=1, metrics=m)
    assert m["train/skipped"] == 1 and m["train/ungraded_dropped_groups"] == 3
    rm = reward_metrics(batch, {})
    assert rm["reward/ungraded"] == 12 and math.isnan(rm["reward/mean"])


def test_dynamic_sampling_judges_groups_by_graded_rewards():
    # Group 0 differs only through a timeout's 0: not informative once masked.
    batch = scored([C, T, C, C,  C, W, C, C,  W, W, W, W])
    algo = cfg(dynamic_sampling=True).algorithm
    assert informative(batch, algo, G) == [False, True, False]
    m = {}
    assert select_and_advantage(batch, cfg(dynamic_sampling=True), step=1, metrics=m)
    assert [x.weight for x in batch] == [0] * 4 + [1] * 4 + [0] * 4
    assert m["train/ungraded_samples"] == 1


def test_reward_metrics_average_graded_samples_only():
    m = reward_metrics(scored([C, T, W, C]), {})
    assert m["reward/mean"] == pytest.approx(2 / 3) and m["reward/ungraded"] == 1
    assert m["reward/reason_timeout"] == 1


def test_unknown_policy_is_a_config_error():
    with pytest.raises(ConfigError, match="algorithm.ungraded"):
        cfg(ungraded="ignore")


def test_a_real_verifier_timeout_is_masked_end_to_end():
    """The recipe's math reward in its pool with a 1.5 s timeout: `(x+1)^{3000}` is within the
    complexity budgets but sympy takes far longer, so the pool kills it and says `timeout`."""
    texts = ["so \\boxed{7}", "\\boxed{(x+1)^{3000}}", "\\boxed{3}", "The answer is 7"]
    batch = samples(texts)
    with build_reward_pool(RewardConfig(timeout_s=1.5, num_workers=1)) as pool:
        set_scores(batch, pool.submit([(s.completion.text, s.answer) for s in batch]).result())
        stats = pool.stats()
    assert [s.reward_reason for s in batch] == ["correct", "timeout", "wrong", "correct"]
    assert stats["timeout"] == 1
    m = {}
    assert select_and_advantage(batch, from_data({"rollout": {"group_size": 4, "prompts_per_step": 1}}),
                                step=1, metrics=m)
    assert [s.weight for s in batch] == [1, 0, 1, 1]
    s = math.sqrt(1 / 3)
    assert [x.advantage for x in batch] == pytest.approx([(1 / 3) / s, 0, (-2 / 3) / s, (1 / 3) / s], abs=1e-5)
    assert m["train/ungraded_samples"] == 1 and m["train/ungraded_masked"] == 1
    assert reward_metrics(batch, stats)["reward/ungraded"] == 1
