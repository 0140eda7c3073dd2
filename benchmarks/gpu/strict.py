"""Strict mode on a GPU (issue 20): bitwise-equal log-probs and what they cost.

Runs `lockstep run` four times on the same card, one after another: the demo recipe and the GPU
Ring-linear recipe, both in bf16, each in fast mode and in `mode=strict`, 3 RL steps each (no SFT
warm start, a 16-problem eval).  Prints, per strict step, `mismatch/bitwise_equal_frac` and
`mismatch/abs_logp_diff_max` (the acceptance: 1.0 and 0 at every step), and per recipe the
strict/fast step-time ratio — the median of the steps after the first (the first compiles the
Triton kernels), rollout and update apart.  About 8 minutes on an H100:

    python -m benchmarks.gpu.strict --out $OUT            (or: --only ring)

Logs, metrics.jsonl files and results.json land in OUT (benchmarks.gpu.rl_step runs each job).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

from benchmarks.gpu.rl_step import run_job

RECIPES = {
    "demo": ("recipes/demo.yaml", ["trainer.num_ranks=1", "model.dtype=bfloat16"]),
    "ring": ("recipes/gpu_ring.yaml", []),
}
COMMON = ["schedule.steps=3", "sft.steps=0", "schedule.eval_every=0", "schedule.eval_limit=16",
          "schedule.save_every=0"]


def median_after_first(steps: list[dict], key: str) -> float | None:
    values = [h[key] for h in steps[1:] or steps if key in h]
    return statistics.median(values) if values else None


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=os.environ.get("OUT", "."), help="folder for logs and results.json")
    p.add_argument("--only", choices=sorted(RECIPES), action="append", help="run these recipes only")
    p.add_argument("--timeout", type=float, default=150, help="seconds per run")
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows, ok = [], True
    for recipe_name in args.only or list(RECIPES):
        recipe, overrides = RECIPES[recipe_name]
        steps = {}
        for mode in ("fast", "strict"):
            name = f"{recipe_name}-{mode}"
            job = run_job(name, recipe, [*overrides, *COMMON, f"mode={mode}"], out, args.timeout)
            steps[mode] = [h for h in job["history"] if "time/step" in h]
            ok &= job["rc"] == 0 and len(steps[mode]) == 3
            if job["rc"] != 0:
                print(f"-- {name} failed ({job['rc']}); last lines of its log:")
                print("\n".join((out / f"{name}.log").read_text().splitlines()[-30:]))
        for i, h in enumerate(steps["strict"], 1):
            print(f"{recipe_name} strict step {i}: bitwise_equal_frac {h.get('mismatch/bitwise_equal_frac')} "
                  f"abs_logp_diff_max {h.get('mismatch/abs_logp_diff_max')} step {h['time/step']:.2f} s", flush=True)
        row = {"recipe": recipe_name, "strict_bitwise_equal_frac": [h.get("mismatch/bitwise_equal_frac")
                                                                     for h in steps["strict"]],
               "strict_abs_logp_diff_max": [h.get("mismatch/abs_logp_diff_max") for h in steps["strict"]],
               "fast_abs_logp_diff_max": [h.get("mismatch/abs_logp_diff_max") for h in steps["fast"]],
               "strict_cuda_fallback_calls": [h.get("strict/cuda_fallback_calls") for h in steps["strict"]]}
        for key in ("time/step", "time/rollout", "time/train"):
            fast, strict = median_after_first(steps["fast"], key), median_after_first(steps["strict"], key)
            row[key] = {"fast_s": fast, "strict_s": strict,
                        "strict_over_fast": round(strict / fast, 3) if fast and strict else None}
        print(json.dumps(row), flush=True)
        rows.append(row)
        ok &= all(f == 1.0 for f in row["strict_bitwise_equal_frac"]) and \
            all(d == 0.0 for d in row["strict_abs_logp_diff_max"])
    (out / "strict_results.json").write_text(json.dumps(rows, indent=1))
    print("acceptance (bitwise at every strict step):", "yes" if ok else "NO")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
