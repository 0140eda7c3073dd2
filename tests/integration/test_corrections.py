"""The loss's train/infer options run for real: `algorithm.old_logprobs=rollout` (the ratio's
old log-probs are the engine's a_t) and the corrections TIS, masked IS and IcePop, each for 3 RL
steps of the tiny recipe, with what each masked or clipped checked against the step's own token
records. The four share one run (one SFT warm start, one trainer, one engine start-up): each
takes over the loss for its 3 steps (`Run.switch_algorithm`), on the weights the one before left.

The correction bounds sit at 1 ± 3e-7 so that the fp32 engines' real mismatch (|Δ| ~ 3e-7
typical, ~3e-6 at most) puts a good share of tokens outside them: the corrections act on every
step. The trainer computes ρ = exp(b − a) in fp32 from the same b_t the records hold (the update's
own forward, one optimiser step per RL step), so the share it masked must equal, exactly, the
share the records predict.
"""

import math
import shutil
import time
from pathlib import Path

import pytest
import torch
from page_check import check_self_contained

from rl import cli
from rl.config import from_data
from rl.driver import Run
from rl.metrics import read_history
from rl.report import build, read_records

from .conftest import tiny_recipe

pytestmark = pytest.mark.integration

EPS = 3e-7
BOUNDS = {"correction_low": 1 - EPS, "correction_high": 1 + EPS}
VARIANTS = {
    "rollout_old": {"old_logprobs": "rollout"},
    "tis": {"correction": "tis", **BOUNDS},
    "masked_is": {"correction": "masked_is", **BOUNDS},
    "icepop": {"correction": "icepop", **BOUNDS},
}
STEPS = 3


@pytest.fixture(scope="module")
def runs(tmp_path_factory, shared_sft):
    """One run, one start-up (SFT warm start, trainer ranks, engine): the variants train in turn,
    STEPS RL steps each, switched between steps (`Run.switch_algorithm`). Returns {name: (run_dir,
    its steps' metrics, seconds)}, and under "" the start-up's seconds."""
    tmp = tmp_path_factory.mktemp("corrections")
    recipes = {name: tiny_recipe(tmp, name="corrections", algorithm=algorithm, data={"eval": None},
                                 sft={"steps": 60}, trainer={"num_ranks": 1}, logging={"tensorboard": False},
                                 reward={"timeout_s": 60.0},  # no ungraded sample on a loaded machine: all in the loss
                                 ray={"address": "local"},  # a private instance, whatever `ray start` runs here
                                 schedule={"steps": STEPS * len(VARIANTS), "eval_every": 0, "save_every": 0})
               for name, algorithm in VARIANTS.items()}
    start = time.monotonic()
    run = Run(from_data(shared_sft(next(iter(recipes.values())))))
    out = {"": (run.run_dir, [], time.monotonic() - start)}
    try:
        for name, recipe in recipes.items():
            start = time.monotonic()
            run.switch_algorithm(from_data(recipe).algorithm)
            for _ in range(STEPS):  # Run.loop's step, without its evaluation and checkpoints
                run.step += 1
                run.metrics.log(run.step, run.rl_step())
            steps = [h for h in read_history(run.run_dir) if "reward/mean" in h][-STEPS:]
            out[name] = (run.run_dir, steps, time.monotonic() - start)
    finally:
        run.shutdown()
    return out


def predicted(run_dir: Path, step: int, low: float, high: float) -> dict[str, float]:
    """What the trainer saw at `step`, recomputed from the step's token records (all of them are
    kept at this size): ρ = exp(b − a) in fp32, and the PPO ratio exp(b − a_t) of old=rollout."""
    records = read_records(run_dir, step)
    a = torch.tensor([r["rollout_logprob"] for r in records], dtype=torch.float32)
    b = torch.tensor([r["trainer_logprob"] for r in records], dtype=torch.float32)
    rho = torch.exp(b - a)
    return {"below": (rho < low).double().mean().item(), "above": (rho > high).double().mean().item(),
            "rho_min": rho.min().item(), "rho_max": rho.max().item(), "tokens": len(records)}


