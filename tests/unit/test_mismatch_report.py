"""`lockstep mismatch`: the records a step writes (rl.token_records), the report built from them
(rl.report), its HTML page (rl.report_html) and the CLI, on a run directory written by the same
code the driver runs (`step_metrics.mismatch` → `MetricsLogger`), with synthetic log-probs."""

import json
import random
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import torch

from page_check import check_self_contained
from rl import cli
from rl.algorithms.mismatch import DECADE_MIN, METRIC_DOCS, mismatch_metrics, mismatch_profile
from rl.batch import Sample
from rl.config import from_data
from rl.metrics import MetricsLogger, read_history
from rl.report import build, estimate_summary, read_records, render_text
from rl.step_metrics import mismatch
from rollout.completion import Completion
from trainer.batch import TokenLogprobs

README = Path(__file__).resolve().parents[2] / "README.md"


def synthetic_step(rng: random.Random, n_samples: int, step: int, duplicate: bool = True):
    """Samples with a heavy-tailed Δ (most tokens within 1e-6, a few far off, the largest in the
    first sample); the first two samples identical, the third beginning like them, as a group's
    samples often do."""
    samples, rows = [], []
    for n in range(n_samples):
        length = rng.randint(3, 40)
        ids = [rng.randrange(50, 90) for _ in range(length)]
        a = [-rng.expovariate(1.0) for _ in range(length)]
        b = [x + (rng.gauss(0, 0.3) if rng.random() < 0.05 else rng.gauss(0, 1e-6)) for x in a]
        if n == 0:
            b[2] = a[2] - 2.0  # the step's largest |Δ|, at position 2
        if duplicate and n == 1:
            ids, a, b = list(samples[0].completion_ids), list(samples[0].rollout_logprobs), list(rows[0].logprobs)
        if duplicate and n == 2:  # begins like sample 0 (its largest |Δ| included), then goes its own way
            ids[:4], a[:4], b[:4] = samples[0].completion_ids[:4], samples[0].rollout_logprobs[:4], rows[0].logprobs[:4]
        b = [float(torch.tensor(x, dtype=torch.float32)) for x in b]  # the trainer's fp32
        a = [float(torch.tensor(x, dtype=torch.float32)) for x in a]
        samples.append(Sample([1, 2, 3, 4, 5], Completion(ids, a, "stop", ""), answer="7"))
        rows.append(TokenLogprobs(b, [rng.uniform(0, 2) for _ in ids]))
    return samples, rows


def write_run(run_dir: Path, steps: int = 3, n_samples: int = 24, limit: int = 64, stale_step: int | None = None):
    """A run directory as the driver writes it: metrics.jsonl and tokens/, `limit` records a step."""
    cfg = from_data({"logging": {"tensorboard": False, "token_records_per_step": limit}})
    logger = MetricsLogger(run_dir, cfg)
    rng = random.Random(0)
    for step in range(1, steps + 1):
        samples, rows = synthetic_step(rng, n_samples, step)
        metrics, tokens = mismatch(samples, rows, step, stale=step == stale_step)
        logger.token_records(step, tokens, seed=0)
        logger.log(step, metrics | {"reward/mean": 0.5, "train/correction_masked_frac": 0.1 * step,
                                    "train/correction_weight_max": 2.0, "train/clip_frac": 0.0})
    logger.close()
    (run_dir / "config.yaml").write_text("algorithm:\n  correction: icepop\n  correction_low: 0.5\n"
                                         "  correction_high: 2.0\n  old_logprobs: recompute\n")
    return run_dir


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return write_run(tmp_path_factory.mktemp("mm") / "run", stale_step=3)


def test_summary_equals_the_logged_metrics(run_dir):
    """The report's numbers are the run's own, over every token, not a re-estimate from the
    records (half of which are the largest |Δ|)."""
    history = {h["step"]: h for h in read_history(run_dir)}
    for step in (1, 2, 3):
        report = build(run_dir, step)
        assert report["exact"] and report["num_records"] == 64
        logged = {k.split("/", 1)[1]: v for k, v in history[step].items() if k.startswith(report["prefix"] + "/")}
        assert report["summary"] == logged and len(logged) >= 12
        assert report["prefix"] == ("offpolicy" if step == 3 else "mismatch")
        # The records alone, unweighted, overstate the mismatch: that was the old report's number.
        records = read_records(run_dir, step)
        a = torch.tensor([r["rollout_logprob"] for r in records])
        b = torch.tensor([r["trainer_logprob"] for r in records])
        naive = mismatch_metrics(a, b, torch.ones_like(a, dtype=torch.bool))
        assert naive["mismatch/k3"] > 3 * logged["k3"]


