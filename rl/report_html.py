"""`lockstep mismatch RUN --html OUT.html`: the mismatch report (rl.report) as one self-contained
page: inline SVG charts and CSS, no script, nothing fetched, so it opens offline and can be
mailed or attached as it is."""

from __future__ import annotations

import math
from html import escape

from rl.algorithms.mismatch import METRIC_DOCS
from rl.report import steps_note
from rl.svg_charts import bar_chart, fmt, line_chart

STYLE = """
body { font-family: system-ui, sans-serif; margin: 24px auto; max-width: 1100px; color: #222; }
h1 { font-size: 22px; } h2 { font-size: 18px; margin-top: 32px; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; font-size: 13px; margin: 8px 0; }
th, td { border: 1px solid #ddd; padding: 3px 8px; text-align: right; vertical-align: top; }
th { background: #f4f4f4; } td.text, th.text { text-align: left; }
.note { color: #555; font-size: 13px; } .warn { color: #a40; }
.charts { display: flex; flex-wrap: wrap; gap: 12px; align-items: flex-start; }
.ctx { font-family: ui-monospace, monospace; white-space: pre-wrap; text-align: left; max-width: 520px; }
.ctx .prompt { color: #888; } .ctx mark { background: #ffd24d; border: 1px solid #c90; padding: 0 1px; }
"""


def render_html(report: dict) -> str:
    title = f"Mismatch report: {report['run_dir']}"
    parts = [f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{escape(title)}</title>",
             f"<style>{STYLE}</style></head><body>", f"<h1>{escape(title)}</h1>",
             '<p class="note">Δ = b − a: the trainer\'s log-prob b of each sampled token minus the rollout '
             "engine's a (same weights). Every number over all of a step's tokens, as the run logged it, "
             "unless marked otherwise.</p>"]
    if not report["exact"]:
        parts.append('<p class="warn">Some steps have no run-time summary (a run written by an older '
                     "version): their numbers are estimated from the kept records, weighted.</p>")
    parts += over_steps(report)
    if "summary" in report:
        parts += summary_table(report)
    parts += distribution(report)
    parts += by_position(report)
    parts += by_length(report)
    parts += corrections(report)
    parts += worst(report)
    parts.append("</body></html>\n")
    return "\n".join(parts)


def over_steps(report: dict) -> list[str]:
    steps = report["steps"]
    series = {"|k1|": [(r["step"], abs(r["k1"])) for r in steps if "k1" in r],
              "k3": [(r["step"], r["k3"]) for r in steps if "k3" in r],
              "max |Δ|": [(r["step"], r["abs_logp_diff_max"]) for r in steps if "abs_logp_diff_max" in r]}
    stale = [r["step"] for r in steps if r["stale"]]
    out = ["<h2>Over steps</h2>", '<div class="charts">',
           line_chart("k1, k3 and max |Δ| per step", series, "step", "log scale", log_y=True),
           line_chart("Bit-for-bit equal tokens and IS effective sample size",
                      {"bitwise equal frac": [(r["step"], r["bitwise_equal_frac"]) for r in steps
                                              if "bitwise_equal_frac" in r],
                       "is_ess": [(r["step"], r["is_ess"]) for r in steps if "is_ess" in r]},
                      "step", "fraction", y_range=(0.0, 1.0)), "</div>"]
    if stale:
        which = f"Step {stale[0]}" if len(stale) == 1 else f"Steps {', '.join(map(str, stale))}"
        out.append(f'<p class="note">{which} trained samples of older weights (rollout.max_staleness ≥ 1): '
                   "Δ then includes the updates' drift (logged as offpolicy/*).</p>")
    rows = "".join(f"<tr><td>{r['step']}{' (ahead)' if r['stale'] else ''}</td>"
                   + "".join(f"<td>{fmt(r[k]) if k in r else ''}</td>"
                             for k in ("k1", "k3", "abs_logp_diff_max", "abs_logp_diff_mean", "bitwise_equal_frac",
                                       "is_ess", "token_mult_prob_error", "num_tokens"))
                   + "</tr>" for r in steps)
    out.append("<table><tr><th>step</th><th>k1</th><th>k3</th><th>max |Δ|</th><th>mean |Δ|</th>"
               f"<th>bitwise equal</th><th>is_ess</th><th>token_mult_prob_error</th><th>tokens</th></tr>{rows}</table>")
    return out


