"""Held-out evaluation: pass@1, avg@k and pass@k of a policy on a problem set.

Used in two places with the same code: every N steps inside a run (through the run's rollout
workers, current weights) and `lockstep eval CHECKPOINT` (a fresh rollout worker on the newest
complete checkpoint).
"""

from __future__ import annotations

import math
from dataclasses import dataclass


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


def evaluate(generate, score, prompts: list[list[int]], answers: list[str], k: int, max_tokens: int, temperature: float) -> EvalResult:
    """`generate(prompts, n, max_tokens, temperature)` → per prompt a list of {ids, text, …};
    `score(list[(completion, reference)])` → list of Score."""
    groups = generate(prompts, k, max_tokens, temperature)
    items = [(c["text"], answer) for group, answer in zip(groups, answers) for c in group]
    scores = score(items)
    correct, per_problem, i = [], [], 0
    for group, answer in zip(groups, answers):
        row = [scores[i + j].value >= 1.0 for j in range(len(group))]
        per_problem.append({"answer": answer, "completions": [c["text"] for c in group], "correct": row, "reasons": [str(scores[i + j].reason) for j in range(len(group))]})
        correct.append(row)
        i += len(group)
    return EvalResult(summarize(correct, k), per_problem)
