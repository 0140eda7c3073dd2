"""Strict mode through the RL pipeline: every sampled token's trainer log-prob equals the rollout
engine's bit for bit, at every step (mismatch/bitwise_equal_frac == 1, abs_logp_diff_max == 0).

Two runs of 3 steps on the Ring-linear demo model, with different batch compositions (4 prompts ×
4 samples, then 8 × 2, so each token's neighbours and the batch shapes differ), ZeRO stages 1 and
3, and an engine token budget of 8 per step: every prompt (≥ 9 tokens) is prefilled in pieces,
beside other sequences' decodes.  In fast mode the same runs show |Δ| ~ 1e-6 on most tokens."""

from pathlib import Path

import pytest

from rl.config import from_data
from rl.driver import Run
from rl.metrics import read_history

from .conftest import tiny_recipe

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("zero_stage, prompts, group", [(1, 4, 4), (3, 8, 2)])
def test_strict_mode_logprobs_are_bitwise_equal_every_step(tmp_path, shared_sft, zero_stage, prompts, group):
    data = tiny_recipe(tmp_path, mode="strict", model={"path": "demo:ring-micro"}, sft={"steps": 60},
                       rollout={"prompts_per_step": prompts, "group_size": group, "max_new_tokens": 16,
                                "max_num_batched_tokens": 8},
                       trainer={"zero_stage": zero_stage}, ray={"address": "local"},
                       schedule={"steps": 3, "eval_every": 0, "save_every": 0, "eval_limit": 4})
    summary = Run(from_data(shared_sft(data))).train()  # one SFT export: both cases, the ZeRO-3 pipeline test
    steps = [h for h in read_history(Path(summary["run_dir"])) if "mismatch/num_tokens" in h]
    assert [h["step"] for h in steps] == [1, 2, 3]
    for h in steps:
        assert h["mismatch/num_tokens"] > 0
        assert h["mismatch/bitwise_equal_frac"] == 1.0, h
        assert h["mismatch/abs_logp_diff_max"] == 0.0, h
