"""`lockstep mismatch RUN`: where the trainer and the rollout engine disagree, token by token.

Reads what each step wrote (rl.token_records): the exact summary of all its tokens
(tokens/step_N.summary.json), the bounded per-token records (tokens/step_N.jsonl), and the
run's metrics.jsonl (the mismatch and the corrections over steps). `build` gathers one report as
plain data (what `--json` prints); `render_text` prints it, `rl.report_html` draws it.

Nothing here re-estimates a step's numbers from its records when the summary is there: the
records are half the largest |Δ|, so their plain mean overstates the mismatch. A run written
before summaries existed gets a weighted estimate (each record's `weight`), said so.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from rl.algorithms.mismatch import (DECADE_MAX, DECADE_MIN, combine_profiles, k3_terms, mismatch_profile,
                                   pow2_bucket_range)
from rl.checkpoint import CheckpointError
from rl.metrics import read_history

PREFIXES = ("mismatch/", "offpolicy/")
# Per-step series drawn over steps, and what the corrections log (rl.update, trainer.worker).
STEP_SERIES = ("k1", "k3", "abs_logp_diff_max", "abs_logp_diff_mean", "bitwise_equal_frac", "is_ess",
               "token_mult_prob_error", "num_tokens")
CORRECTION_METRICS = ("train/correction_masked_frac", "train/correction_ratio_below_frac",
                      "train/correction_ratio_above_frac", "train/correction_weight_mean",
                      "train/correction_weight_max", "train/correction_ratio_min", "train/correction_ratio_max",
                      "train/clip_frac", "train/ppo_ratio_min", "train/ppo_ratio_max")


# ------------------------------------------------------------------------------------------------
# Reading a run


def token_dir(run_dir: Path) -> Path:
    return run_dir / "tokens"


def steps_with_records(run_dir: Path) -> list[int]:
    folder = token_dir(run_dir)
    files = sorted(folder.glob("step_*.jsonl")) if folder.is_dir() else []
    if not files:
        raise CheckpointError(f"{run_dir}: no per-token records (runs/<name>/tokens/step_N.jsonl); "
                              "is this a run directory?")
    return [int(p.stem[5:]) for p in files]


def read_records(run_dir: Path, step: int) -> list[dict]:
    path = token_dir(run_dir) / f"step_{step:06d}.jsonl"
    try:
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: line {e.lineno} is not JSON ({e.msg}); the file is damaged") from None


def read_summary(run_dir: Path, step: int) -> dict:
    """The step's summary as written at run time; for a run older than summaries, an estimate
    from the records weighted by their `weight` (`exact: false`)."""
    path = token_dir(run_dir) / f"step_{step:06d}.summary.json"
    if path.exists():
        try:
            return json.loads(path.read_text()) | {"exact": True}
        except json.JSONDecodeError as e:
            raise CheckpointError(f"{path}: not JSON ({e.msg}); the file is damaged") from None
    return estimate_summary(step, read_records(run_dir, step))


def estimate_summary(step: int, records: list[dict]) -> dict:
    """Horvitz–Thompson estimate from weighted records: each kept record stands for `weight`
    tokens, so weighted sums estimate the step's sums without bias, and the maxima are exact
    (the largest |Δ| are always kept). Records without a weight count once, which overstates
    (they include the largest |Δ|): `weighted: false` says so."""
    stale = any(r.get("stale") for r in records)
    w = torch.tensor([r.get("weight", 1.0) for r in records], dtype=torch.float64)
    a = torch.tensor([r["rollout_logprob"] for r in records], dtype=torch.float32)
    b = torch.tensor([r["trainer_logprob"] for r in records], dtype=torch.float32)
    delta = b.double() - a.double()
    n = float(w.sum())
    metrics = {"k1": float(-(w * delta).sum() / n), "k3": float((w * k3_terms(delta)).sum() / n),
               "abs_logp_diff_mean": float((w * delta.abs()).sum() / n),
               "abs_logp_diff_max": float(delta.abs().max()), "num_tokens": n}
    prefix = "offpolicy/" if stale else "mismatch/"
    profile = mismatch_profile(a, b, torch.tensor([r["position"] for r in records]),
                               torch.tensor([r["sample"] for r in records]), weights=w)
    return {"step": step, "stale": stale, "num_tokens": n, "num_records": len(records),
            "metrics": {prefix + k: v for k, v in metrics.items()}, "profile": profile, "exact": False,
            "weighted": all("weight" in r for r in records)}


def scalars(metrics: dict[str, float]) -> tuple[str, dict[str, float]]:
    """('mismatch' or 'offpolicy', {name without prefix: value}) of a step's mismatch metrics."""
    prefix = next((p for p in PREFIXES if any(k.startswith(p) for k in metrics)), PREFIXES[0])
    return prefix[:-1], {k.removeprefix(prefix): v for k, v in metrics.items()
                         if k.startswith(prefix) and isinstance(v, (int, float)) and math.isfinite(v)}


