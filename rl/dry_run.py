"""`lockstep run RECIPE --dry-run`: what a run would start, said without starting anything (no
Ray, no model, no data): the run directory and whether it resumes, the Ray cluster it would
join, the placement of trainer ranks and rollout engines, and the phases it would go through.
Printed as YAML comments below the resolved recipe, so the whole output still loads as a recipe.
"""

from __future__ import annotations

import os

from rl import checkpoint
from rl.config import ConfigError, RunConfig
from rl.data import as_list, dataset_name
from rl.placement import bundle_lines, layout, running_cluster_address


def plan_lines(cfg: RunConfig, resume: bool | None) -> list[str]:
    """One line per part of the run, as `Run(cfg, resume)` would start it. Raises ConfigError
    where the run itself would (--resume without a checkpoint)."""
    run_dir = cfg.run_dir
    existing = checkpoint.latest(run_dir)
    if resume is True and existing is None:
        raise ConfigError(f"--resume: {run_dir} has no complete checkpoint to resume from")
    if done := checkpoint.nothing_to_train(cfg, resume):
        return [f"run directory: {run_dir.resolve()}", done.removeprefix("lockstep: ")]
    if existing is not None and resume is not False:
        start = f"resume from {existing} (--no-resume starts over)"
    else:
        start = "start from step 0" + (f" (ignoring {existing}: --no-resume)" if existing else "")
    if cfg.ray.address or os.environ.get("RAY_ADDRESS"):
        ray = f"join the cluster at {cfg.ray.address or os.environ['RAY_ADDRESS']}"
    elif running_cluster_address():
        ray = f"join the cluster `ray start` runs on this machine ({running_cluster_address()})"
    else:
        ray = "start a private local Ray instance (no cluster runs on this machine)"
    plan = layout(cfg)
    bundles = bundle_lines(plan)
    t, r, s = cfg.trainer, cfg.rollout, cfg.schedule
    held_out = ", ".join(dataset_name(c) for c in as_list(cfg.data.eval))
    evaluation = (f"held-out eval of {held_out} (≤ {s.eval_limit} problems each) before the first step"
                  + (f", every {s.eval_every} steps" if s.eval_every else "") + " and after the last"
                  if held_out else "no held-out eval (data.eval is empty)")
    sft_out = run_dir / "sft" / "hf" / "config.json"
    sft = ("none (sft.steps=0)" if cfg.sft.steps == 0 else f"reuse {sft_out.parent}" if sft_out.exists()
           else f"{cfg.sft.steps} supervised steps (batch {cfg.sft.batch_size}, lr {cfg.sft.lr}) before RL")
    return [
        f"run directory: {run_dir.resolve()}; {start}",
        f"Ray: {ray}",
        f"placement: {cfg.ray.placement}, {plan.n_bundles} bundle(s), one GPU each on a GPU cluster "
        f"(ray.require_gpus={str(cfg.ray.require_gpus).lower()}); " + "; ".join(bundles),
        f"trainer: {t.num_ranks} DeepSpeed ZeRO-{t.zero_stage} rank(s), micro-batch {t.micro_batch_size}, "
        f"{t.num_minibatches} optimiser step(s) per RL step, lr {t.lr}",
        f"rollout: {r.num_workers} vLLM engine(s), {r.prompts_per_step} prompts × {r.group_size} completions "
        f"per step, up to {r.max_new_tokens} new tokens, staleness {r.max_staleness}"
        + (f" (asynchronous{', partial rollouts' if r.partial else ''}, over the bound: {r.stale_policy})"
           if r.asynchronous else ""),
        f"model: {cfg.model.path} ({cfg.model.dtype}" + (", FP8 projections" if cfg.model.fp8.enabled else "") + ")",
        f"SFT warm start: {sft}",
        f"RL: {s.steps} steps; {evaluation}",
        "checkpoints: " + (f"every {s.save_every} steps and " if s.save_every else "")
        + f"after the last, keeping the newest {s.keep_last or 'all'}",
        f"weight sync: sync.transport={cfg.sync.transport}" + (" (GPUs: device if colocated, collective if split; "
                                                               "CPU: host)" if cfg.sync.transport == "auto" else ""),
        f"reward: {cfg.reward.function}, {cfg.reward.num_workers or 'one per CPU'} worker process(es), "
        f"{cfg.reward.timeout_s} s timeout",
    ]
