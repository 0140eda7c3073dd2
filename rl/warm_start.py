"""The SFT warm start (if the recipe has one): supervised steps on the training set's worked
solutions, with the same trainer and an engine of its own; the RL stage starts from its HF
export under <run_dir>/sft/hf, reused if already there.  Every step logs `sft/loss` (mean NLL per
target token over all ranks), `sft/lr`, `sft/grad_norm`, `sft/tokens_per_s` (prompt and target
tokens through the trainer per second of the step) and `sft/target_tokens`, against `sft/step`."""

from __future__ import annotations

from rl.config import ConfigError, RunConfig
from rl.data import DataOrder, Example, PromptRenderer, as_list
from rl.groups import TrainerGroup, trainer_setup
from rl.metrics import MetricsLogger, print_progress
from rl.placement import Placement
from rl.timings import Timings


def warm_start(cfg: RunConfig, placement: Placement, base_model: str, train_set: list[Example],
               renderer: PromptRenderer, tokenizer, metrics: MetricsLogger) -> str:
    """Returns the model the RL stage starts from: the SFT export, or `base_model` without SFT."""
    sft = cfg.sft
    out = cfg.run_dir / "sft" / "hf"
    if sft.steps == 0:
        return base_model
    if (out / "config.json").exists():
        print_progress(f"SFT warm start: reusing {out}")
        return str(out)
    with_solution = [e for e in train_set if e.solution]
    if not with_solution:
        key = as_list(cfg.data.train)[0].solution_key
        raise ConfigError(f"sft.steps={sft.steps} but data.train has no '{key}' field with worked solutions")
    ranks = cfg.trainer.num_ranks
    batch = sft.batch_size - sft.batch_size % ranks or ranks
    trainers = TrainerGroup.start(placement, trainer_setup(cfg, base_model, sft.lr, batch, loss=None),
                                  cfg.faults.call_timeout_s)
    eos = tokenizer.eos_token or ""
    order = DataOrder(len(with_solution), cfg.seed + 1, True)
    clock = Timings()
    metrics.restart_sft()
    for step in range(sft.steps):
        examples = [with_solution[i] for i in order.indices(step * batch, batch)]
        prompts = [renderer.ids(e) for e in examples]
        targets = [tokenizer(" " + e.solution + eos, add_special_tokens=False)["input_ids"] for e in examples]
        started = clock.elapsed()
        ranks_stats = trainers.sft_step(prompts, targets)
        seconds = max(clock.elapsed() - started, 1e-9)
        target_tokens = sum(s.target_tokens for s in ranks_stats)
        loss = sum(s.nll for s in ranks_stats) / max(target_tokens, 1)
        metrics.log_sft(step + 1, {"sft/loss": loss, "sft/lr": ranks_stats[0].lr,
                                   "sft/grad_norm": ranks_stats[0].grad_norm, "sft/target_tokens": target_tokens,
                                   "sft/tokens_per_s": sum(s.tokens for s in ranks_stats) / seconds})
        if (step + 1) % max(1, sft.steps // 10) == 0 or step + 1 == sft.steps:
            print_progress(f"sft step {step + 1:>4}/{sft.steps} | loss {loss:.3f} | {clock.elapsed():.0f}s")
    partial = out.parent / "hf.partial"
    trainers.export_hf(str(partial), base_model)
    partial.rename(out)
    trainers.kill()
    return str(out)
