"""`lockstep` command line: run a recipe, evaluate a checkpoint.

    lockstep run recipes/demo.yaml [key.sub=value ...] [--resume | --no-resume]
    lockstep eval CHECKPOINT --data NAME_OR_FILE [--k 4] [--limit 200]
    lockstep mismatch RUN_DIR [--step N] [--top 20]

User errors (bad recipe, missing data, not a checkpoint) print one line naming the problem and
the fix, and exit 2 without a traceback.
"""

from __future__ import annotations

from rl.blas import pin_mkl_code_path

pin_mkl_code_path()  # first: MKL reads MKL_CBWR when torch loads it, in this process and its children

import argparse
import dataclasses
import json
import logging
import sys
from pathlib import Path

from rl.checkpoint import CheckpointError
from rl.config import ConfigError

EXIT_USER_ERROR = 2


def send_ray_token_if_present() -> None:
    """Ray 2.60 turns token authentication on for a cluster that `ray start` brings up once
    ~/.ray/auth_token exists, and a driver sends the token only when RAY_AUTH_MODE=token is set
    before `import ray` (read at import). Without it, joining such a cluster fails after a
    20 s wait with a bare ConnectionError. Unless the user chose a mode, send the token when
    there is one (clusters without authentication accept it too; checked with Ray 2.60)."""
    import os

    if "RAY_AUTH_MODE" not in os.environ and (Path.home() / ".ray" / "auth_token").exists():
        os.environ["RAY_AUTH_MODE"] = "token"


def cmd_run(args) -> int:
    send_ray_token_if_present()
    from rl.config import load_recipe
    from rl.driver import Run

    cfg = load_recipe(args.recipe, args.overrides)
    resume = True if args.resume else (False if args.no_resume else None)
    Run(cfg, resume=resume).train()
    return 0


def cmd_eval(args) -> int:
    from rl.checkpoint import resolve_model_dir
    from rl.config import DatasetConfig, RewardConfig, from_data
    from rl.data import PRESETS, PromptRenderer, load_examples
    from rl.evaluate import evaluate
    from rl.model import check_fp8_model, fp8_options
    from rl.rewards_config import build_reward_pool
    from rollout.config import RolloutConfig
    from rollout.worker import RolloutWorker

    model_dir = resolve_model_dir(args.checkpoint)
    if args.data in PRESETS:
        data = dataclasses.replace(PRESETS[args.data], limit=args.limit)
    else:
        data = DatasetConfig(source=args.data, prompt_key=args.prompt_key, answer_key=args.answer_key,
                             template=args.template or "{prompt}", limit=args.limit)
    if args.template and args.data in PRESETS:
        data = dataclasses.replace(data, template=args.template)
    examples = load_examples(data, "--data")
    temperature = args.temperature if args.temperature is not None else (0.0 if args.k == 1 else 1.0)
    if args.k > 1 and temperature == 0:
        raise ConfigError("--k > 1 needs --temperature > 0 (greedy samples are identical)")
    rollout_cfg = RolloutConfig(max_new_tokens=args.max_new_tokens, max_model_len=args.max_model_len)
    fp8 = None
    if args.fp8:
        fp8_recipe = from_data({"model": {"fp8": {"enabled": True}}})
        check_fp8_model(fp8_recipe, str(model_dir))
        fp8 = fp8_options(fp8_recipe)
    worker = RolloutWorker(str(model_dir), args.dtype, rollout_cfg, seed=args.seed, fp8=fp8)
    renderer = PromptRenderer(worker.tokenizer, data)
    with build_reward_pool(RewardConfig()) as pool:
        result = evaluate(worker.generate, pool.score, [renderer.ids(e) for e in examples],
                          [e.answer for e in examples], args.k, args.max_new_tokens, temperature)
    report = {"checkpoint": str(model_dir), "data": args.data, **result.metrics}
    if args.output:
        Path(args.output).write_text(json.dumps({**report, "problems": result.per_problem}, indent=1))
    print(json.dumps(report, indent=1))
    return 0


def cmd_mismatch(args) -> int:
    from rl.report import render

    run_dir = Path(args.run_dir)
    tokenizer = None
    config = run_dir / "config.yaml"
    if config.exists():  # decode token ids with the run's tokenizer when it is at hand
        from transformers import AutoTokenizer

        from rl.config import load_recipe
        from rl.model import resolve_model_path

        try:
            tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(load_recipe(config)))
        except (OSError, ValueError) as e:
            logging.warning("token ids shown raw: tokenizer unavailable (%s)", e)
    print(render(run_dir, args.step, args.top, tokenizer))
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lockstep", description="RL post-training with aligned rollout and trainer engines")
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run a recipe (resumes automatically from the run's last checkpoint)")
    run.add_argument("recipe")
    run.add_argument("overrides", nargs="*", help="key.sub=value")
    group = run.add_mutually_exclusive_group()
    group.add_argument("--resume", action="store_true", help="require a checkpoint to resume from")
    group.add_argument("--no-resume", action="store_true", help="start from scratch even if checkpoints exist")
    run.set_defaults(fn=cmd_run)
    ev = sub.add_parser("eval", help="score a checkpoint (run dir = its newest complete checkpoint)")
    ev.add_argument("checkpoint")
    ev.add_argument("--data", required=True, help="preset (arithmetic, gsm8k, math500, aime24, amc23) or a .jsonl/.parquet file or dataset name")
    ev.add_argument("--k", type=int, default=1, help="samples per problem (pass@k, avg@k)")
    ev.add_argument("--limit", type=int, default=None)
    ev.add_argument("--temperature", type=float, default=None)
    ev.add_argument("--max-new-tokens", type=int, default=64)
    ev.add_argument("--max-model-len", type=int, default=512)
    ev.add_argument("--prompt-key", default="question")
    ev.add_argument("--answer-key", default="answer")
    ev.add_argument("--template", default=None, help="prompt template with {prompt} (presets bring their own)")
    ev.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ev.add_argument("--fp8", action="store_true", help="sample with the FP8 projections a model.fp8 recipe trains with (Ring-linear models)")
    ev.add_argument("--seed", type=int, default=0)
    ev.add_argument("--output", help="write per-problem results to this JSON file")
    ev.set_defaults(fn=cmd_eval)
    mm = sub.add_parser("mismatch", help="train/infer log-prob mismatch of a run, token by token")
    mm.add_argument("run_dir")
    mm.add_argument("--step", type=int, default=None, help="default: the newest step")
    mm.add_argument("--top", type=int, default=20, help="how many largest-|Δ| tokens to list")
    mm.set_defaults(fn=cmd_mismatch)
    return p


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = parser().parse_args(argv)
    try:
        return args.fn(args)
    except (ConfigError, CheckpointError) as e:
        print(f"lockstep: error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR


if __name__ == "__main__":
    sys.exit(main())
