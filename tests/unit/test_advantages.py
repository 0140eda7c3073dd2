import math

import pytest
import torch

from rl.algorithms.advantages import (baseline_groups, fill_batch, graded_samples, grpo_advantages,
                                      informative_groups)


def test_grpo_hand_computed():
    # group 1: rewards 1,0,0,1 → mean 0.5, unbiased std = sqrt(1/3) = 0.57735
    # group 2: rewards 1,1,1,1 → all zero advantage
    r = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0])
    a = grpo_advantages(r, 4, std_normalize=True, eps=0.0 + 1e-12)
    s = math.sqrt(1 / 3)
    expected = [0.5 / s, -0.5 / s, -0.5 / s, 0.5 / s, 0, 0, 0, 0]
    assert a.tolist() == pytest.approx(expected, abs=1e-6)


def test_dr_grpo_no_std():
    r = torch.tensor([3.0, 1.0, 2.0])
    assert grpo_advantages(r, 3, std_normalize=False).tolist() == pytest.approx([1.0, -1.0, 0.0])


def test_bad_shape():
    with pytest.raises(ValueError, match="multiple of group_size"):
        grpo_advantages(torch.ones(5), 2)


def test_informative_groups():
    r = torch.tensor([1.0, 1.0, 0.0, 1.0, 0.0, 0.0])
    assert informative_groups(r, 2).tolist() == [False, True, False]


def test_fill_batch_prefers_informative_groups_in_drawn_order():
    # Two rounds of 3 groups: informative at 1, 3, 4, 5; a batch of 3 takes the first three.
    assert fill_batch([False, True, False, True, True, True], 3) == [1, 3, 4]
    # Shortfall: the one informative group plus the earliest uninformative ones (weight 0 later).
    assert fill_batch([False, False, True, False], 3) == [0, 1, 2]
    assert fill_batch([True, True], 2) == [0, 1]
    with pytest.raises(ValueError, match="need at least 3 groups"):
        fill_batch([True, True], 3)


# Ungraded rewards (a verifier timeout or crash): out of the group's baseline, advantage 0.
UNGRADED_REWARDS = torch.tensor([1.0, 0.0, 0.0, 1.0,   # sample 1 timed out
                                 1.0, 0.0, 0.0, 1.0,   # samples 1 and 2 crashed / timed out
                                 0.0, 0.0, 0.0, 1.0])  # only sample 3 graded
GRADED = torch.tensor([True, False, True, True, True, False, False, True, False, False, False, True])


def test_grpo_baseline_over_graded_samples_only():
    a = grpo_advantages(UNGRADED_REWARDS, 4, std_normalize=True, eps=1e-12, valid=GRADED)
    # group 0: graded 1, 0, 1 → mean 2/3; centred 1/3, -2/3, 1/3; unbiased var (1/9 + 4/9 + 1/9)/2 = 1/3.
    # (Counting the timeout's 0 as a wrong answer would give mean 1/2 and advantages ±0.866.)
    s = math.sqrt(1 / 3)
    # group 1: graded 1, 1 → no spread, advantage 0; group 2: one graded sample, no baseline → 0.
    expected = [(1 / 3) / s, 0, (-2 / 3) / s, (1 / 3) / s, 0, 0, 0, 0, 0, 0, 0, 0]
    assert a.tolist() == pytest.approx(expected, abs=1e-6)
    # Dr.GRPO: group 0 centred on 2/3 only.
    d = grpo_advantages(UNGRADED_REWARDS, 4, std_normalize=False, valid=GRADED)
    assert d.tolist() == pytest.approx([1 / 3, 0, -2 / 3, 1 / 3] + [0] * 8, abs=1e-6)
    # All valid: the plain GRPO advantages, unchanged.
    every = torch.ones(12, dtype=torch.bool)
    assert grpo_advantages(UNGRADED_REWARDS, 4, valid=every).tolist() == pytest.approx(
        grpo_advantages(UNGRADED_REWARDS, 4).tolist(), abs=1e-6)


def test_graded_samples_mask_or_drop_group_and_baseline_groups():
    assert graded_samples(GRADED, 4, "mask").tolist() == GRADED.tolist()
    assert graded_samples(GRADED, 4, "drop_group").tolist() == [False] * 12
    whole = torch.tensor([True, True, False, True, True, True])
    assert graded_samples(whole, 2, "drop_group").tolist() == [True, True, False, False, True, True]
    assert baseline_groups(GRADED, 4).tolist() == [True, True, False]
    with pytest.raises(ValueError, match="unknown ungraded policy"):
        graded_samples(GRADED, 4, "ignore")


def test_informative_groups_count_graded_rewards_only():
    r = torch.tensor([1.0, 0.0, 1.0, 1.0, 1.0, 0.0])
    valid = torch.tensor([True, False, True, True, True, True])
    # group 0: its 0 is a timeout, one graded reward left; group 1 ties; group 2: 1 vs 0.
    assert informative_groups(r, 2).tolist() == [True, False, True]
    assert informative_groups(r, 2, valid).tolist() == [False, False, True]
    assert informative_groups(r, 2, torch.zeros(6, dtype=torch.bool)).tolist() == [False] * 3
