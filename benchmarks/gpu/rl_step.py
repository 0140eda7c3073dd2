"""Whole RL steps on a GPU: runs `lockstep run` on recipes and reports the step split.

For each recipe (with overrides) it starts `python -m rl.cli run` in a subprocess, samples the
GPU's memory in use every 0.5 s (nvidia-smi: the trainer, the engine and everything else on the
card), and reads the run's metrics.jsonl: seconds per step and its split (rollout / reward /
old log-probs / update / sync), rollout tokens per second, held-out accuracy first -> last,
the mismatch (k3, max |Δ log-p|) and the sync probe. The first RL step is reported apart
(warm-up: kernel compilation, allocator growth); the split is the median of the others.

    python -m benchmarks.gpu.rl_step --out $OUT \
        demo=recipes/demo.yaml:trainer.num_ranks=1,schedule.steps=4

Each job is NAME=RECIPE[:override,override,...]; the log of each run lands in OUT/NAME.log.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

SPLIT = ("rollout", "reward", "logprobs", "sleep", "train", "sync")


def gpu_memory_sampler(stop: threading.Event, peak: list[float]) -> None:
    """Largest memory.used (GiB) over all GPUs seen while the run lasts."""
    while not stop.wait(0.5):
        try:
            out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                                 capture_output=True, text=True, timeout=10).stdout
            used = sum(float(x) for x in out.split()) / 1024
            peak[0] = max(peak[0], used)
        except (OSError, ValueError, subprocess.TimeoutExpired):
            pass


def run_logged(cmd: list[str], log_path: Path, timeout: float) -> tuple[int | str, float, float]:
    """Runs `cmd` with its output in `log_path`, sampling GPU memory meanwhile:
    (exit code or "timeout", wall seconds, peak GiB used on the GPUs)."""
    stop, peak = threading.Event(), [0.0]
    threading.Thread(target=gpu_memory_sampler, args=(stop, peak), daemon=True).start()
    start = time.time()
    with open(log_path, "w") as log:
        try:
            rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, timeout=timeout).returncode
        except subprocess.TimeoutExpired:
            rc = "timeout"
    stop.set()
    return rc, time.time() - start, peak[0]


def run_job(name: str, recipe: str, overrides: list[str], out: Path, timeout: float) -> dict:
    cmd = [sys.executable, "-m", "rl.cli", "run", recipe, f"name={name}", *overrides, "--no-resume"]
    print(f"== {name}: {' '.join(cmd[2:])}", flush=True)
    rc, wall, peak = run_logged(cmd, out / f"{name}.log", timeout)
    history = []
    metrics_file = Path("runs") / name / "metrics.jsonl"
    if metrics_file.exists():
        history = [json.loads(line) for line in metrics_file.read_text().splitlines() if line.strip()]
        (out / f"{name}.metrics.jsonl").write_text(metrics_file.read_text())
    return {"name": name, "rc": rc, "wall_s": wall, "gpu_peak_gib": peak, "history": history}


def summarise(job: dict) -> dict:
    steps = [h for h in job["history"] if "time/step" in h]
    evals = [h["eval/accuracy"] for h in job["history"] if "eval/accuracy" in h]
    row = {"name": job["name"], "rc": job["rc"], "wall_s": round(job["wall_s"]), "steps": len(steps),
           "gpu_peak_gib": round(job["gpu_peak_gib"], 1)}
    if steps:
        row["first_step_s"] = round(steps[0]["time/step"], 2)
        rest = steps[1:] or steps
        row["step_s"] = round(statistics.median(h["time/step"] for h in rest), 3)
        for k in SPLIT:
            values = [h.get(f"time/{k}", 0.0) for h in rest]
            row[k] = round(statistics.median(values), 3)
        tps = [h["throughput/rollout_tokens_per_s"] for h in rest if "throughput/rollout_tokens_per_s" in h]
        row["rollout_tok_s"] = round(statistics.median(tps)) if tps else None
        row["k3_max"] = max(h.get("mismatch/k3", 0.0) for h in steps)
        row["abs_logp_diff_max"] = max(h.get("mismatch/abs_logp_diff_max", 0.0) for h in steps)
        row["probe_max"] = max(h.get("sync/probe_max_abs_diff", 0.0) for h in steps)
    if evals:
        row["eval"] = f"{evals[0]:.3f} -> {evals[-1]:.3f}"
    return row


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("jobs", nargs="+", help="NAME=RECIPE[:key=value,key=value]")
    p.add_argument("--out", default=os.environ.get("OUT", "."), help="folder for logs and results.json")
    p.add_argument("--timeout", type=float, default=480, help="seconds per job")
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for job in args.jobs:
        name, spec = job.split("=", 1)
        recipe, _, extra = spec.partition(":")
        result = run_job(name, recipe, [o for o in extra.split(",") if o], out, args.timeout)
        rows.append(summarise(result))
        print(json.dumps(rows[-1]), flush=True)
        if result["rc"] != 0:
            print(f"-- {name} failed ({result['rc']}); last lines of its log:")
            print("\n".join((out / f"{name}.log").read_text().splitlines()[-40:]))
    (out / "results.json").write_text(json.dumps(rows, indent=1))
    return 0 if all(r["rc"] == 0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
