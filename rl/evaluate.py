"""Held-out evaluation: pass@1, avg@k and pass@k of a policy on a problem set.

Used in two places with the same code: every N steps inside a run (`HeldOut`: the recipe's
held-out sets through the run's rollout engines, current weights) and `lockstep eval CHECKPOINT`
(a fresh rollout worker on the newest complete checkpoint; `eval_plan` gives it the run's own
held-out sets, templates and sampling settings unless the command line says otherwise).
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable
from dataclasses import dataclass

from rl.config import ConfigError, DatasetConfig, RewardConfig, RunConfig
from rl.console import Progress, plural, print_progress
from rl.data import PRESETS, Example, PromptRenderer, as_list, dataset_name, load_examples
from rollout.completion import Completion

# generate(prompts, n, max_tokens, temperature) → each prompt's n completions
Generate = Callable[[list[list[int]], int, int, float], list[list[Completion]]]


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples with c correct (Chen et al. 2021): 1 − C(n−c, k)/C(n, k)."""
    if k > n:
        raise ValueError(f"pass@{k} needs at least {k} samples, got {n}")
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


@dataclass
class EvalResult:
    metrics: dict[str, float]
    per_problem: list[dict]


def summarize(correct: list[list[bool]], k: int) -> dict[str, float]:
    """correct[i][j]: sample j of problem i was right. pass@1 is the unbiased estimate
    (= mean correctness), avg@k the same number named for k samples, pass@k any-of-k."""
    n_problems = len(correct)
    if n_problems == 0:
        return {}
    mean_correct = sum(sum(row) / len(row) for row in correct) / n_problems
    out = {"eval/accuracy": mean_correct, "eval/pass@1": mean_correct, "eval/num_problems": float(n_problems)}
    if k > 1:
        out[f"eval/avg@{k}"] = mean_correct
        out[f"eval/pass@{k}"] = sum(pass_at_k(len(row), sum(row), k) for row in correct) / n_problems
    return out


# Problems per generate call: progress (rate, ETA) between calls, and batches still large
# enough that splitting them costs the engines little.
EVAL_CHUNK = 64


def evaluate(generate: Generate, score, prompts: list[list[int]], answers: list[str], k: int, max_tokens: int,
             temperature: float, label: str = "eval") -> EvalResult:
    """`score(list[(completion, reference)])` → list of Score. Shows its progress as `label`."""
    chunks = max(1, math.ceil(len(prompts) / EVAL_CHUNK))
    bounds = [round(c * len(prompts) / chunks) for c in range(chunks + 1)]
    groups, scores = [], []
    print_progress(f"{label}: {plural(len(prompts), 'problem')}" + (f", {k} samples each" if k > 1 else ""))
    with Progress(label, len(prompts), "problem") as progress:
        for lo, hi in zip(bounds, bounds[1:]):
            chunk = generate(prompts[lo:hi], k, max_tokens, temperature)
            scores += score([(c.text, answer) for group, answer in zip(chunk, answers[lo:hi]) for c in group])
            groups += chunk
            progress.update(hi - lo)
    correct, per_problem, i = [], [], 0
    for group, answer in zip(groups, answers):
        row = [scores[i + j].value >= 1.0 for j in range(len(group))]
        per_problem.append({"answer": answer, "completions": [c.text for c in group], "correct": row,
                            "reasons": [str(scores[i + j].reason) for j in range(len(group))]})
        correct.append(row)
        i += len(group)
    return EvalResult(summarize(correct, k), per_problem)


@dataclass(frozen=True)
class EvalSet:
    name: str  # its label in metrics: eval/<name>/…
    examples: list[Example]
    renderer: PromptRenderer


class HeldOut:
    """The recipe's held-out sets (`data.eval`), each evaluated and logged on its own; the first
    is also logged as `eval/…`, the run's headline accuracy. Each evaluation's per-problem
    report goes to <run_dir>/eval/step_N.json."""

    def __init__(self, cfg: RunConfig, tokenizer):
        self.cfg, self.out_dir = cfg, cfg.run_dir / "eval"
        self.sets = [EvalSet(dataset_name(c), load_examples(c, f"data.eval[{i}]")[: cfg.schedule.eval_limit],
                             PromptRenderer(tokenizer, c))
                     for i, c in enumerate(as_list(cfg.data.eval))]
        if len({s.name for s in self.sets}) < len(self.sets):
            raise ConfigError("data.eval: two held-out sets share a name; give each a distinct `name`")

    def __call__(self, step: int, generate: Generate, score) -> dict[str, float]:
        s = self.cfg.schedule
        metrics, report = {}, {"step": step}
        for i, held_out in enumerate(self.sets):
            prompts = [held_out.renderer.ids(e) for e in held_out.examples]
            result = evaluate(generate, score, prompts, [e.answer for e in held_out.examples], s.eval_samples,
                              self.cfg.rollout.max_new_tokens, s.eval_temperature,
                              label=f"evaluating {held_out.name} (step {step})")
            if i == 0:
                metrics.update(result.metrics)
                report.update(result.metrics, problems=result.per_problem[:50])
            if len(self.sets) > 1:
                metrics.update({k.replace("eval/", f"eval/{held_out.name}/", 1): v
                                for k, v in result.metrics.items()})
            report.setdefault("sets", {})[held_out.name] = {**result.metrics,
                                                             "problems": result.per_problem[:50]}
        if metrics:
            self.out_dir.mkdir(exist_ok=True)
            (self.out_dir / f"step_{step:06d}.json").write_text(json.dumps(report, indent=1))
        return metrics

    def progress_line(self, step: int, metrics: dict[str, float]) -> str:
        others = "".join(f" | {s.name} {metrics[f'eval/{s.name}/accuracy']:.3f}" for s in self.sets[1:])
        return (f"step {step:>4}/{self.cfg.schedule.steps} | eval accuracy {metrics['eval/accuracy']:.3f} on "
                f"{int(metrics['eval/num_problems'])} held-out problems{others}")