def run_settings(run_dir: Path) -> dict:
    """The recipe's correction settings, from the run's resolved config.yaml (empty if absent)."""
    path = run_dir / "config.yaml"
    if not path.exists():
        return {}
    import yaml

    algo = (yaml.safe_load(path.read_text()) or {}).get("algorithm", {})
    return {k: algo[k] for k in ("old_logprobs", "correction", "correction_low", "correction_high") if k in algo}


# ------------------------------------------------------------------------------------------------
# The report as data


def build(run_dir: Path, step: int | None = None, top: int = 20, tokenizer=None) -> dict:
    """The report of one step (`step`) or of the whole run (None: every step with records; the
    distributions over the on-policy steps, whose Δ is the engines' mismatch alone)."""
    available = steps_with_records(run_dir)
    if step is not None and step not in available:
        raise CheckpointError(f"{token_dir(run_dir)}: no records for step {step}; steps with records: "
                              f"{available[0]}…{available[-1]}")
    chosen = available if step is None else [step]
    summaries = {s: read_summary(run_dir, s) for s in available}
    on_policy = [s for s in chosen if not summaries[s]["stale"]] or chosen
    records = {s: read_records(run_dir, s) for s in on_policy}
    profile = combine_profiles([summaries[s]["profile"] for s in on_policy])
    history = {h["step"]: h for h in read_history(run_dir)}
    report = {
        "run_dir": str(run_dir),
        "steps_covered": chosen,
        "distribution_steps": on_policy,
        "exact": all(summaries[s]["exact"] for s in chosen),
        "steps": [step_row(s, summaries[s], history.get(s, {})) for s in available],
        "delta_hist": delta_bins(profile["delta_hist"]),
        "by_position": position_rows(profile["by_position"]),
        "by_length": length_rows(profile["by_length"]),
        "corrections": corrections(run_dir, history),
        "worst": worst_tokens([r for s in on_policy for r in records[s]], top, tokenizer),
    }
    if step is not None:
        report["step"] = step
        report["prefix"], report["summary"] = scalars(summaries[step]["metrics"])
        report["stale"] = summaries[step]["stale"]
        report["num_records"] = summaries[step]["num_records"]
    return report


def step_row(step: int, summary: dict, logged: dict) -> dict:
    prefix, values = scalars(summary["metrics"])
    row = {"step": step, "stale": summary["stale"], "exact": summary["exact"]}
    row |= {k: values[k] for k in STEP_SERIES if k in values}
    if "reward/mean" in logged:
        row["reward"] = logged["reward/mean"]
    return row


def delta_bins(hist: dict) -> list[dict]:
    """Signed decades of Δ from the most negative to the most positive, exact zeros between."""
    def label(d: int, sign: str) -> str:
        if d == DECADE_MIN:
            return f"{sign}(0, 1e{d + 1})"
        if d == DECADE_MAX:
            return f"{sign}[1e{d}, ∞)"
        return f"{sign}[1e{d}, 1e{d + 1})"

    decades = range(DECADE_MIN, DECADE_MAX + 1)
    neg = [{"bin": label(d, "−"), "count": hist["neg"][d - DECADE_MIN]} for d in reversed(decades)]
    pos = [{"bin": label(d, "+"), "count": hist["pos"][d - DECADE_MIN]} for d in decades]
    return neg + [{"bin": "0 (equal)", "count": hist["zero"]}] + pos


def position_rows(sums: dict) -> list[dict]:
    rows = []
    for k, n in enumerate(sums.get("tokens", [])):
        if n:
            lo, hi = pow2_bucket_range(k)
            rows.append({"positions": f"{lo}–{hi - 1}", "lo": lo, "tokens": int(n), "k1": -sums["sum_delta"][k] / n,
                         "k3": sums["sum_k3"][k] / n, "max_abs": sums["max_abs"][k]})
    return rows


