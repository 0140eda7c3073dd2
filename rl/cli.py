"""`lockstep` command line: run a recipe, see a recipe, evaluate a checkpoint.

    lockstep run recipes/demo.yaml [key.sub=value ...] [--resume | --no-resume] [--dry-run]
    lockstep config recipes/demo.yaml [key.sub=value ...]     the resolved, validated recipe
    lockstep recipes                                           the recipes in recipes/ (or shipped ones)
    lockstep run demo                                          a shipped recipe by name (installed from a wheel)
    lockstep eval RUN_DIR_OR_CHECKPOINT [--data NAME_OR_FILE] [--k 4] [--limit 200]
    lockstep mismatch RUN_DIR [--step N] [--top 20] [--html OUT.html] [--json]
    lockstep mismatch --checkpoint CKPT --data FILE [--layers]   probe: engine samples, trainer rescores
    lockstep plot RUN_DIR [--output PNG]                       reward, accuracy, k3 (and SFT loss) over steps
    lockstep --version

User errors (bad recipe, missing data, not a checkpoint) print one line naming the problem and
the fix, and exit 2 without a traceback. Every exit code and what it asks of the user:
rl/exit_codes.py.
"""

from __future__ import annotations

from rl.blas import pin_mkl_code_path

pin_mkl_code_path()  # first: MKL reads MKL_CBWR when torch loads it, in this process and its children

import argparse
import dataclasses
import json
import logging
import shlex
import sys
from pathlib import Path

from rl import exit_codes
from rl.checkpoint import CheckpointError
from rl.config import ConfigError


def send_ray_token_if_present() -> None:
    """Ray 2.60 turns token authentication on for a cluster that `ray start` brings up once
    ~/.ray/auth_token exists, and a driver sends the token only when RAY_AUTH_MODE=token is set
    before `import ray` (read at import). Without it, joining such a cluster fails after a
    20 s wait with a bare ConnectionError. Unless the user chose a mode, send the token when
    there is one (clusters without authentication accept it too; checked with Ray 2.60)."""
    import os

    if "RAY_AUTH_MODE" not in os.environ and (Path.home() / ".ray" / "auth_token").exists():
        os.environ["RAY_AUTH_MODE"] = "token"


def missing_engine() -> str | None:
    """One line saying what to install when the engines' packages are missing (a plain
    `pip install .` has neither torch nor vLLM: they come with an extra), else None."""
    import importlib.util

    missing = [label for name, label in (("torch", "torch"), ("vllm", "vLLM"))
               if importlib.util.find_spec(name) is None]
    if not missing:
        return None
    return (f"{' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} not installed (the engines a run "
            "needs come with an extra): pip install 'lockstep-rl[cpu]' (CPU) or 'lockstep-rl[gpu]' (CUDA)")


def cmd_run(args) -> int:
    from rl.config import load_recipe

    cfg = load_recipe(args.recipe, args.overrides)
    resume = True if args.resume else (False if args.no_resume else None)
    if not args.dry_run and (missing := missing_engine()):
        raise ConfigError(missing)
    if args.dry_run:
        from rl.config import dump
        from rl.dry_run import plan_lines

        plan = plan_lines(cfg, resume)
        print(f"# lockstep run {' '.join([args.recipe, *args.overrides])} --dry-run: the resolved recipe")
        print(dump(cfg), end="")
        print("# what the run would start (nothing was started):")
        print("\n".join(f"#   {line}" for line in plan))
        return 0
    from rl.checkpoint import latest, nothing_to_train

    if done := nothing_to_train(cfg, resume):
        print(done, flush=True)
        return exit_codes.OK
    send_ray_token_if_present()
    from rl.driver import Run
    from rl.faults import RunStopped
    from rl.groups import ActorFailed
    from rl.placement import RayUnavailable
    from rl.stop import StopSignals

    stop, run = StopSignals(), None
    stop.install()  # Run installs it again once Ray is up (ray.init replaces the SIGTERM handler)
    try:
        run = Run(cfg, resume=resume, stop=stop)
        run.train()
    except KeyboardInterrupt:  # start-up, or a second signal: the step is abandoned
        if not stop.requested:
            raise
        stop.releasing = True
        where = f"during step {run.step}, which is abandoned" if stop.finish_step else "during start-up"
        newest = latest(cfg.run_dir)
        resume_from = f"the newest checkpoint is {newest}" if newest else "the run has no checkpoint yet"
        print(f"lockstep: stopped by {stop.name} {where}; {resume_from}; run the same command to resume",
              file=sys.stderr, flush=True)
        return stop.exit_code
    except (RunStopped, ActorFailed, RayUnavailable) as e:  # one line and the command that resumes; no traceback
        code = e.exit_code if isinstance(e, RunStopped) else exit_codes.ACTOR_FAILED
        again = shlex.join(["lockstep", "run", args.recipe, *args.overrides])
        print(f"lockstep: stopped: {e}; resume with: {again}", file=sys.stderr, flush=True)
        return code
    finally:
        if not stop.requested:
            stop.restore()
        # else: signals stay noted and ignored while the process exits (Ray's shutdown at exit)
    if stop.requested:
        print(run.stopped_line(), file=sys.stderr, flush=True)
        return stop.exit_code
    return exit_codes.OK