# ---------------------------------------------------------------------------------------------
# `lockstep eval`: what to score, by default what the run itself scored.


@dataclass(frozen=True)
class EvalPlan:
    sets: list[DatasetConfig]
    limit: int | None  # problems per set, after each set's own `limit`
    k: int
    temperature: float
    max_new_tokens: int
    max_model_len: int
    dtype: str
    fp8: bool
    reward: RewardConfig
    warning: str | None  # --data names a task other than the run's own held-out set


def _describe(c: DatasetConfig) -> str:
    return f"{c.source} (template {c.template!r})"


def eval_plan(run: RunConfig | None, data: str | None = None, *, template: str | None = None,
              prompt_key: str = "question", answer_key: str = "answer", limit: int | None = None,
              k: int | None = None, temperature: float | None = None, max_new_tokens: int | None = None,
              max_model_len: int | None = None, dtype: str | None = None, fp8: bool | None = None) -> EvalPlan:
    """What `lockstep eval` scores. `run`: the recipe the checkpoint was trained with (None for
    a plain Hugging Face directory). Without `data`, the run's held-out sets (`data.eval`) with
    their templates, `schedule.eval_limit`, `eval_samples` and `eval_temperature`, and the run's
    `rollout.max_new_tokens`: the numbers the run logged as eval/…. `data` picks one of the run's
    sets by name, a preset, or a file / dataset name; a task unlike the run's first held-out set
    comes with a warning naming both. Every argument given overrides the run's value."""
    own = as_list(run.data.eval) if run is not None else []
    if data is None:
        if run is None:
            raise ConfigError("--data: needed for a model that is not a Lockstep checkpoint (no recipe to take "
                              "held-out sets from): a preset (" + ", ".join(PRESETS) + ") or a .jsonl file")
        if not own:
            raise ConfigError("--data: the run has no held-out sets (data.eval is empty in its recipe); pass --data "
                              "with a preset (" + ", ".join(PRESETS) + ") or a .jsonl file")
        sets = own
        limit = limit if limit is not None else run.schedule.eval_limit
    elif data in {dataset_name(c) for c in own}:
        sets = [c for c in own if dataset_name(c) == data]
        limit = limit if limit is not None else run.schedule.eval_limit
    elif data in PRESETS:
        sets = [PRESETS[data]]
    else:
        sets = [DatasetConfig(source=data, prompt_key=prompt_key, answer_key=answer_key,
                              template=template or "{prompt}")]
    if template is not None:
        sets = [dataclasses.replace(c, template=template) for c in sets]
    warning = None
    if data is not None and own and all((c.source, c.template) != (s.source, s.template) for c in own for s in sets):
        warning = (f"--data {data} is {_describe(sets[0])}, but this run was evaluated on {dataset_name(own[0])}: "
                   f"{_describe(own[0])}; scores are not comparable with its eval/accuracy (leave out --data to "
                   f"score the run's own held-out sets)")
    schedule = run.schedule if run is not None else None
    if k is None:
        k = schedule.eval_samples if schedule else 1
    if temperature is None:
        if schedule and k == schedule.eval_samples:
            temperature = schedule.eval_temperature
        else:
            temperature = 0.0 if k == 1 else 1.0
    if k > 1 and temperature == 0:
        raise ConfigError("--k > 1 needs --temperature > 0 (greedy samples are identical)")
    return EvalPlan(
        sets=sets, limit=limit, k=k, temperature=temperature,
        max_new_tokens=max_new_tokens or (run.rollout.max_new_tokens if run else 64),
        max_model_len=max_model_len or (run.rollout.max_model_len if run else 512),
        dtype=dtype or (run.model.dtype if run else "float32"),
        fp8=fp8 if fp8 is not None else (run.model.fp8.enabled if run else False),
        reward=run.reward if run else RewardConfig(),
        warning=warning,
    )
