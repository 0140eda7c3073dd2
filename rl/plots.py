"""A run's curves in one PNG (`<run_dir>/curves.png`): mean reward, held-out accuracy (every
held-out set) and the trainer/rollout mismatch k3 over RL steps, and the SFT loss over SFT steps
when the run had a warm start.  Written at the end of every run beside `summary.json`, and by
`lockstep plot RUN_DIR` for any run, also one still training (it reads metrics.jsonl as far as
it is written).

matplotlib is a dependency of Lockstep; where it is missing the plot is skipped with one line
saying so (:class:`PlotUnavailable`), never a crash.  Drawn with matplotlib's object API and the
Agg canvas: no pyplot state, no display needed.
"""

from __future__ import annotations

import math
from pathlib import Path

from rl.metrics import read_history

PLOT_FILE = "curves.png"


class PlotUnavailable(RuntimeError):
    """The plot cannot be drawn: matplotlib missing, or nothing logged yet (the message says which)."""


def _series(history: list[dict], key: str, axis: str = "step") -> tuple[list[float], list[float]]:
    points = [(h[axis], h[key]) for h in history
              if axis in h and isinstance(h.get(key), (int, float)) and math.isfinite(h[key])]
    return [p[0] for p in points], [p[1] for p in points]


def plot_run(run_dir: Path, out: Path | None = None) -> Path:
    """Draws the run's curves into ``out`` (default ``<run_dir>/curves.png``) and returns its path."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise PlotUnavailable("matplotlib is not installed (pip install matplotlib)") from None
    rl, sft = read_history(run_dir), read_history(run_dir, axis="sft/step")
    if not rl and not sft:
        raise PlotUnavailable(f"{run_dir / 'metrics.jsonl'}: no metrics logged yet")
    # eval/accuracy is the first held-out set's; with several sets, one curve per set
    per_set = sorted({k for h in rl for k in h if k.startswith("eval/") and k.count("/") == 2
                      and k.endswith("/accuracy")})
    accuracy = [(k, "step", k.split("/")[1]) for k in per_set] or [("eval/accuracy", "step", "accuracy")]
    k3_key = "offpolicy/k3" if any("offpolicy/k3" in h for h in rl) else "mismatch/k3"
    panels = ([("SFT loss", [("sft/loss", "sft/step", "loss")], False)] if sft else []) + [
        ("mean reward", [("reward/mean", "step", "reward")], False),
        ("held-out accuracy", accuracy, False),
        ("mismatch k3" + (" (1 step stale)" if k3_key == "offpolicy/k3" else ""), [(k3_key, "step", "k3")], True),
    ]
    fig = Figure(figsize=(4.2 * len(panels), 3.4), layout="constrained")
    FigureCanvasAgg(fig)
    for i, (title, curves, log_scale) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), i + 1)
        drawn = 0
        for key, axis, label in curves:
            xs, ys = _series(sft if axis == "sft/step" else rl, key, axis)
            if xs:
                ax.plot(xs, ys, marker="o" if len(xs) < 30 else None, markersize=3, label=label)
                drawn += 1
        if log_scale and drawn and all(y > 0 for line in ax.get_lines() for y in line.get_ydata()):
            ax.set_yscale("log")
        if not drawn:
            ax.text(0.5, 0.5, "not logged yet", ha="center", va="center", transform=ax.transAxes, color="gray")
        if drawn > 1:
            ax.legend(fontsize="small")
        ax.set_title(title)
        ax.set_xlabel("SFT step" if curves[0][1] == "sft/step" else "RL step")
        ax.grid(alpha=0.3)
    steps = sum("reward/mean" in h for h in rl)
    fig.suptitle(f"{run_dir.name}: {steps} RL steps" + (f", {len(sft)} SFT steps" if sft else ""))
    out = Path(out) if out is not None else run_dir / PLOT_FILE
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    return out
