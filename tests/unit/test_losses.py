import math

import pytest
import torch

from trainer import losses


def test_clipped_policy_loss_hand_computed():
    old = torch.zeros(1, 4)
    # ratios e^x: 1.5, 0.5, 1.1, 0.9
    logp = torch.log(torch.tensor([[1.5, 0.5, 1.1, 0.9]]))
    adv = torch.tensor([[1.0, 1.0, -1.0, -1.0]])
    loss, clipped = losses.clipped_policy_loss(logp, old, adv, clip_low=0.2, clip_high=0.28)
    # A>0, ρ=1.5 → min(1.5, 1.28) = 1.28 → loss −1.28 (clipped)
    # A>0, ρ=0.5 → min(0.5, 0.8) = 0.5 → −0.5 (not clipped: the pessimistic term is the unclipped one)
    # A<0, ρ=1.1 → min(−1.1, −1.1) = −1.1 → 1.1
    # A<0, ρ=0.9 → min(−0.9, −0.9) → 0.9
    assert loss.tolist()[0] == pytest.approx([-1.28, -0.5, 1.1, 0.9], abs=1e-6)
    assert clipped.tolist()[0] == [True, False, False, False]


def test_clipped_negative_advantage_low_side():
    # A<0, ρ=0.5 → unclipped −0.5·(−1)... min(−0.5·1, clip(0.5)=0.8 → −0.8) = −0.8 → loss 0.8, clipped
    loss, clipped = losses.clipped_policy_loss(torch.log(torch.tensor([[0.5]])), torch.zeros(1, 1), torch.tensor([[-1.0]]), 0.2, 0.28)
    assert loss.item() == pytest.approx(0.8)
    assert clipped.item()


def test_kl_estimators_hand_computed():
    logp, ref = torch.tensor([math.log(0.5)]), torch.tensor([math.log(0.25)])
    x = math.log(0.5) - math.log(0.25)  # log 2
    assert losses.kl_k1(logp, ref).item() == pytest.approx(x)
    assert losses.kl_k2(logp, ref).item() == pytest.approx(0.5 * x * x)
    assert losses.kl_k3(logp, ref).item() == pytest.approx(0.5 - 1 + x)  # e^{−x} − 1 + x
    assert losses.kl_k3(ref, ref).item() == 0.0


def test_corrections():
    old = torch.log(torch.tensor([1.0, 3.0, 0.2, 1.5]))
    roll = torch.zeros(4)  # ρ = old probs: 1, 3, 0.2, 1.5
    assert losses.correction_tis(old, roll, 0.5, 2.0).tolist() == pytest.approx([1.0, 2.0, 0.2, 1.5])
    assert losses.correction_masked_is(old, roll, 0.5, 2.0).tolist() == pytest.approx([1.0, 0.0, 0.0, 1.5])
    assert losses.correction_icepop(old, roll, 0.5, 2.0).tolist() == [1.0, 0.0, 0.0, 1.0]
    assert losses.correction_none(old, roll, 0.5, 2.0).tolist() == [1.0] * 4


def test_aggregation_normalisers_and_aggregate():
    values = torch.tensor([[1.0, 2.0, 3.0], [4.0, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    lengths = [3, 1]
    n = losses.token_mean_normaliser(lengths, 8)
    assert n == 4 and losses.aggregate(values, mask, "token_mean", n).item() == pytest.approx(10 / 4)
    n = losses.sequence_mean_normaliser(lengths, 8)
    assert n == 2 and losses.aggregate(values, mask, "sequence_mean", n).item() == pytest.approx((2 + 4) / 2)
    n = losses.token_sum_norm_normaliser(lengths, 8)
    assert n == 16 and losses.aggregate(values, mask, "token_sum_norm", n).item() == pytest.approx(10 / 16)


def test_split_invariance_of_token_mean():
    """Summing per-part aggregates with the whole batch's normaliser equals the whole."""
    torch.manual_seed(0)
    values, mask = torch.randn(6, 5), (torch.rand(6, 5) > 0.3).float()
    n = float(mask.sum())
    whole = losses.aggregate(values, mask, "token_mean", n)
    parts = sum(losses.aggregate(values[i : i + 2], mask[i : i + 2], "token_mean", n) for i in range(0, 6, 2))
    assert parts.item() == pytest.approx(whole.item(), abs=1e-6)