def test_weighted_records_estimate_the_step_without_bias(run_dir):
    """Each kept record's weight is the inverse of its chance of being kept, so the weighted
    sums over the records estimate the step's: averaged over many seeds they converge to the
    exact value, and they count every token (Σ weights = n)."""
    rng = random.Random(1)
    samples, rows = synthetic_step(rng, 40, 1, duplicate=False)
    metrics, tokens = mismatch(samples, rows, 1, stale=False)
    n = len(tokens.sample)
    estimates = []
    for seed in range(200):
        index, weights = tokens.kept(limit=60, seed=seed)
        assert len(index) == 60 and sum(weights) == pytest.approx(n)
        estimates.append(estimate_summary(1, [tokens.record(i, w) for i, w in zip(index, weights)])["metrics"])
    mean_k3 = sum(e["mismatch/k3"] for e in estimates) / len(estimates)
    assert mean_k3 == pytest.approx(metrics["mismatch/k3"], rel=0.1)
    assert all(e["mismatch/abs_logp_diff_max"] == metrics["mismatch/abs_logp_diff_max"] for e in estimates)
    # Without the weights (records of an older run) the estimate is the biased one.
    unweighted = estimate_summary(1, [{k: v for k, v in tokens.record(i, 1.0).items() if k != "weight"}
                                      for i in tokens.kept(60, 0)[0]])
    assert unweighted["weighted"] is False and unweighted["metrics"]["mismatch/k3"] > 3 * metrics["mismatch/k3"]


def test_older_run_without_summaries_is_estimated_and_said(run_dir, tmp_path):
    old = write_run(tmp_path / "old", steps=1)
    (old / "tokens" / "step_000001.summary.json").unlink()
    report = build(old, 1)
    assert not report["exact"]
    assert "estimated with each record's weight" in render_text(report)


def test_profile_hand_computed():
    a = torch.tensor([-1.0, -2.0, -0.5, -3.0, -1.0])
    b = torch.tensor([-1.0, -2.5, -0.4375, -3.0, -1.5])
    p = mismatch_profile(a, b, positions=torch.tensor([0, 1, 9, 0, 20]), sequence=torch.tensor([0, 0, 0, 1, 1]))
    assert p["delta_hist"]["zero"] == 2
    assert p["delta_hist"]["neg"][-1 - DECADE_MIN] == 2  # Δ = −0.5 twice: decade [1e-1, 1)
    assert p["delta_hist"]["pos"][-2 - DECADE_MIN] == 1  # Δ = +0.0625: decade [1e-2, 1e-1)
    pos = p["by_position"]  # buckets [0, 8), [8, 16), [16, 32)
    assert pos["tokens"] == [3, 1, 1] and pos["sum_delta"] == [-0.5, 0.0625, -0.5]
    assert pos["max_abs"] == [0.5, 0.0625, 0.5]
    length = p["by_length"]  # sequences of 3 and 2 tokens: both in [0, 8)
    assert length["sequences"] == [2] and length["tokens"] == [5]
    assert length["sum_abs_logratio"] == [pytest.approx(0.4375 + 0.5)]


def test_worst_tokens_merged_and_in_context(run_dir):
    report = build(run_dir, 1, top=10)
    worst = report["worst"]
    deltas = [abs(w["delta"]) for w in worst]
    assert deltas == sorted(deltas, reverse=True) and len(worst) == 10
    keys = [(w["token_id"], w["position"], w["rollout_logprob"], w["trainer_logprob"]) for w in worst]
    assert len(set(keys)) == len(keys)  # no row twice
    # Samples 0, 1 and 2 share their first 4 tokens: the largest |Δ|, at position 2, is one row, ×3.
    assert sorted(s for _, s in worst[0]["samples"]) == [0, 1, 2] and worst[0]["count"] == 3
    assert worst[0]["position"] == 2 and worst[0]["delta"] == pytest.approx(-2.0)
    for w in worst:
        assert "before" in w and "after" in w  # the largest carry their context
        if w["position"] < 8:
            assert w["prompt_before"]  # the prompt's tail stands before the first tokens
    text = render_text(report)
    assert text.count("⟦") >= 10 and "identical rows merged" in text


