"""The demo's synthetic task: seeded arithmetic word problems with integer answers.

Each problem is a short story with one or two operations ("Ann has 23 apples. She gets 58
more. How many apples does Ann have now?") and a worked solution that ends in
"The answer is N." — the format the math reward extracts. Train and eval sets are drawn with
different seeds and de-duplicated against each other so held-out accuracy is honest.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

NAMES = ["Ann", "Ben", "Cara", "Dan", "Eve", "Finn", "Gia", "Hal", "Ivy", "Jon"]
ITEMS = ["apples", "books", "coins", "cards", "pens", "shells", "stamps", "marbles"]


@dataclass(frozen=True)
class Problem:
    question: str
    solution: str  # worked solution, ends with "The answer is N."
    answer: str


KINDS = ("add", "sub", "add_add", "add_sub")


def make_problem(rng: random.Random, kinds: tuple[str, ...] = KINDS, max_operand: int = 60) -> Problem:
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    a = rng.randint(2, max_operand)
    kind = rng.choice(kinds)
    b = rng.randint(2, max(3, max_operand * 2 // 3))
    if kind == "add":
        q = f"{name} has {a} {item}. {name} gets {b} more. How many {item} now?"
        steps, ans = f"{a}+{b}={a + b}.", a + b
    elif kind == "sub":
        a = a + b  # keep answers non-negative
        q = f"{name} has {a} {item}. {name} gives away {b}. How many {item} now?"
        steps, ans = f"{a}-{b}={a - b}.", a - b
    elif kind == "add_add":
        c = rng.randint(2, 30)
        q = f"{name} has {a} {item}, gets {b} more, then {c} more. How many {item} now?"
        steps, ans = f"{a}+{b}={a + b}. {a + b}+{c}={a + b + c}.", a + b + c
    else:
        c = rng.randint(1, a + b - 1)
        q = f"{name} has {a} {item}, gets {b} more, then gives away {c}. How many {item} now?"
        steps, ans = f"{a}+{b}={a + b}. {a + b}-{c}={a + b - c}.", a + b - c
    return Problem(q, f"{steps} The answer is {ans}.", str(ans))


# Task variants by name: problem kinds, largest operand, and the fraction of training solutions
# whose final line reports a wrong answer (the first operand instead of the result). That noise
# only touches the worked solutions the SFT warm start imitates, never the reference answers:
# the warm-started model then hesitates between the computed result and the distractor, and RL
# from the verifier's reward has to learn which one is right.
TASKS = {
    "arithmetic": (KINDS, 60, 0.0),
    "arithmetic-easy": (("add", "sub"), 30, 0.0),
    "arithmetic-noisy": (("add", "sub"), 9, 0.5),
}


def make_problems(n: int, seed: int, exclude: set[str] = frozenset(), task: str = "arithmetic", noisy: bool = False) -> list[Problem]:
    """n distinct problems from `seed`, none of whose questions is in `exclude`; with `noisy`,
    the task's share of worked solutions ends in the distractor answer."""
    kinds, max_operand, noise = TASKS[task]
    rng = random.Random(seed)
    noise_rng = random.Random(seed + 17)
    seen, out = set(exclude), []
    for _ in range(n * 50):
        if len(out) == n:
            break
        p = make_problem(rng, kinds, max_operand)
        if p.question not in seen:
            seen.add(p.question)
            if noisy and noise_rng.random() < noise:
                first = p.solution.split("+")[0].split("-")[0]
                p = Problem(p.question, p.solution.replace(f"The answer is {p.answer}.", f"The answer is {first}."), p.answer)
            out.append(p)
    if len(out) < n:
        raise ValueError(f"could only draw {len(out)} distinct problems of {n} asked for")
    return out


# Held-out problems come from their own seed stream, a fixed pool of EVAL_POOL; the train split
# excludes the whole pool, so any eval slice is unseen in training whatever sizes a recipe picks.
EVAL_SEED_OFFSET = 1_000_003
EVAL_POOL = 1000


def load_split(split: str, n: int, seed: int, task: str = "arithmetic") -> list[Problem]:
    """`n` problems of `task`, split "train" or "test" (alias "eval")."""
    if task not in TASKS:
        raise ValueError(f"unknown synthetic task {task!r}; known: {', '.join(TASKS)}")
    pool = make_problems(EVAL_POOL, seed + EVAL_SEED_OFFSET, task=task)
    if split == "train":
        return make_problems(n, seed, exclude={p.question for p in pool}, task=task, noisy=True)
    if split in ("test", "eval"):
        if n > EVAL_POOL:
            raise ValueError(f"the synthetic test split has {EVAL_POOL} problems; asked for {n}")
        return pool[:n]
    raise ValueError(f"synthetic split {split!r}: use 'train' or 'test'")
