"""Asynchronous rollout on CPU (issue 24): samples per hour and held-out accuracy of one recipe at
rollout.max_staleness 0, 1, 2 and with partial rollouts, in one invocation.

    python -m benchmarks.rl.async_cpu [RECIPE] [key.sub=value ...] [--steps 20]
                                      [--variants k0,k1,k2,partial] [--output-dir DIR]

RECIPE defaults to recipes/demo.yaml; overrides apply to every run. The heavy tail comes from
the recipe's own lengths: the default adds `rollout.max_new_tokens=128` (the demo's answers are
short, but an undertrained policy rambles on to the cap now and then), so a step that waits
for its longest sample waits for a rambler. The GPU benchmark (benchmarks/gpu/async.py) runs
this same code on the GPU recipe.

1. The SFT warm start runs once (`schedule.steps=0`); its export is copied into every variant's
   folder, where the warm start reuses it: no variant's time includes SFT.
2. Each variant: `lockstep run RECIPE schedule.steps=N schedule.eval_every=N ray.address=local`
   with its own settings, a subprocess with its own Ray instance.
3. Report, from each run's metrics.jsonl: seconds of the RL steps (Σ time/step: start-up and
   evaluation excluded), samples trained per hour, ratio to staleness 0, held-out accuracy
   before → after, mean token lag and the groups dropped or resampled.
The variants run one after the other on the same cores: compare them within one invocation.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.harness import header, markdown_table

VARIANTS = {
    "k0": ["rollout.max_staleness=0"],
    "k1": ["rollout.max_staleness=1"],
    "k2": ["rollout.max_staleness=2"],
    "partial": ["rollout.max_staleness=2", "rollout.partial=true"],
}
DEFAULT_OVERRIDES = ["rollout.max_new_tokens=128"]


def command(recipe: str, overrides: list[str], out: Path, name: str, steps: int) -> list[str]:
    return [sys.executable, "-m", "rl.cli", "run", recipe, *overrides, f"name={name}", f"output_dir={out}",
            f"schedule.steps={steps}", f"schedule.eval_every={max(steps, 1)}", "ray.address=local"]


def run(cmd: list[str], log: Path) -> float:
    start = time.time()
    with log.open("w") as f:
        code = subprocess.call(cmd, stdout=f, stderr=subprocess.STDOUT)
    if code:
        raise SystemExit(f"async_cpu: {' '.join(cmd)} exited {code}; see {log}")
    return time.time() - start


def summarise(run_dir: Path, samples_per_step: int) -> dict:
    history = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    steps = [h for h in history if "time/step" in h]
    evals = [h["eval/accuracy"] for h in history if "eval/accuracy" in h]
    seconds = sum(h["time/step"] for h in steps)
    return {
        "steps": len(steps),
        "rl_seconds": seconds,
        "samples_per_hour": len(steps) * samples_per_step * 3600 / max(seconds, 1e-9),
        "accuracy_before": evals[0] if evals else None,
        "accuracy_after": evals[-1] if evals else None,
        "lag_mean": sum(h.get("offpolicy/lag_mean", h.get("rollout/staleness", 0.0)) for h in steps) / max(len(steps), 1),
        "dropped_or_resampled": sum(h.get("offpolicy/dropped_groups", 0) + h.get("offpolicy/resampled_groups", 0)
                                    for h in steps),
    }


def main(recipe: str = "recipes/demo.yaml", overrides: list[str] = DEFAULT_OVERRIDES, title: str = "CPU") -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipe", nargs="?", default=recipe)
    parser.add_argument("overrides", nargs="*", default=overrides)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--variants", default="k0,k1,k2,partial")
    parser.add_argument("--output-dir", type=Path, default=None)
    args = parser.parse_args()
    variants = args.variants.split(",")
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise SystemExit(f"async_cpu: unknown variants {unknown}; known: {', '.join(VARIANTS)}")
    out = args.output_dir or Path(tempfile.mkdtemp(prefix="async-bench-"))
    out.mkdir(parents=True, exist_ok=True)
    print(header(f"asynchronous rollout ({title})", ("torch", "vllm", "ray", "deepspeed")), flush=True)

    from rl.config import load_recipe

    cfg = load_recipe(args.recipe, args.overrides)
    samples_per_step = cfg.rollout.prompts_per_step * cfg.rollout.group_size
    sft_seconds = run(command(args.recipe, args.overrides, out, "sft", 0), out / "sft.log")
    print(f"async_cpu: SFT warm start {sft_seconds:.0f} s (shared, not counted)", flush=True)
    rows = []
    for name in variants:
        run_dir = out / name
        shutil.rmtree(run_dir, ignore_errors=True)
        run_dir.mkdir(parents=True)
        if (out / "sft" / "sft").exists():
            shutil.copytree(out / "sft" / "sft", run_dir / "sft")
        wall = run(command(args.recipe, args.overrides + VARIANTS[name], out, name, args.steps), out / f"{name}.log")
        result = summarise(run_dir, samples_per_step) | {"variant": name, "wall_seconds": wall}
        print(f"async_cpu: {name}: {json.dumps(result)}", flush=True)
        rows.append(result)
    base = next((r for r in rows if r["variant"] == "k0"), rows[0])
    print(markdown_table(
        ["variant", "steps", "RL s", "samples/h", "÷ " + base["variant"], "acc before → after", "lag mean",
         "dropped/resampled"],
        [[r["variant"], r["steps"], r["rl_seconds"], r["samples_per_hour"],
          r["samples_per_hour"] / base["samples_per_hour"],
          f"{r['accuracy_before']} → {r['accuracy_after']}", r["lag_mean"], r["dropped_or_resampled"]] for r in rows],
        digits=3))
    (out / "results.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
