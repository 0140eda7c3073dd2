import math

import pytest
import torch

from rl.algorithms.advantages import fill_batch, grpo_advantages, informative_groups


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