def length_rows(sums: dict) -> list[dict]:
    rows = []
    for k, n in enumerate(sums.get("sequences", [])):
        if n:
            lo, hi = pow2_bucket_range(k)
            rows.append({"lengths": f"{lo}–{hi - 1}", "lo": lo, "sequences": int(n),
                         "tokens": int(sums["tokens"][k]), "k3": sums["sum_k3"][k] / sums["tokens"][k],
                         "max_abs": sums["max_abs"][k], "mean_abs_seq_logratio": sums["sum_abs_logratio"][k] / n})
    return rows


def corrections(run_dir: Path, history: dict[int, dict]) -> dict:
    """The recipe's correction and, per step, what it masked or clipped (train/correction_*) and
    the PPO clip, as logged."""
    rows = [{"step": s, **{k.removeprefix("train/"): h[k] for k in CORRECTION_METRICS if k in h}}
            for s, h in sorted(history.items()) if any(k in h for k in CORRECTION_METRICS)]
    return {**run_settings(run_dir), "steps": rows}


def worst_tokens(records: list[dict], top: int, tokenizer) -> list[dict]:
    """The `top` largest |Δ| tokens, identical rows merged: the same token with the same two
    log-probs after the same text (a group's completions that share a beginning; log-probs
    depend on what precedes only) is one row with a count, shown with the first one's sequel."""
    ranked = sorted(records, key=lambda r: -abs(r["trainer_logprob"] - r["rollout_logprob"]))
    rows: dict[tuple, dict] = {}
    for r in ranked:
        key = (r["token"], r["position"], r["rollout_logprob"], r["trainer_logprob"], tuple(r.get("before", ())))
        if key in rows:
            rows[key]["count"] += 1
            rows[key]["samples"].append([r["step"], r["sample"]])
            continue
        if len(rows) == top:
            break
        rows[key] = worst_row(r, tokenizer)
    return list(rows.values())


def worst_row(r: dict, tokenizer) -> dict:
    def text(ids: list[int]) -> str:
        if tokenizer is None:
            return "".join(f"⟨{i}⟩" for i in ids)
        return tokenizer.decode(ids)

    a, b = r["rollout_logprob"], r["trainer_logprob"]
    before = r.get("before")
    row = {"delta": b - a, "rollout_logprob": a, "trainer_logprob": b, "rollout_p": math.exp(a),
           "trainer_p": math.exp(b), "entropy": r.get("entropy"), "step": r["step"], "position": r["position"],
           "length": r.get("length"), "token_id": r["token"], "token": text([r["token"]]), "count": 1,
           "samples": [[r["step"], r["sample"]]]}
    if before is not None:
        cut = r.get("before_prompt", 0)
        row |= {"prompt_before": text(before[:cut]), "before": text(before[cut:]), "after": text(r.get("after", []))}
    return row


# ------------------------------------------------------------------------------------------------
# Text