def doc(key: str) -> str:
    if key in METRIC_DOCS:
        return METRIC_DOCS[key]
    for pattern, text in METRIC_DOCS.items():
        if pattern.endswith("*") and key.startswith(pattern[:-1]):
            return text
    return ""


def summary_table(report: dict) -> list[str]:
    rows = "".join(f"<tr><td class=\"text\">{report['prefix']}/{escape(k)}</td><td>{fmt(v)}</td>"
                   f"<td class=\"text\">{escape(doc(k))}</td></tr>" for k, v in report["summary"].items())
    stale = ('<p class="warn">Sampled ahead: Δ includes one update\'s drift.</p>' if report["stale"] else "")
    return [f"<h2>Step {report['step']}: every metric</h2>", stale,
            f"<table><tr><th class=\"text\">metric</th><th>value</th><th class=\"text\">meaning</th></tr>{rows}</table>"]


def distribution(report: dict) -> list[str]:
    bins = report["delta_hist"]
    total = sum(b["count"] for b in bins) or 1
    # Trim empty decades at both ends, keep the zero bin.
    used = [i for i, b in enumerate(bins) if b["count"] or b["bin"].startswith("0")]
    lo, hi = min(used), max(used)
    shown = bins[lo : hi + 1]
    zero = {i for i, b in enumerate(shown) if b["bin"].startswith("0")}
    chart = bar_chart(f"Distribution of Δ ({steps_note(report)})", [b["bin"] for b in shown],
                      [b["count"] / total for b in shown], "Δ = b − a, by decade of |Δ|", "share of tokens",
                      highlight=zero)
    return ["<h2>Distribution of Δ</h2>", chart,
            f'<p class="note">{fmt(sum(shown[i]["count"] for i in zero) / total)} of the tokens are bit-for-bit equal '
            "(highlighted); fp32 round-off sits around 1e-7, bf16 around 1e-2.</p>"]


def by_position(report: dict) -> list[str]:
    rows = report["by_position"]
    mid = [(r["lo"] * 1.5 if r["lo"] else 4) for r in rows]  # [lo, 2 lo) and [0, 8)
    chart = line_chart(f"Drift along the completion ({steps_note(report)})",
                       {"k3": [(m, r["k3"]) for m, r in zip(mid, rows)],
                        "max |Δ|": [(m, r["max_abs"]) for m, r in zip(mid, rows)]},
                       "token position in the completion (bucket middle)", "log scale", log_y=True, log_x=True)
    table = "".join(f"<tr><td>{r['positions']}</td><td>{r['tokens']}</td><td>{fmt(r['k1'])}</td>"
                    f"<td>{fmt(r['k3'])}</td><td>{fmt(r['max_abs'])}</td></tr>" for r in rows)
    return ["<h2>Drift against token position</h2>", '<div class="charts">', chart,
            f"<table><tr><th>positions</th><th>tokens</th><th>k1</th><th>k3</th><th>max |Δ|</th></tr>{table}</table>",
            "</div>"]


def by_length(report: dict) -> list[str]:
    rows = report["by_length"]
    mid = [(r["lo"] * 1.5 if r["lo"] else 4) for r in rows]
    chart = line_chart(f"By completion length ({steps_note(report)})",
                       {"k3": [(m, r["k3"]) for m, r in zip(mid, rows)],
                        "max |Δ|": [(m, r["max_abs"]) for m, r in zip(mid, rows)],
                        "mean |Σ Δ|": [(m, r["mean_abs_seq_logratio"]) for m, r in zip(mid, rows)]},
                       "completion length in tokens (bucket middle)", "log scale", log_y=True, log_x=True)
    table = "".join(f"<tr><td>{r['lengths']}</td><td>{r['sequences']}</td><td>{r['tokens']}</td>"
                    f"<td>{fmt(r['k3'])}</td><td>{fmt(r['max_abs'])}</td><td>{fmt(r['mean_abs_seq_logratio'])}</td></tr>"
                    for r in rows)
    return ["<h2>By sequence length</h2>",
            '<p class="note">|Σ Δ| is a sequence\'s log importance ratio: what a sequence-level correction '
            "would weigh it by; it grows with length even when each token's Δ does not.</p>",
            '<div class="charts">', chart,
            "<table><tr><th>lengths</th><th>sequences</th><th>tokens</th><th>k3</th><th>max |Δ|</th>"
            f"<th>mean |Σ Δ|</th></tr>{table}</table></div>"]


