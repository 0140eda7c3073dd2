"""Padding waste of the trainer's micro-batches, padded (today's default) vs packed
(`trainer.pack_tokens`), on a recipe's real length distribution.

Prompt lengths: the recipe's training prompts in the run's data order, rendered and tokenized as
the run does. Completion lengths: a run's per-token records (`--run DIR`: its `tokens/` files;
each step's samples, complete while a step has fewer tokens than `logging.token_records_per_step`)
or, without one, the SFT warm start's targets (the worked solutions the policy imitates).
Each step's samples are laid out exactly as the trainer does (contiguous shard per rank, then
`micro_batch_size` runs padded to their longest by `trainer.logprobs.pack`, or
`trainer.packing.plan_packs` + `pack_flat` with the packed ranks' empty-pack rule), and the
padded positions are counted: `trainer/padding_frac` = padded ÷ positions run.

    python -m benchmarks.trainer.padding --recipe recipes/demo.yaml [--run runs/demo] [--budgets 1024,2048,4096]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from benchmarks.harness import header
from rl.config import load_recipe
from rl.data import DataOrder, PromptRenderer, load_examples
from rl.model import load_tokenizer, resolve_model_path
from trainer.logprobs import pack, pack_flat
from trainer.packing import plan_packs


def completion_lengths_from_run(run_dir: Path) -> list[list[int]]:
    """Per step, each sample's completion length from the step's token records."""
    steps = []
    for path in sorted((run_dir / "tokens").glob("step_*.jsonl")):
        last: dict[int, int] = {}
        for line in path.read_text().splitlines():
            r = json.loads(line)
            last[r["sample"]] = max(last.get(r["sample"], -1), r["position"])
        steps.append([last[s] + 1 for s in sorted(last)])
    return steps


def layout_tokens(lengths_per_rank: list[list[tuple[int, int]]], micro: int, budget: int) -> tuple[int, int]:
    """(positions run, of which padding) over the ranks of one step."""
    run = padded = 0
    if budget:
        plans = [plan_packs([p + c for p, c in rank], budget) for rank in lengths_per_rank]
        most = max(len(plan) for plan in plans)
        for rank, plan in zip(lengths_per_rank, plans):
            for idx in plan:
                batch = pack_flat([[1] * rank[i][0] for i in idx], [[1] * rank[i][1] for i in idx])
                run += batch.input_ids.numel()
            run += most - len(plan)  # a rank's empty packs: one pad token each
            padded += most - len(plan)
        return run, padded
    for rank in lengths_per_rank:
        for i in range(0, len(rank), micro):
            chunk = rank[i : i + micro]
            batch = pack([[1] * p for p, _ in chunk], [[1] * c for _, c in chunk])
            run += batch.input_ids.numel()
            padded += batch.padded_tokens
    return run, padded


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--recipe", default="recipes/demo.yaml")
    ap.add_argument("--run", type=Path, help="a run directory whose tokens/ records give completion lengths")
    ap.add_argument("--budgets", default="1024,2048,4096", help="trainer.pack_tokens values to compare")
    ap.add_argument("--steps", type=int, default=20, help="steps to lay out without --run")
    args = ap.parse_args()
    cfg = load_recipe(args.recipe)
    tokenizer = load_tokenizer(resolve_model_path(cfg), cfg.model.trust_remote_code)
    examples = load_examples(cfg.data.train)
    renderer = PromptRenderer(tokenizer, cfg.data.train)
    G, P, ranks = cfg.rollout.group_size, cfg.rollout.prompts_per_step, cfg.trainer.num_ranks
    order = DataOrder(len(examples), cfg.seed, cfg.data.shuffle)  # the run's order (rl.sampling)
    eos = tokenizer.eos_token or ""
    if args.run:
        completions = completion_lengths_from_run(args.run)
        source = f"completions from {args.run}/tokens ({len(completions)} steps)"
    else:
        completions = []
        for step in range(args.steps):
            drawn = [examples[i] for i in order.indices(step * P, P)]
            targets = [tokenizer(" " + e.solution + eos, add_special_tokens=False)["input_ids"] for e in drawn]
            completions.append([min(len(t), cfg.rollout.max_new_tokens) for t in targets for _ in range(G)])
        source = f"completions = the SFT targets, cut at max_new_tokens ({args.steps} steps)"
    print(header(f"trainer padding waste — {args.recipe}; {source}"))
    budgets = [0] + [int(b) for b in args.budgets.split(",")]
    totals = {b: [0, 0] for b in budgets}
    all_prompts, all_completions = [], []
    for step, step_completions in enumerate(completions):
        drawn = [examples[i] for i in order.indices(step * P, P)]
        prompts = [len(renderer.ids(e)) for e in drawn for _ in range(G)]
        samples = list(zip(prompts, step_completions))
        all_prompts += prompts
        all_completions += step_completions
        per_rank = len(samples) // ranks
        shards = [samples[r * per_rank : (r + 1) * per_rank] for r in range(ranks)]
        for b in budgets:
            run, padded = layout_tokens(shards, cfg.trainer.micro_batch_size, b)
            totals[b][0] += run
            totals[b][1] += padded
    n = len(all_prompts)
    print(f"\n{n} samples; prompt tokens mean {sum(all_prompts) / n:.1f} (min {min(all_prompts)}, max "
          f"{max(all_prompts)}); completion tokens mean {sum(all_completions) / n:.1f} (min "
          f"{min(all_completions)}, max {max(all_completions)}); {ranks} ranks, micro_batch_size "
          f"{cfg.trainer.micro_batch_size}\n")
    print("| layout | positions run | padded | padding_frac | positions ÷ padded layout's |")
    print("|---|---|---|---|---|")
    for b in budgets:
        run, padded = totals[b]
        name = "padded (pack_tokens: 0)" if b == 0 else f"packed (pack_tokens: {b})"
        print(f"| {name} | {run} | {padded} | {padded / run:.3f} | {run / totals[0][0]:.3f} |")


if __name__ == "__main__":
    main()