def cmd_config(args) -> int:
    from rl.config import dump, load_recipe

    cfg = load_recipe(args.recipe, args.overrides)
    print(f"# lockstep config {' '.join([args.recipe, *args.overrides])}: the resolved recipe (all fields: "
          "docs/recipes.md)")
    print(dump(cfg), end="")
    return 0


def cmd_recipes(args) -> int:
    from rl.config import describe_recipes, recipes_dir

    folder = Path(args.dir) if args.dir else recipes_dir()
    found = describe_recipes(folder) if folder.is_dir() else []
    if not found:
        raise ConfigError(f"{folder}: no recipes (*.yaml) there; pass the folder that holds them")
    width = max(len(str(path)) for path, _ in found)
    for path, about in found:
        print(f"{str(path):<{width}}  {about}")
    return 0


def cmd_eval(args) -> int:
    from rl.console import progress_on_stderr

    with progress_on_stderr():  # stdout is the report (JSON)
        return evaluate_checkpoint(args)


def evaluate_checkpoint(args) -> int:
    """`lockstep eval`: the report of a checkpoint on its recipe's or the given eval sets."""
    from rl.checkpoint import pinned
    from rl.config import from_data
    from rl.console import phase
    from rl.data import PromptRenderer, dataset_name, load_examples
    from rl.evaluate import eval_plan, evaluate
    from rl.model import check_fp8_model, fp8_options
    from rl.rewards_config import build_reward_pool
    from rollout.config import RolloutConfig

    with pinned(args.checkpoint) as target:
        try:
            run = target.recipe()
        except ConfigError as e:
            if args.data is None:
                raise ConfigError(f"{e}; pass --data to evaluate it on a set of your choice") from None
            logging.warning("ignoring the run's recipe: %s", e)
            run = None
        plan = eval_plan(run, args.data, template=args.template, prompt_key=args.prompt_key,
                         answer_key=args.answer_key, limit=args.limit, k=args.k, temperature=args.temperature,
                         max_new_tokens=args.max_new_tokens, max_model_len=args.max_model_len, dtype=args.dtype,
                         fp8=args.fp8)
        if plan.warning:
            print(f"lockstep: warning: {plan.warning}", file=sys.stderr)
        sets = [(dataset_name(c), c, load_examples(c, "--data" if args.data else f"data.eval[{i}]")[: plan.limit])
                for i, c in enumerate(plan.sets)]
        fp8 = None
        if plan.fp8:
            pow2 = run.model.fp8.pow2_scale if run is not None else False
            min_elements = run.model.fp8.min_weight_elements if run is not None else 0
            fp8_recipe = from_data({"model": {"fp8": {"enabled": True, "pow2_scale": pow2,
                                                      "min_weight_elements": min_elements}}})
            check_fp8_model(fp8_recipe, str(target.model_dir))
            fp8 = fp8_options(fp8_recipe)
        from rollout.worker import RolloutWorker

        rollout_cfg = RolloutConfig(max_new_tokens=plan.max_new_tokens, max_model_len=plan.max_model_len)
        with phase(f"starting a vLLM engine on {target.model_dir}"):
            worker = RolloutWorker(str(target.model_dir), plan.dtype, rollout_cfg, seed=args.seed, fp8=fp8)
        results = {}
        with build_reward_pool(plan.reward) as pool:
            for name, data, examples in sets:
                renderer = PromptRenderer(worker.tokenizer, data)
                results[name] = evaluate(worker.generate, pool.score, [renderer.ids(e) for e in examples],
                                         [e.answer for e in examples], plan.k, plan.max_new_tokens,
                                         plan.temperature)
    first = next(iter(results))
    report = {"checkpoint": str(target.checkpoint / "hf" if target.checkpoint else target.model_dir),
              "step": target.state["step"] if target.state else None, "data": first, **results[first].metrics}
    if target.skipped:  # newer checkpoints of the run that failed verification (each warned about)
        report["skipped_damaged"] = list(target.skipped)
    if len(results) > 1:
        report["sets"] = {name: r.metrics for name, r in results.items()}
    if args.output:
        problems = {name: r.per_problem for name, r in results.items()}
        Path(args.output).write_text(json.dumps({**report, "problems": problems[first], "problems_by_set": problems},
                                                indent=1))
    print(json.dumps(report, indent=1))
    return 0


