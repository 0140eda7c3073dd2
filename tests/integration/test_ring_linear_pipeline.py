"""The Ring-linear hybrid model through the whole RL pipeline: 2 DeepSpeed ranks under ZeRO-3,
the vLLM engine with the Lockstep plugin, verified in-place weight sync, and an HF export that
the strict Ring-linear loader and the engine both accept."""

import math
from pathlib import Path

import pytest
import torch

from rl.config import from_data
from rl.driver import Run
from rl.metrics import read_history

from .conftest import tiny_recipe

pytestmark = pytest.mark.integration


def test_ring_linear_rl_steps_with_zero3(tmp_path, shared_sft):
    data = tiny_recipe(tmp_path, model={"path": "demo:ring-micro"}, sft={"steps": 60},
                       trainer={"zero_stage": 3},
                       # DAPO refill: up to 3 rollout rounds per step to fill the batch with informative groups
                       algorithm={"dynamic_sampling": True, "dynamic_sampling_max_rounds": 3})
    held_out = data["data"]["eval"]
    data["data"]["eval"] = [{**held_out, "name": "noisy"},  # two held-out sets, logged apart
                            {**held_out, "source": "synthetic:arithmetic-easy", "name": "easy", "num_examples": 8}]
    summary = Run(from_data(shared_sft(data))).train()  # the SFT export strict mode's runs start from too
    history = read_history(Path(summary["run_dir"]))
    first = history[0]
    assert first["step"] == 0 and first["eval/accuracy"] == first["eval/noisy/accuracy"]
    assert first["eval/easy/num_problems"] == 8 and first["eval/noisy/num_problems"] == 16
    steps = [h for h in history if "reward/mean" in h]
    assert [h["step"] for h in steps] == [1, 2]
    for h in steps:
        for key in ("reward/mean", "mismatch/k3", "train/loss", "train/grad_norm", "sync/probe_max_abs_diff"):
            assert math.isfinite(h[key]), (key, h)
        assert h["sync/probe_max_abs_diff"] <= 1e-3      # the engine runs the trainer's weights
        assert h["mismatch/abs_logp_diff_max"] < 1e-3    # same weights, both fp32
    assert any(h.get("sync/probe_change", 0) > 1e-4 for h in steps)  # and they really moved
    prompts_per_step, drawn = data["rollout"]["prompts_per_step"], 0
    for h in steps:  # refill: each round draws the next prompts_per_step prompts
        assert 1 <= h["dynamic_sampling/rounds"] <= 3
        assert h["dynamic_sampling/groups_drawn"] == h["dynamic_sampling/rounds"] * prompts_per_step
        drawn += h["dynamic_sampling/groups_drawn"]
        assert h["data/cursor"] == drawn
        informative = h["dynamic_sampling/informative_groups_drawn"]
        assert h["dynamic_sampling/batch_informative_frac"] == min(informative, prompts_per_step) / prompts_per_step
        assert (h["dynamic_sampling/rounds"] == 3) or informative >= prompts_per_step  # stops once full
        assert h["train/samples"] == min(informative, prompts_per_step) * data["rollout"]["group_size"]

    from trainer.ring_linear.modeling import BailingMoeLinearV2ForCausalLM

    export = Path(summary["checkpoint"]) / "hf"
    model = BailingMoeLinearV2ForCausalLM.from_pretrained(str(export), dtype=torch.float32)  # strict names
    assert model.config.architectures == ["BailingMoeLinearV2ForCausalLM"]


def test_ring_linear_rl_steps_in_fp8(tmp_path, ray_local):
    """model.fp8 through the pipeline: both engines run the decoder's projections and experts as
    FP8 GEMMs, the sync probe (teacher-forced, the same algorithm in both engines) still matches,
    the per-step mismatch metrics measure the decode mismatch FP8 leaves in fast mode, and the
    export is an ordinary checkpoint (master weights; nothing FP8 in its config)."""
    import json
    import subprocess
    import sys

    data = tiny_recipe(tmp_path, model={"path": "demo:ring-micro", "fp8": {"enabled": True}}, sft={"steps": 20},
                       schedule={"steps": 2, "eval_every": 0, "save_every": 2, "eval_limit": 4})
    run = Run(from_data(data))
    summary = run.train()
    steps = [h for h in read_history(Path(summary["run_dir"])) if "reward/mean" in h]
    assert [h["step"] for h in steps] == [1, 2]
    for h in steps:
        for key in ("reward/mean", "mismatch/k3", "mismatch/abs_logp_diff_mean", "train/loss", "train/grad_norm"):
            assert math.isfinite(h[key]), (key, h)
        assert h["sync/probe_max_abs_diff"] <= 1e-3
        assert h["mismatch/abs_logp_diff_mean"] < 0.05, h["mismatch/abs_logp_diff_mean"]
    export = Path(summary["checkpoint"]) / "hf"
    assert "lockstep_fp8" not in json.loads((export / "config.json").read_text())
    # every projection of the decoder ran in FP8, in both engines (the driver compares the two
    # engines' counts at start-up and refuses a difference)
    from trainer.ring_linear.modeling import BailingMoeLinearV2ForCausalLM

    from models.ring_linear.moe import GroupedExperts

    decoder = BailingMoeLinearV2ForCausalLM.from_pretrained(str(export), dtype=torch.float32).get_decoder()
    linears = sum(type(m) is torch.nn.Linear for m in decoder.modules())
    experts = sum(3 * m.gate_up_proj.shape[0] for m in decoder.modules() if isinstance(m, GroupedExperts))
    assert run.trainers.fp8_projections == linears + experts and experts > 0  # 3 per stacked expert
    # and the checkpoint evaluates with FP8 sampling from the command line
    report = tmp_path / "eval.json"
    out = subprocess.run([sys.executable, "-m", "rl.cli", "eval", summary["run_dir"], "--data", "arithmetic", "--limit", "4",
                          "--max-new-tokens", "16", "--fp8", "--output", str(report)], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert json.loads(report.read_text())["eval/num_problems"] == 4
