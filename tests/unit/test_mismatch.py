import math

import pytest
import torch

from rl.algorithms.mismatch import mismatch_metrics


def test_identical_logprobs():
    a = torch.tensor([-0.5, -1.0, -2.0])
    m = mismatch_metrics(a, a.clone(), torch.ones(3, dtype=torch.bool))
    assert m["mismatch/k1"] == 0 and m["mismatch/k3"] == 0
    assert m["mismatch/bitwise_equal_frac"] == 1.0
    assert m["mismatch/is_ess"] == pytest.approx(1.0)
    assert m["mismatch/token_mult_prob_error"] == pytest.approx(1.0)


def test_hand_computed():
    a = torch.tensor([math.log(0.5), math.log(0.5), 0.0])
    b = torch.tensor([math.log(0.25), math.log(0.5), -100.0])
    mask = torch.tensor([True, True, False])  # the third token is padding
    m = mismatch_metrics(a, b, mask, positions=torch.tensor([0, 70, 0]))
    d = math.log(0.5)  # Δ of token 0; token 1 has Δ = 0
    assert m["mismatch/k1"] == pytest.approx(-d / 2)
    assert m["mismatch/k3"] == pytest.approx((0.5 - 1 - d) / 2)
    assert m["mismatch/abs_logp_diff_max"] == pytest.approx(-d)
    assert m["mismatch/abs_p_diff_max"] == pytest.approx(0.25)
    assert m["mismatch/bitwise_equal_frac"] == 0.5
    assert m["mismatch/token_mult_prob_error"] == pytest.approx((2 + 1) / 2)
    # ESS: r = (0.5, 1) → (1.5)² / (2 · 1.25) = 0.9
    assert m["mismatch/is_ess"] == pytest.approx(0.9)
    assert m["mismatch/chi2_token"] == pytest.approx(0.25 / 2)
    assert m["mismatch/k3_pos_0-64"] == pytest.approx(0.5 - 1 - d)
    assert m["mismatch/k3_pos_64-256"] == 0
    assert m["mismatch/num_tokens"] == 2


def test_empty_mask():
    assert mismatch_metrics(torch.zeros(2), torch.zeros(2), torch.zeros(2, dtype=torch.bool)) == {}