def cmd_plot(args) -> int:
    from rl.plots import PlotUnavailable, plot_run

    run_dir = Path(args.run_dir)
    if not (run_dir / "metrics.jsonl").is_file():
        raise CheckpointError(f"{run_dir}: not a run directory (no metrics.jsonl); pass runs/<name>")
    try:
        print(plot_run(run_dir, Path(args.output) if args.output else None))
    except PlotUnavailable as why:
        raise CheckpointError(f"{run_dir}: no plot: {why}") from None
    return 0


def cmd_mismatch(args) -> int:
    from rl.report import build, render_text

    if (args.run_dir is None) == (args.checkpoint is None):
        raise ConfigError("lockstep mismatch: pass a run directory (its logged mismatch) or --checkpoint CKPT "
                          "--data FILE (a fresh probe), not both" if args.run_dir else
                          "lockstep mismatch: pass a run directory (runs/<name>) or --checkpoint CKPT --data FILE")
    probe_only = [flag for flag, given in (("--data", args.data), ("--layers", args.layers)) if given]
    if args.run_dir is not None and probe_only:
        raise ConfigError(f"lockstep mismatch: {' and '.join(probe_only)} go with --checkpoint (a probe), not with "
                          "a run directory")
    if args.checkpoint is not None:
        return probe_mismatch(args)
    run_dir = Path(args.run_dir)
    tokenizer = None
    config = run_dir / "config.yaml"
    if config.exists():  # decode token ids with the run's tokenizer when it is at hand
        from transformers import AutoTokenizer

        from rl.config import load_recipe
        from rl.model import resolve_model_path

        try:
            tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(load_recipe(config)))
        except (OSError, ValueError, ConfigError) as e:
            logging.warning("token ids shown raw: tokenizer unavailable (%s)", e)
    report = build(run_dir, args.step, args.top, tokenizer)
    return write_report(args, report, render_text(report))


def probe_mismatch(args) -> int:
    from rl.mismatch_probe import ProbeOptions, probe

    if args.step is not None:
        raise ConfigError("lockstep mismatch --checkpoint: --step is for a run directory (a probe is one step)")
    if missing := missing_engine():
        raise ConfigError(missing)
    import os

    os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")  # stdout is the report's (--json)
    report, text = probe(ProbeOptions(
        checkpoint=args.checkpoint, data=args.data, prompts=args.prompts, samples=args.samples,
        max_new_tokens=args.max_new_tokens, dtype=args.dtype, seed=args.seed, layers=args.layers, rtol=args.rtol,
        template=args.template, top=args.top, out_dir=args.out))
    return write_report(args, report, text)


def write_report(args, report: dict, text: str) -> int:
    """A mismatch report where the flags say: `--html FILE`, `--json` on stdout, else the text."""
    if args.html:
        from rl.report_html import render_html

        Path(args.html).write_text(render_html(report))
        print(f"lockstep: wrote {args.html}", file=sys.stderr)
    if args.json:
        print(json.dumps(report, indent=1))
    elif not args.html:
        print(text)
    return 0


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Every flag's help ends with its default, unless the help already says it in words."""

    def _get_help_string(self, action):
        help_text = action.help or ""
        if "default:" in help_text or action.default is argparse.SUPPRESS or not action.option_strings:
            return help_text
        return f"{help_text} (default: %(default)s)"


