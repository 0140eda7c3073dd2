"""RL step benchmark on CPU: Lockstep's dense demo recipe against TRL's GRPOTrainer, same task.

    python -m benchmarks.rl.step_cpu [RECIPE] [--steps 8] [--warmup 2] [--output-dir DIR] [--trl-threads 2,1]

One run measures both sides (DESIGN.md §9: the anchor is measured in the same run):

1. Lockstep: RECIPE (default `recipes/demo_dense.yaml`: demo:arith-micro, synthetic:arithmetic-noisy,
   16 prompts x group 8, max_new_tokens 40, temperature 1.0, vLLM CPU rollout workers, 2
   DeepSpeed ranks on CPU, math reward in the process pool) with `sft.steps=0` (RL from the
   model's own checkpoint, so
   both sides start from the same weights; the dense demo, not the default Ring-linear one, because
   TRL samples with transformers `generate`, which needs the KV cache that the Ring-linear training
   model does not have), no evaluation, no periodic checkpoints. It runs on
   a fresh local Ray instance of its own (never one another process started) that is shut down
   at the end. Per-step times come from `runs/<name>/metrics.jsonl` (`time/*`); the wall time of
   `Run.rl_step` as a whole is recorded beside them (`time/step` is the driver's own wall time
   of the step, bookkeeping included). `time/logprobs` is the separate trainer log-prob pass,
   0 when the recipe makes one optimiser step per RL step and the update's forward yields them.
2. TRL (the anchor, what users would pick instead): `GRPOTrainer`, single process, CPU,
   transformers `generate` (TRL's default backend; no vLLM), same checkpoint directory, same
   prompts ("Q: {prompt}\\nA:"), 128 completions per step (16 prompts x 8 generations, one
   optimizer step per generation), max_completion_length 40, temperature 1.0, lr 2e-4 constant,
   clip 0.2 / 0.28, beta 0, reward `MathReward().score(completion, answer).value` in-process.
   A TrainerCallback times on_step_begin -> on_step_end (generation, reward and the update all
   happen in between); generation and reward are also timed inside by wrapping the trainer's
   `_generate` and `_calculate_rewards`. TRL runs once per `--trl-threads` entry (torch's
   default thread count, then 1): on a loaded 2-core machine a 2-thread OpenMP team loses most
   of its time waiting for a descheduled thread (transformers `generate` 10-20x slower), while
   Lockstep's actors run one thread each; the anchor is the fastest TRL run.

The first `--warmup` steps of each side are dropped; the table shows medians of the rest.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from benchmarks.harness import environment, load_average, median

REPO = Path(__file__).resolve().parents[2]

DEFAULT_RECIPE = REPO / "recipes" / "demo_dense.yaml"
PHASES = ["rollout", "reward", "logprobs", "train", "sync"]



def recipe(path: Path, steps: int, output_dir: Path):
    from rl.config import load_recipe

    overrides = [
        "name=lockstep",
        f"output_dir={output_dir}",
        "sft.steps=0",
        f"schedule.steps={steps}",
        "schedule.eval_every=0",
        "schedule.save_every=0",
        "data.eval=null",  # no held-out evaluation before / after (not part of a step)
    ]
    return load_recipe(path, overrides), overrides


# -------------------------------------------------------------------------------------------
# Lockstep


def run_lockstep(recipe_path: Path, steps: int, warmup: int, output_dir: Path) -> dict:
    import ray

    from rl.driver import Run
    from rl.placement import ACTOR_ENV

    cfg, overrides = recipe(recipe_path, steps, output_dir)

    class TimedRun(Run):
        """Records the wall time of the whole `rl_step` beside the driver's own phase times."""

        def rl_step(self):
            t = time.perf_counter()
            metrics = super().rl_step()
            metrics["bench/rl_step_wall"] = time.perf_counter() - t
            return metrics

    t0 = time.perf_counter()
    # A private local instance, even if a `ray start` cluster runs here: timings of our own.
    ray.init(address="local", include_dashboard=False, runtime_env={"env_vars": ACTOR_ENV})
    try:
        TimedRun(cfg, resume=False).train()
    finally:
        ray.shutdown()
    total = time.perf_counter() - t0

    rows = [json.loads(line) for line in (cfg.run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    rows = sorted((r for r in rows if "time/step" in r), key=lambda r: r["step"])
    kept = rows[warmup:]
    if not kept:
        raise SystemExit(f"lockstep: {len(rows)} steps recorded, none left after {warmup} warm-up steps")
    out = {f"time/{p}": median([r.get(f"time/{p}", 0.0) for r in kept]) for p in PHASES + ["step"]}
    out["wall/rl_step"] = median([r["bench/rl_step_wall"] for r in kept])
    out["per_step"] = [{k: r[k] for k in r if k.startswith(("time/", "bench/")) or k in ("step", "reward/mean", "response/length_mean")} for r in rows]
    out["steps_measured"] = len(kept)
    out["run_wall_s"] = total
    out["response_length"] = median([r["response/length_mean"] for r in kept])
    out["reward_mean"] = median([r["reward/mean"] for r in kept])
    out["overrides"] = overrides
    out["cfg"] = cfg
    return out


# -------------------------------------------------------------------------------------------
# TRL


def run_trl(steps: int, warmup: int, output_dir: Path, cfg, threads: int) -> dict:
    import gc

    import torch
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from benchmarks.trl_grpo import grpo_config_kwargs
    from rewards import MathReward
    from rl import demo_model
    from rl.data import load_examples

    model_dir = str(demo_model.resolve(cfg.model.path, cfg.model.cache_dir))
    template = cfg.data.train.template
    examples = load_examples(cfg.data.train, "data.train")
    dataset = Dataset.from_list([{"prompt": template.replace("{prompt}", e.prompt), "answer": e.answer} for e in examples])

    torch.set_num_threads(threads)
    math_reward = MathReward()

    def math_accuracy(prompts, completions, answer, **kwargs):
        return [math_reward.score(c, a).value for c, a in zip(completions, answer)]

    batch = cfg.rollout.prompts_per_step * cfg.rollout.group_size
    args = GRPOConfig(
        **grpo_config_kwargs(cfg),
        output_dir=str(output_dir / f"trl-{threads}threads"),
        use_cpu=True,
        bf16=False,
        max_steps=steps,
        per_device_train_batch_size=batch,  # 128 completions = 16 prompts x 8 generations
        gradient_accumulation_steps=1,  # one generation, one optimizer step per step (as Lockstep)
        model_init_kwargs={"dtype": torch.float32},
    )
    trainer = GRPOTrainer(model=model_dir, reward_funcs=math_accuracy, args=args, train_dataset=dataset)

    inner: dict[str, list[float]] = {"generate": [], "reward": []}

    def timed(fn, key):
        def wrapper(*a, **kw):
            t = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                inner[key].append(time.perf_counter() - t)

        return wrapper

    trainer._generate = timed(trainer._generate, "generate")
    trainer._calculate_rewards = timed(trainer._calculate_rewards, "reward")

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.begin = None
            self.steps: list[float] = []

        def on_step_begin(self, args, state, control, **kwargs):
            self.begin = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            self.steps.append(time.perf_counter() - self.begin)

    timer = StepTimer()
    trainer.add_callback(timer)
    t0 = time.perf_counter()
    trainer.train()
    total = time.perf_counter() - t0

    logs = [h for h in trainer.state.log_history if "reward" in h]
    kept = timer.steps[warmup:]
    if not kept or len(inner["generate"]) != len(timer.steps):
        raise SystemExit(f"trl: {len(timer.steps)} steps timed, {len(inner['generate'])} generations; expected one generation per step")
    gen, rew = inner["generate"][warmup:], inner["reward"][warmup:]
    del trainer
    gc.collect()
    return {
        "time/step": median(kept),
        "time/generate": median(gen),
        "time/reward": median(rew),
        "time/rest": median([s - g - w for s, g, w in zip(kept, gen, rew)]),
        "per_step": [{"step": i + 1, "step_s": s, "generate_s": g, "reward_s": w} for i, (s, g, w) in enumerate(zip(timer.steps, inner["generate"], inner["reward"]))],
        "steps_measured": len(kept),
        "run_wall_s": total,
        "response_length": median([h.get("completions/mean_length", float("nan")) for h in logs[warmup:]]),
        "reward_mean": median([h["reward"] for h in logs[warmup:]]),
        "torch_threads": threads,
        "model_dir": model_dir,
    }


# -------------------------------------------------------------------------------------------


def machine_info() -> dict:
    import torch

    info = environment(("python", "torch", "transformers", "trl", "vllm", "deepspeed", "ray"))
    info["torch_cpu_capability"] = torch.backends.cpu.get_cpu_capability()
    try:
        info["avx512"] = str("avx512f" in Path("/proc/cpuinfo").read_text())
    except OSError:
        info["avx512"] = "n/a"
    return info


def main() -> None:
    import torch

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("recipe", nargs="?", type=Path, default=DEFAULT_RECIPE, help="Lockstep recipe (default recipes/demo_dense.yaml); TRL gets its model, task, batch and lengths")
    ap.add_argument("--steps", type=int, default=8, help="RL steps per side (default 8)")
    ap.add_argument("--warmup", type=int, default=2, help="leading steps dropped from the medians (default 2)")
    ap.add_argument("--output-dir", type=Path, default=None, help="where runs and results.json go (default: a temporary folder)")
    ap.add_argument(
        "--trl-threads",
        default=f"{torch.get_num_threads()},1",
        help="torch thread counts TRL runs with, one TRL run each; the anchor is the fastest (default: torch's default, then 1)",
    )
    ap.add_argument("--only", choices=["lockstep", "trl"], default=None, help="run one side only (debugging; no ratio)")
    a = ap.parse_args()
    if a.steps <= a.warmup:
        ap.error("--steps must exceed --warmup")
    trl_threads = [int(t) for t in a.trl_threads.split(",") if t.strip()]
    out_dir = (a.output_dir or Path(tempfile.mkdtemp(prefix="rl_step_cpu-"))).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)

    info = machine_info()
    load = {"before": load_average()}
    print(f"rl_step_cpu: {a.steps} steps per side, first {a.warmup} dropped; output in {out_dir}", flush=True)
    print(f"load average before: {load['before']}", flush=True)

    cfg, overrides = recipe(a.recipe, a.steps, out_dir)
    lock, trl_runs = None, {}
    if a.only in (None, "lockstep"):
        lock = run_lockstep(a.recipe, a.steps, a.warmup, out_dir)
        cfg = lock.pop("cfg")
        load["after_lockstep"] = load_average()
        print(f"lockstep done in {lock['run_wall_s']:.0f}s; load average {load['after_lockstep']}", flush=True)
    if a.only in (None, "trl"):
        for threads in trl_threads:
            trl_runs[threads] = run_trl(a.steps, a.warmup, out_dir, cfg, threads)
            load[f"after_trl_{threads}threads"] = load_average()
            print(f"trl ({threads} threads) done in {trl_runs[threads]['run_wall_s']:.0f}s; load average {load[f'after_trl_{threads}threads']}", flush=True)

    print()
    print(f"device: {info['device']} (AVX-512 in /proc/cpuinfo: {info['avx512']}, torch kernels: {info['torch_cpu_capability']}); {info['date']}")
    print(f"software: {info['software']}; {info['mkl']}")
    print("load average (1/5/15 min): " + "; ".join(f"{k} {v}" for k, v in load.items()))
    print(f"recipe: {a.recipe}; rollout workers {cfg.rollout.num_workers}, trainer ranks {cfg.trainer.num_ranks} (ZeRO-{cfg.trainer.zero_stage}), old log-probs {cfg.algorithm.old_logprobs}, mini-batches {cfg.trainer.num_minibatches}")
    print(f"task: {cfg.data.train.source}, {cfg.model.path}, {cfg.rollout.prompts_per_step} prompts x {cfg.rollout.group_size}, max_new_tokens {cfg.rollout.max_new_tokens}, temperature {cfg.rollout.temperature}")
    print(f"medians over steps {a.warmup + 1}..{a.steps} (seconds)")
    print()
    print("| | time/step | rollout / generate | reward | logprobs | train | sync | rl_step wall |")
    print("|---|---|---|---|---|---|---|---|")
    if lock:
        print(
            f"| Lockstep ({cfg.rollout.num_workers} vLLM worker{'s' if cfg.rollout.num_workers > 1 else ''} + {cfg.trainer.num_ranks} DeepSpeed rank{'s' if cfg.trainer.num_ranks > 1 else ''}, Ray) | {lock['time/step']:.2f} | {lock['time/rollout']:.2f} | {lock['time/reward']:.2f} | "
            f"{lock['time/logprobs']:.2f} | {lock['time/train']:.2f} | {lock['time/sync']:.2f} | {lock['wall/rl_step']:.2f} |"
        )
    for threads, t in trl_runs.items():
        print(
            f"| TRL GRPOTrainer (transformers generate, 1 process, {threads} torch thread{'s' if threads > 1 else ''}) | {t['time/step']:.2f} | "
            f"{t['time/generate']:.2f} | {t['time/reward']:.2f} | – | {t['time/rest']:.2f} (logprobs + update) | – | {t['time/step']:.2f} |"
        )
    results = {"recipe": str(a.recipe), "machine": info, "load_average": load, "steps": a.steps, "warmup": a.warmup, "lockstep_overrides": overrides, "lockstep": lock, "trl": trl_runs}
    if lock and trl_runs:
        best = min(trl_runs, key=lambda k: trl_runs[k]["time/step"])
        anchor = trl_runs[best]
        ratio = lock["time/step"] / anchor["time/step"]
        ratio_wall = lock["wall/rl_step"] / anchor["time/step"]
        results["ratio"] = {"anchor_threads": best, "time_step": ratio, "rl_step_wall": ratio_wall, "vs_each": {k: lock["time/step"] / v["time/step"] for k, v in trl_runs.items()}}
        print()
        print(
            f"Lockstep ÷ TRL (fastest TRL: {best} thread{'s' if best > 1 else ''}), time/step: {ratio:.2f}  (rl_step wall: {ratio_wall:.2f}); "
            f"target <= 0.5: {'met' if ratio <= 0.5 else 'missed'}"
        )
        for k, v in results["ratio"]["vs_each"].items():
            print(f"  vs TRL with {k} thread(s): {v:.2f}")
        print(f"mean response length (tokens): Lockstep {lock['response_length']:.1f}; " + ", ".join(f"TRL {k}t {v['response_length']:.1f}" for k, v in trl_runs.items()))
        print(f"mean reward: Lockstep {lock['reward_mean']:.3f}; " + ", ".join(f"TRL {k}t {v['reward_mean']:.3f}" for k, v in trl_runs.items()))
        print(f"whole run incl. start-up (s): Lockstep {lock['run_wall_s']:.0f}; " + ", ".join(f"TRL {k}t {v['run_wall_s']:.0f}" for k, v in trl_runs.items()))
    (out_dir / "results.json").write_text(json.dumps(results, indent=1, default=str))
    print(f"\nresults: {out_dir / 'results.json'}")


if __name__ == "__main__":
    main()