def corrections(report: dict) -> list[str]:
    c = report["corrections"]
    if c is None:  # no loss ran (a probe of a checkpoint)
        return []
    name = c.get("correction", "unknown")
    what = {"none": "none: the loss takes every token as it is (the ratios below show what a correction would see)",
            "tis": "truncated IS: each token's loss weighed by min(ρ, high); 'ρ > high' is the share it clipped",
            "masked_is": "masked IS: weight ρ inside [low, high], tokens outside dropped ('masked')",
            "icepop": "IcePop: tokens with ρ outside [low, high] dropped ('masked'), the rest weigh 1"}
    head = (f"<p>Correction: <b>{escape(what.get(name, name))}</b>; ρ = exp(b − a) with b the loss's old "
            f"log-probs (algorithm.old_logprobs: {escape(str(c.get('old_logprobs', '?')))})")
    if "correction_low" in c:
        head += f"; bounds [low, high] = [{c['correction_low']}, {c['correction_high']}]"
    head += ". PPO clip: the share of tokens whose gradient the policy ratio's clip removed.</p>"
    if not c["steps"]:
        return ["<h2>Corrections</h2>", head, '<p class="note">No train/correction_* metrics in metrics.jsonl '
                "(a run from before they were logged).</p>"]
    cols = [("correction_masked_frac", "masked"), ("correction_ratio_below_frac", "ρ < low"),
            ("correction_ratio_above_frac", "ρ > high"), ("correction_weight_mean", "w mean"),
            ("correction_weight_max", "w max"), ("correction_ratio_min", "ρ min"), ("correction_ratio_max", "ρ max"),
            ("clip_frac", "PPO clip"), ("ppo_ratio_min", "PPO ratio min"), ("ppo_ratio_max", "PPO ratio max")]
    series = {label: [(r["step"], r[k]) for r in c["steps"] if k in r]
              for k, label in cols[:3] + [("clip_frac", "PPO clip")]}
    chart = line_chart("Share of tokens masked / clipped per step", series, "step", "share of tokens",
                       y_range=(0.0, max([1e-3] + [y for pts in series.values() for _, y in pts])))
    # Ratios and weights sit within ~1e-6 of 1 on aligned engines: enough digits to see it.
    digits = {k: 9 if ("ratio_m" in k or "weight" in k) else 4 for k, _ in cols}
    rows = "".join("<tr><td>" + str(r["step"]) + "</td>" + "".join(
        f"<td>{fmt(r[k], digits[k]) if k in r and math.isfinite(r[k]) else ''}</td>" for k, _ in cols) + "</tr>"
        for r in c["steps"])
    return ["<h2>Corrections</h2>", head, chart,
            "<table><tr><th>step</th>" + "".join(f"<th>{escape(label)}</th>" for _, label in cols)
            + f"</tr>{rows}</table>"]


def worst(report: dict) -> list[str]:
    rows = []
    for w in report["worst"]:
        if "before" in w:
            ctx = (f'<span class="prompt">{escape(w["prompt_before"])}</span>{escape(w["before"])}'
                   f'<mark>{escape(w["token"])}</mark>{escape(w["after"])}')
        else:
            ctx = f"<mark>{escape(w['token'])}</mark>"
        ent = "" if w["entropy"] is None else fmt(w["entropy"])
        rows.append(f"<tr><td>{fmt(w['delta'])}</td><td>{w['rollout_logprob']:.6f}</td>"
                    f"<td>{w['trainer_logprob']:.6f}</td><td>{w['rollout_p']:.4f}</td><td>{w['trainer_p']:.4f}</td>"
                    f"<td>{ent}</td><td>{w['step']}</td><td>{w['position']}</td><td>{w['length'] or ''}</td>"
                    f"<td>{w['count']}</td><td class=\"ctx\">{ctx}</td></tr>")
    return [f"<h2>Largest |Δ| tokens ({escape(steps_note(report))})</h2>",
            '<p class="note">Each token <mark>marked</mark> in its text (grey: the prompt). Samples of a group '
            "that begin alike give the same token the same log-probs: such rows are merged, × counts them "
            "(the text after the token is the first one's).</p>",
            "<table><tr><th>Δ</th><th>rollout a</th><th>trainer b</th><th>p rollout</th><th>p trainer</th>"
            "<th>entropy</th><th>step</th><th>pos</th><th>length</th><th>×</th><th class=\"text\">in its text</th></tr>"
            + "".join(rows) + "</table>"]