def test_whole_run_report_leaves_sampled_ahead_steps_out_of_distributions(run_dir):
    report = build(run_dir)
    assert report["steps_covered"] == [1, 2, 3] and report["distribution_steps"] == [1, 2]
    assert [r["step"] for r in report["steps"]] == [1, 2, 3] and report["steps"][2]["stale"]
    history = {h["step"]: h for h in read_history(run_dir)}
    assert report["steps"][0]["k3"] == history[1]["mismatch/k3"]
    tokens = sum(r["tokens"] for r in report["by_position"])
    assert tokens == history[1]["mismatch/num_tokens"] + history[2]["mismatch/num_tokens"]
    assert sum(b["count"] for b in report["delta_hist"]) == tokens
    assert [r["correction_masked_frac"] for r in report["corrections"]["steps"]] == pytest.approx([0.1, 0.2, 0.3])
    assert report["corrections"]["correction"] == "icepop"


def test_html_page_is_self_contained_and_complete(run_dir, tmp_path):
    out = tmp_path / "report.html"
    assert cli.main(["mismatch", str(run_dir), "--html", str(out)]) == 0
    page = out.read_text()
    assert check_self_contained(page) >= 6
    for section in ("Over steps", "Distribution of Δ", "Drift against token position", "By sequence length",
                    "Corrections", "Largest |Δ| tokens"):
        assert section in page
    assert page.count("<mark>") >= 20 and "IcePop" in page
    one = tmp_path / "step2.html"
    assert cli.main(["mismatch", str(run_dir), "--step", "2", "--html", str(one)]) == 0
    page = one.read_text()
    check_self_contained(page)
    assert METRIC_DOCS["is_ess"].split(":")[0] in page  # every metric with its meaning


def test_check_catches_a_fetching_page():
    with pytest.raises(AssertionError):
        check_self_contained('<html><img src="https://example.com/x.png"></html>')
    with pytest.raises(ValueError):  # binascii.Error: not base64
        check_self_contained('<html><img src="data:image/png;base64,@@@"></html>')
    with pytest.raises(ET.ParseError):
        check_self_contained("<html><svg><g></svg></html>")


def test_json_for_scripts(run_dir, capsys):
    assert cli.main(["mismatch", str(run_dir), "--step", "1", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    history = {h["step"]: h for h in read_history(run_dir)}
    assert report["summary"]["k3"] == history[1]["mismatch/k3"]
    assert {"steps", "delta_hist", "by_position", "by_length", "corrections", "worst"} <= set(report)


def test_bad_inputs_are_one_line(run_dir, tmp_path, capsys):
    assert cli.main(["mismatch", str(tmp_path)]) == 2
    assert "no per-token records" in capsys.readouterr().err
    assert cli.main(["mismatch", str(run_dir), "--step", "999"]) == 2
    assert "no records for step 999" in capsys.readouterr().err
    broken = write_run(tmp_path / "broken", steps=1)
    path = broken / "tokens" / "step_000001.jsonl"
    path.write_text(path.read_text()[:-40])
    assert cli.main(["mismatch", str(broken)]) == 2
    assert "step_000001.jsonl: line" in capsys.readouterr().err


def test_readme_explains_every_metric():
    """Users asked what token_mult_prob_error and is_ess mean: one README line per metric."""
    text = README.read_text()
    for key in METRIC_DOCS:
        assert f"`{key}`" in text or f"`mismatch/{key}`" in text, key
    for key in ("train/correction_masked_frac", "train/correction_ratio_above_frac", "train/correction_weight_max",
                "train/ppo_ratio_max"):
        assert f"`{key}`" in text, key

