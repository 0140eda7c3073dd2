"""A Lockstep recipe as TRL's `GRPOConfig`: the one mapping the TRL comparisons share
(`benchmarks/rl/step_cpu.py` on CPU, `benchmarks/gpu/trl_compare.py` on the GPU), so both
compare against TRL run with the recipe's own algorithm and optimiser settings."""

from __future__ import annotations


def grpo_config_kwargs(cfg) -> dict:
    """The `GRPOConfig` fields a Lockstep recipe decides: sampling, optimiser, loss. Callers add
    batch shape, device, dtype and backend, which differ between the comparisons."""
    r, tr, al = cfg.rollout, cfg.trainer, cfg.algorithm
    return dict(
        seed=cfg.seed,
        num_generations=r.group_size,
        max_completion_length=r.max_new_tokens,
        temperature=r.temperature,
        top_p=r.top_p,
        learning_rate=tr.lr,
        lr_scheduler_type="constant",
        weight_decay=tr.weight_decay,
        max_grad_norm=tr.grad_clip,
        beta=al.kl_coef,
        epsilon=al.clip_low,
        epsilon_high=al.clip_high,
        scale_rewards="group" if al.std_normalize else "none",
        loss_type="dapo",  # token mean over the batch, as Lockstep's token_mean
        fp16=False,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        dataloader_num_workers=0,
        disable_tqdm=True,
    )
