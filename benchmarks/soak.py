"""Soak benchmark (issue 21; not in CI): a run of a recipe with an actor or the driver killed every
~K steps, against the same run without faults, both in one invocation.

    python -m benchmarks.soak [RECIPE] [key.sub=value ...] [--steps 200] [--kill-every 20] [--seed 0]
                              [--victims trainer,rollout,driver] [--output-dir DIR]

RECIPE defaults to recipes/demo.yaml; overrides apply to every run (the SFT one included).

1. The SFT warm start runs once (`schedule.steps=0`); its export is copied into both runs'
   folders, where the warm start reuses it, so neither run's wall time includes SFT.
2. Without faults: `lockstep run RECIPE schedule.steps=N ray.address=local`, a subprocess with
   its own Ray instance, timed from launch to exit.
3. With faults: the same command. Each time its progress line reaches the next kill step (kill
   steps K apart ± K/2, seeded), one victim chosen at random is SIGKILLed by pid: a trainer rank or
   the rollout engine (the run restarts it in place), or the driver together with every process
   it started (a lost node; then the same command runs again and resumes from the last
   checkpoint). Exit 75 (faults.max_restarts spent) is answered the same way, as a scheduler
   requeues the job. Timed from the first launch to the last exit.
4. Report: faults by victim, restarts the run made itself, driver re-runs, steps completed more
   than once (their records superseded), steps lost without a record (steps 1..N lacking exactly
   one record in metrics.jsonl: must be 0), steps trained on other prompts than the run without
   faults (data/prompt_hash: must be 0), wall times and their ratio (target ≤ 1.10).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import psutil

from benchmarks.harness import environment, load_average

REPO = Path(__file__).resolve().parents[1]
STEP_LINE = re.compile(r"^step\s+(\d+)/(\d+)")
ACTOR_TITLES = {"trainer": "ray::TrainerRank", "rollout": "ray::RolloutWorker"}
EXIT_REQUEUE = 75  # rl.exit_codes.ACTOR_FAILED (not imported: this script only drives the CLI)


@dataclass
class Tally:
    """What one variant's command(s) did."""

    seconds: float = 0.0
    launches: int = 0
    exit_codes: list[int] = field(default_factory=list)
    faults: dict[str, int] = field(default_factory=lambda: {"trainer": 0, "rollout": 0, "driver": 0})
    fault_steps: list[str] = field(default_factory=list)  # "step 12: trainer rank pid 345"
    restarts_in_run: dict[str, int] = field(default_factory=lambda: {"rollout": 0, "trainer": 0})
    step_lines: int = 0  # completed steps seen, redone ones included


def command(recipe: str, overrides: list[str], output_dir: Path, name: str, steps: int) -> list[str]:
    return [sys.executable, "-m", "rl.cli", "run", recipe, *overrides, f"name={name}", f"output_dir={output_dir}",
            f"schedule.steps={steps}", "ray.address=local"]


def descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def actor_processes(driver: int, kind: str) -> list[psutil.Process]:
    found = []
    for p in descendants(driver):
        try:
            if " ".join(p.cmdline()).startswith(ACTOR_TITLES[kind]):
                found.append(p)
        except psutil.Error:
            continue
    return found


def kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL the driver and every process it started (what a lost node does to them)."""
    tree = descendants(proc.pid)
    proc.kill()
    for p in tree:
        try:
            p.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(tree, timeout=30)


def run_variant(cmd: list[str], log_dir: Path, kill_steps: list[int], rng: random.Random,
                victims: list[str]) -> Tally:
    """Runs `cmd` until it exits 0, killing a victim at each step of `kill_steps` (empty: none)."""
    tally, pending = Tally(), list(kill_steps)
    start = time.monotonic()
    while True:
        tally.launches += 1
        log = (log_dir / f"launch{tally.launches}.stderr").open("w")
        out_log = (log_dir / f"launch{tally.launches}.stdout").open("w")
        # A loaded machine can take Ray past its 10 s for the local raylet to register.
        env = {"RAY_raylet_start_wait_time_s": "120", **os.environ, "PYTHONUNBUFFERED": "1"}
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, text=True, cwd=REPO, env=env)
        driver_killed = False
        for line in proc.stdout:
            out_log.write(line)
            out_log.flush()
            if "restarting the rollout engines" in line:
                tally.restarts_in_run["rollout"] += 1
            elif "restarting the trainer group" in line:
                tally.restarts_in_run["trainer"] += 1
            match = STEP_LINE.match(line)
            if not match:
                continue
            tally.step_lines += 1
            step = int(match.group(1))
            if not pending or step < pending[0]:
                continue
            pending.pop(0)
            victim = rng.choice(victims)
            if victim == "driver":
                tally.fault_steps.append(f"step {step}: driver pid {proc.pid} and its processes")
                kill_tree(proc)
                driver_killed = True
                break
            actors = actor_processes(proc.pid, victim)
            if not actors:  # none to be found right now (mid-restart): the driver instead
                tally.fault_steps.append(f"step {step}: driver pid {proc.pid} (no {victim} process found)")
                kill_tree(proc)
                driver_killed = True
                break
            target = rng.choice(actors)
            tally.fault_steps.append(f"step {step}: {victim} pid {target.pid} ({' '.join(target.cmdline())[:40]})")
            target.kill()
            tally.faults[victim] += 1
        code = proc.wait()
        out_log.close()
        log.close()
        if driver_killed:
            tally.faults["driver"] += 1
            code = -9
        tally.exit_codes.append(code)
        if code == 0:
            break
        if code not in (-9, EXIT_REQUEUE) or tally.launches > 50:
            raise SystemExit(f"soak: {' '.join(cmd)} exited {code} (launch {tally.launches}); "
                             f"its stderr: {log.name}")
    tally.seconds = time.monotonic() - start
    return tally


def step_records(run_dir: Path) -> dict[int, list[dict]]:
    """The RL step records of metrics.jsonl by step (step 0's evaluation has no prompt hash)."""
    by_step: dict[int, list[dict]] = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if "data/prompt_hash" in record:
            by_step.setdefault(record["step"], []).append(record)
    return by_step


def superseded_steps(run_dir: Path) -> int:
    path = run_dir / "metrics.superseded.jsonl"
    if not path.exists():
        return 0
    return sum("data/prompt_hash" in json.loads(line) for line in path.read_text().splitlines())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("recipe", nargs="?", default=str(REPO / "recipes" / "demo.yaml"))
    ap.add_argument("overrides", nargs="*", help="key.sub=value for every run")
    ap.add_argument("--steps", type=int, default=200, help="RL steps of each run (default 200)")
    ap.add_argument("--kill-every", type=int, default=20, help="steps between kills, on average (default 20)")
    ap.add_argument("--victims", default="trainer,rollout,driver",
                    help="what may be killed, comma-separated (default: trainer,rollout,driver)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the kill steps and victims")
    ap.add_argument("--output-dir", default=None, help="where the runs go (default: a temporary folder, kept)")
    args = ap.parse_args()
    if "=" in args.recipe:  # only overrides were given
        args.recipe, args.overrides = str(REPO / "recipes" / "demo.yaml"), [args.recipe, *args.overrides]
    out = Path(args.output_dir or tempfile.mkdtemp(prefix="lockstep-soak-")).resolve()
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(args.seed)
    victims = args.victims.split(",")
    kill_steps, step = [], 0
    while True:
        step += rng.randint(max(1, args.kill_every // 2), args.kill_every + args.kill_every // 2)
        if step >= args.steps:
            break
        kill_steps.append(step)
    print(f"soak: {args.recipe}, {args.steps} steps, kills after steps {kill_steps}, in {out}", flush=True)
    env_before = environment()

    # 1. SFT once, shared.
    sft_log = out / "sft-logs"
    sft_log.mkdir(exist_ok=True)
    sft_time = run_variant(command(args.recipe, args.overrides, out, "sft", 0), sft_log, [], rng, victims).seconds
    for name in ("no-faults", "faults"):
        run_dir = out / name
        shutil.rmtree(run_dir, ignore_errors=True)
        (run_dir / "logs").mkdir(parents=True)
        if (out / "sft" / "sft").exists():
            shutil.copytree(out / "sft" / "sft", run_dir / "sft")
    print(f"soak: SFT warm start {sft_time:.0f} s (shared, not counted)", flush=True)

    # 2. and 3.
    load_start = load_average()
    base = run_variant(command(args.recipe, args.overrides, out, "no-faults", args.steps), out / "no-faults" / "logs", [], rng,
                       victims)
    print(f"soak: without faults {base.seconds:.0f} s", flush=True)
    faulty = run_variant(command(args.recipe, args.overrides, out, "faults", args.steps), out / "faults" / "logs", kill_steps, rng,
                         victims)
    print(f"soak: with faults {faulty.seconds:.0f} s", flush=True)

    # 4. Every step once, on the prompts of the run without faults.
    reference, got = step_records(out / "no-faults"), step_records(out / "faults")
    lost = [s for s in range(1, args.steps + 1) if len(got.get(s, [])) == 0]
    duplicated = [s for s in range(1, args.steps + 1) if len(got.get(s, [])) > 1]
    other_prompts = [s for s in range(1, args.steps + 1) if got.get(s) and reference.get(s)
                     and got[s][0]["data/prompt_hash"] != reference[s][0]["data/prompt_hash"]]
    report = {
        "recipe": args.recipe, "overrides": args.overrides, "steps": args.steps, "kill_every": args.kill_every, "seed": args.seed,
        "kill_steps": kill_steps, "faults": faulty.faults, "fault_log": faulty.fault_steps,
        "restarts_in_run": faulty.restarts_in_run, "driver_launches": faulty.launches,
        "exit_codes": faulty.exit_codes,
        "steps_completed_again": faulty.step_lines - args.steps,
        "superseded_step_records": superseded_steps(out / "faults"),
        "steps_lost_without_record": lost, "steps_duplicated": duplicated,
        "steps_on_other_prompts": other_prompts,
        "wall_s_no_faults": round(base.seconds, 1), "wall_s_faults": round(faulty.seconds, 1),
        "ratio": round(faulty.seconds / base.seconds, 3), "target_ratio": 1.10,
        "load_average": [load_start, load_average()], "environment": env_before,
        "output_dir": str(out),
    }
    (out / "soak.json").write_text(json.dumps(report, indent=1))
    print(f"\n== soak: {args.steps} steps, {sum(faulty.faults.values())} faults "
          f"({', '.join(f'{k} {v}' for k, v in faulty.faults.items())}) ==")
    for line in faulty.fault_steps:
        print(f"  {line}")
    print(f"restarts in the run       rollout {faulty.restarts_in_run['rollout']}, "
          f"trainer {faulty.restarts_in_run['trainer']}; driver launches {faulty.launches} "
          f"(exit codes {faulty.exit_codes})")
    print(f"steps completed again     {report['steps_completed_again']} "
          f"({report['superseded_step_records']} step records superseded)")
    print(f"steps lost without record {len(lost)} {lost or ''}  (must be 0)")
    print(f"steps duplicated          {len(duplicated)}; on other prompts than without faults "
          f"{len(other_prompts)}")
    print(f"wall time                 {base.seconds:.0f} s without faults, {faulty.seconds:.0f} s with: "
          f"ratio {report['ratio']:.2f} (target ≤ 1.10)")
    print(f"report                    {out / 'soak.json'}")


if __name__ == "__main__":
    main()