def render_text(report: dict) -> str:
    lines = []
    steps = report["steps"]
    if "step" in report:
        lines.append(f"step {report['step']}: {report['summary'].get('num_tokens', 0):.0f} tokens "
                     f"({report['num_records']} records kept on disk)")
        if report["stale"]:
            lines.append("  sampled by older weights (rollout.max_staleness ≥ 1): the trainer's weights are newer, "
                         "so Δ includes the updates' drift (offpolicy/*)")
        source = report.get("source") or \
            ("every token, as logged in metrics.jsonl" if report["exact"] else estimate_note(report))
        lines.append(f"  {report['prefix']}/* over {source}:")
        lines += [f"  {k:<32} {v:.3e}" for k, v in report["summary"].items()]
    else:
        lines.append(f"{len(steps)} steps with records (`--step N` for one step's every metric)")
        if not report["exact"]:
            lines.append(f"  some steps: {estimate_note(report)}")
    lines.append(f"\n{'step':>5} {'k1':>10} {'k3':>10} {'max |Δ|':>10} {'bitwise=':>9} {'is_ess':>8} {'tokens':>7}")
    def cell(row: dict, key: str, width: int, spec: str) -> str:
        return f"{row[key]:>{width}{spec}}" if key in row else f"{'-':>{width}}"

    for row in steps:
        mark = " (sampled ahead)" if row["stale"] else ""
        lines.append(f"{row['step']:>5} {cell(row, 'k1', 10, '.2e')} {cell(row, 'k3', 10, '.2e')} "
                     f"{cell(row, 'abs_logp_diff_max', 10, '.2e')} {cell(row, 'bitwise_equal_frac', 9, '.3f')} "
                     f"{cell(row, 'is_ess', 8, '.5f')} {cell(row, 'num_tokens', 7, '.0f')}{mark}")
    lines.append(f"\ndrift by token position ({steps_note(report)}):")
    lines.append(f"  {'positions':>10} {'tokens':>7} {'k1':>10} {'k3':>10} {'max |Δ|':>10}")
    lines += [f"  {r['positions']:>10} {r['tokens']:>7} {r['k1']:>10.2e} {r['k3']:>10.2e} {r['max_abs']:>10.2e}"
              for r in report["by_position"]]
    lines.append("by completion length:")
    lines.append(f"  {'lengths':>10} {'seqs':>7} {'k3':>10} {'max |Δ|':>10} {'mean |Σ Δ|':>11}")
    lines += [f"  {r['lengths']:>10} {r['sequences']:>7} {r['k3']:>10.2e} {r['max_abs']:>10.2e} "
              f"{r['mean_abs_seq_logratio']:>11.2e}" for r in report["by_length"]]
    if report["corrections"] is not None:  # None: no loss ran (a probe of a checkpoint)
        lines += correction_lines(report["corrections"])
    lines.append(f"\nlargest |Δ| (identical rows merged; ⟦token⟧ in its text; {steps_note(report)}):")
    lines.append(f"{'Δ = b − a':>10} {'rollout a':>10} {'trainer b':>10} {'entropy':>8} {'step':>5} {'pos':>5} "
                 f"{'×':>3}  text")
    for w in report["worst"]:
        ent = "" if w["entropy"] is None else f"{w['entropy']:.3f}"
        lines.append(f"{w['delta']:>10.2e} {w['rollout_logprob']:>10.5f} {w['trainer_logprob']:>10.5f} {ent:>8} "
                     f"{w['step']:>5} {w['position']:>5} {w['count']:>3}  {in_context(w)}")
    return "\n".join(lines)


def estimate_note(report: dict) -> str:
    return ("the records kept (no run-time summary: an older run; estimated with each record's weight, "
            "maxima exact)")


def steps_note(report: dict) -> str:
    if "step" in report:
        return f"step {report['step']}"
    left_out = len(report["steps_covered"]) - len(report["distribution_steps"])
    note = f"{len(report['distribution_steps'])} steps"
    return note + (f"; {left_out} sampled-ahead steps left out" if left_out else "")


def in_context(w: dict) -> str:
    """The token ⟦marked⟧ between its neighbours, on one line (newlines shown as ⏎)."""
    def flat(s: str) -> str:
        return s.replace("\n", "⏎")

    if "before" not in w:
        return f"⟦{flat(w['token'])}⟧"
    prompt = f"{flat(w['prompt_before'])}│" if w["prompt_before"] else ""
    return f"{prompt}{flat(w['before'])}⟦{flat(w['token'])}⟧{flat(w['after'])}"


def correction_lines(c: dict) -> list[str]:
    name = c.get("correction", "?")
    head = f"\ncorrection: {name}"
    if name != "none" and "correction_low" in c:
        head += f" (ratio bounds [{c['correction_low']}, {c['correction_high']}])"
    head += f"; old log-probs: {c.get('old_logprobs', '?')}"
    lines = [head]
    if not c["steps"]:
        return lines + ["  (no train/correction_* metrics in metrics.jsonl)"]
    cols = ("correction_masked_frac", "correction_ratio_above_frac", "correction_weight_max", "clip_frac")
    lines.append(f"  {'step':>5} {'masked':>8} {'ρ>high':>8} {'w max':>9} {'ppo clip':>9}")
    for row in c["steps"]:
        vals = [f"{row[k]:.4g}" if k in row else "" for k in cols]
        lines.append(f"  {row['step']:>5} {vals[0]:>8} {vals[1]:>8} {vals[2]:>9} {vals[3]:>9}")
    return lines