@pytest.mark.parametrize("name", list(VARIANTS))
def test_runs_three_steps_and_logs_what_it_masked_or_clipped(runs, name):
    run_dir, steps, seconds = runs[name]
    print(f"{name}: {seconds:.0f} s")
    algo = VARIANTS[name]
    low, high = algo.get("correction_low", 0.5), algo.get("correction_high", 2.0)
    first = list(VARIANTS).index(name) * STEPS + 1
    assert [h["step"] for h in steps] == list(range(first, first + STEPS))
    acted = 0.0
    for h in steps:
        assert "train/skipped" not in h and h["train/samples"] > 0, h
        assert h["train/ungraded_masked"] == 0  # every sample in the loss: the records cover them all
        fractions = ("train/correction_masked_frac", "train/correction_ratio_below_frac",
                     "train/correction_ratio_above_frac", "train/clip_frac")
        for key in fractions:
            assert 0.0 <= h[key] <= 1.0, (key, h[key])
        p = predicted(run_dir, h["step"], low, high)
        assert p["tokens"] == h["mismatch/num_tokens"]
        if name == "rollout_old":
            # The ratio's denominator is a_t itself: ρ = 1 exactly, nothing to correct; the PPO
            # ratio exp(b − a) carries the engines' mismatch instead (1 exactly with recompute).
            assert h["train/correction_ratio_min"] == h["train/correction_ratio_max"] == 1.0
            assert h["train/correction_masked_frac"] == 0.0
            assert h["train/ppo_ratio_min"] == pytest.approx(p["rho_min"], rel=1e-6)
            assert h["train/ppo_ratio_max"] == pytest.approx(p["rho_max"], rel=1e-6)
            acted += h["train/ppo_ratio_max"] - h["train/ppo_ratio_min"]
            continue
        assert h["train/ppo_ratio_min"] == h["train/ppo_ratio_max"] == 1.0  # old = this forward's b_t
        assert h["train/correction_ratio_min"] == pytest.approx(p["rho_min"], rel=1e-6)
        assert h["train/correction_ratio_max"] == pytest.approx(p["rho_max"], rel=1e-6)
        # The same tokens fall outside the bounds (one token of slack: the trainer's exp runs on
        # a padded [B, T] batch, this one on a flat tensor, and may round differently).
        one = 1.5 / p["tokens"]
        assert h["train/correction_ratio_below_frac"] == pytest.approx(p["below"], abs=one)
        assert h["train/correction_ratio_above_frac"] == pytest.approx(p["above"], abs=one)
        if name == "tis":  # w = min(ρ, high): nothing dropped, the weight capped at `high`
            assert h["train/correction_masked_frac"] == 0.0
            assert h["train/correction_weight_max"] <= float(torch.tensor(high, dtype=torch.float32))
            assert h["train/correction_weight_max"] == pytest.approx(min(p["rho_max"], high), abs=2e-7)
            acted += h["train/correction_ratio_above_frac"]
        else:  # masked IS, IcePop: every token with ρ outside [low, high] dropped
            masked = p["below"] + p["above"]
            assert h["train/correction_masked_frac"] == pytest.approx(
                h["train/correction_ratio_below_frac"] + h["train/correction_ratio_above_frac"], abs=1e-12)
            assert h["train/correction_masked_frac"] == pytest.approx(masked, abs=2 * one)
            assert h["train/correction_weight_max"] <= float(torch.tensor(high, dtype=torch.float32))
            if name == "icepop":  # kept tokens weigh exactly 1
                assert h["train/correction_weight_mean"] == pytest.approx(1 - h["train/correction_masked_frac"],
                                                                          abs=1e-12)
            acted += masked
    assert acted > 0, f"{name}: the correction never acted on the mismatch"


def test_report_agrees_with_the_run_and_renders(runs, tmp_path):
    """On real runs: `lockstep mismatch` gives, for every step, the metrics the run logged; its
    page is self-contained and shows what the correction masked."""
    run_dir, steps, _ = runs["icepop"]
    for h in steps:
        report = build(run_dir, h["step"])
        assert report["summary"] == {k.split("/", 1)[1]: v for k, v in h.items() if k.startswith("mismatch/")}
    out = tmp_path / "icepop.html"
    assert cli.main(["mismatch", str(run_dir), "--html", str(out)]) == 0
    page = out.read_text()
    assert check_self_contained(page) >= 6
    assert "IcePop" in page and page.count("<mark>") >= 20
    whole = build(run_dir)
    assert [r["step"] for r in whole["corrections"]["steps"]] == list(range(1, STEPS * len(VARIANTS) + 1))
    assert whole["corrections"]["correction"] == "icepop"  # the section in force last (config.yaml)
    assert whole["corrections"]["steps"][-STEPS]["correction_masked_frac"] == steps[0]["train/correction_masked_frac"]
    print("runs: " + ", ".join(f"{name or 'start-up'} {s:.0f} s" for name, (_, _, s) in runs.items()))
    assert all(math.isfinite(s) for _, _, s in runs.values())