def version() -> str:
    from importlib import metadata

    try:
        number = metadata.version("lockstep-rl")
    except metadata.PackageNotFoundError:
        number = "unknown (not installed)"
    return f"lockstep {number} ({Path(__file__).resolve().parent.parent})"


def parser() -> argparse.ArgumentParser:
    fmt = {"formatter_class": HelpFormatter}
    p = argparse.ArgumentParser(prog="lockstep", **fmt,
                                description="RL post-training with aligned rollout and trainer engines")
    p.add_argument("--version", action="version", version=version(), help="print the version and exit")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    overrides = {"nargs": "*", "metavar": "key.sub=value", "help": "recipe overrides, e.g. trainer.lr=3e-5"}

    run = sub.add_parser("run", help="run a recipe (resumes automatically from the run's last checkpoint)", **fmt)
    run.add_argument("recipe", help="a recipe YAML file (lockstep recipes lists them)")
    run.add_argument("overrides", **overrides)
    group = run.add_mutually_exclusive_group()
    group.add_argument("--resume", action="store_true", help="require a checkpoint to resume from")
    group.add_argument("--no-resume", action="store_true", help="start from scratch even if checkpoints exist")
    run.add_argument("--dry-run", action="store_true",
                     help="validate, print the resolved recipe and what would start (ranks, engines, placement); "
                          "start nothing")
    run.add_argument("--verbose", action="store_true",
                    help="also show the libraries' INFO logs (vLLM, Ray, DeepSpeed, transformers) on the console; "
                         "they are always in <run_dir>/run.log")
    run.set_defaults(fn=cmd_run)

    config = sub.add_parser("config", help="print the resolved, validated recipe (YAML) and exit", **fmt)
    config.add_argument("recipe", help="a recipe YAML file")
    config.add_argument("overrides", **overrides)
    config.set_defaults(fn=cmd_config)

    recipes = sub.add_parser("recipes", help="list the recipes and what each is for", **fmt)
    recipes.add_argument("dir", nargs="?", default=None,
                         help="folder of recipes (default: ./recipes if it exists, else Lockstep's own)")
    recipes.set_defaults(fn=cmd_recipes)

    run_value = "default: the run's {}, else {}"
    ev = sub.add_parser("eval", help="score a checkpoint; on a run: its newest complete one, on the run's own "
                                     "held-out sets", **fmt)
    ev.add_argument("checkpoint", help="a run directory (runs/<name>: its newest complete checkpoint), a checkpoint "
                                       "(runs/<name>/checkpoints/step_N) or a Hugging Face model directory")
    ev.add_argument("--data", default=None,
                    help="one of the run's held-out sets by name, a preset (arithmetic, gsm8k, math500, aime24, "
                         "amc23) or a .jsonl/.parquet file or dataset name (default: the run's held-out sets, data.eval, "
                         "with their templates; needed for a plain Hugging Face directory)")
    ev.add_argument("--k", type=int, default=None, help="samples per problem: pass@k, avg@k "
                    "(" + run_value.format("schedule.eval_samples", 1) + ")")
    ev.add_argument("--limit", type=int, default=None, help="problems per set (default: the run's "
                    "schedule.eval_limit for its own sets, else all)")
    ev.add_argument("--temperature", type=float, default=None,
                    help="sampling temperature (default: the run's schedule.eval_temperature, else 0 for k=1 "
                         "and 1.0 for k>1)")
    ev.add_argument("--max-new-tokens", type=int, default=None,
                    help="longest completion (" + run_value.format("rollout.max_new_tokens", 64) + ")")
    ev.add_argument("--max-model-len", type=int, default=None,
                    help="engine context length (" + run_value.format("rollout.max_model_len", 512) + ")")
    ev.add_argument("--prompt-key", default="question", help="field of the problem text, for a --data file")
    ev.add_argument("--answer-key", default="answer", help="field of the reference answer, for a --data file")
    ev.add_argument("--template", default=None,
                    help="prompt template with {prompt} (default: the set's own; {prompt} for a file)")
    ev.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"],
                    help="engine dtype (" + run_value.format("model.dtype", "float32") + ")")
    ev.add_argument("--fp8", action=argparse.BooleanOptionalAction, default=None,
                    help="sample with the FP8 projections a model.fp8 recipe trains with, Ring-linear models "
                         "(" + run_value.format("model.fp8.enabled", "off") + ")")
    ev.add_argument("--seed", type=int, default=0, help="sampling seed")
    ev.add_argument("--output", default=None, help="also write per-problem results to this JSON file "
                                                    "(default: none)")
    ev.add_argument("--verbose", action="store_true",
                    help="also show the libraries' INFO logs (vLLM, Ray, DeepSpeed, transformers) on the console; "
                         "by default only their warnings")
    ev.set_defaults(fn=cmd_eval)

    plot = sub.add_parser("plot", help="draw a run's curves (reward, held-out accuracy, mismatch k3, SFT loss) "
                                       "into a PNG; works while the run trains", **fmt)
    plot.add_argument("run_dir", help="a run directory (runs/<name>)")
    plot.add_argument("--output", default=None, help="where to write the PNG (default: RUN_DIR/curves.png)")
    plot.set_defaults(fn=cmd_plot)

    mm = sub.add_parser("mismatch", help="train/infer log-prob mismatch of a run, token by token; or of a checkpoint "
                                         "(--checkpoint: sample with the engine, rescore with the trainer)", **fmt)
    mm.add_argument("run_dir", nargs="?", default=None, help="a run directory (runs/<name>)")
    mm.add_argument("--step", type=int, default=None,
                    help="one step: its every metric, distributions and tokens (default: the whole run)")
    mm.add_argument("--top", type=int, default=20, help="how many largest-|Δ| tokens to list (identical rows merged)")
    mm.add_argument("--html", default=None, metavar="OUT.html",
                    help="write the report as one self-contained page (charts inline, nothing fetched) "
                         "(default: none)")
    mm.add_argument("--json", action="store_true", help="print the report as JSON, for scripts")
    probe = mm.add_argument_group("probe a checkpoint (instead of RUN_DIR)")
    probe.add_argument("--checkpoint", default=None, metavar="CKPT",
                       help="a run directory (its newest complete checkpoint), a checkpoint or a Hugging Face model "
                            "directory: its engine samples, its trainer model rescores (default: none)")
    probe.add_argument("--data", default=None,
                       help="prompts: a .jsonl file (the data loader's fields), a preset or synthetic:TASK "
                            "(default: the run's held-out set; needed for a plain Hugging Face directory)")
    probe.add_argument("--layers", action="store_true",
                       help="also compare activations module by module and name the first module that diverges "
                            "(prefill vs prefill, then training prefill vs inference decode)")
    probe.add_argument("--prompts", type=int, default=8, help="prompts taken from --data")
    probe.add_argument("--samples", type=int, default=4, help="completions per prompt")
    probe.add_argument("--max-new-tokens", type=int, default=None,
                       help="longest completion (default: the run's rollout.max_new_tokens, else 64)")
    probe.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"],
                       help="both engines' dtype (default: the run's model.dtype, else float32)")
    probe.add_argument("--template", default=None, help="prompt template with {prompt} (default: the set's own)")
    probe.add_argument("--rtol", type=float, default=None,
                       help="--layers tolerance relative to a module's outputs (default: 1e-4 fp32, 3e-2 bf16, "
                            "1e-2 fp16)")
    probe.add_argument("--seed", type=int, default=0, help="sampling seed")
    probe.add_argument("--out", default=None, metavar="DIR",
                       help="keep the probe's records in DIR (then lockstep mismatch DIR --html works on them) "
                            "(default: none)")
    mm.set_defaults(fn=cmd_mismatch)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    from rl.console import route_logs

    route_logs(verbose=getattr(args, "verbose", False))  # before vLLM, Ray or DeepSpeed load
    try:
        return args.fn(args)
    except (ConfigError, CheckpointError) as e:
        print(f"lockstep: error: {e}", file=sys.stderr)
        return exit_codes.USER_ERROR


if __name__ == "__main__":
    sys.exit(main())
