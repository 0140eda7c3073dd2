"""Complexity budgets (rewards/budget.py): pathological answers are rejected in microseconds,
real answers never are."""

from __future__ import annotations

import time

import pytest
from rewards_testlib import load_jsonl

from rewards import MathReward, Reason
from rewards.accuracy import normalize_answer, reference_answer
from rewards.budget import over_budget
from rewards.extract import extract_answer

OVER = {
    "power tower": "9^{9^{9^{9}}}",
    "huge power": "2^{10^{10}}",
    "huge power plus one": "10^{10^{10}}+1",
    "negative huge exponent": "2^{-10^{10}}",
    "huge exponent, symbolic base": "x^{10^{7}}",
    "huge matrix power": "\\begin{pmatrix}1&1\\\\1&0\\end{pmatrix}^{100000000}",
    "power with too many digits": "(10^{100})^{10^{5}}",
    "huge factorial": "(10^{8})!",
    "integral": "\\int_0^1 x^{10} e^{x} \\sin(x)\\, dx",
    "double integral": "\\iint_D x\\,dA",
    "deep fractions": "\\frac{1}{" * 20 + "2" + "}" * 20,
    "long": "1+" * 300 + "1",
}
WITHIN = [
    "x^{1000}", "2^{2019}", "(2^{10})^{10^{5}}", "1.5 \\times 10^{8}", "90^\\circ", "e^{-x^2}", "20000!",
    "10,\\!080", "(3!)!", "\\frac{\\sqrt{21}}{5}", "\\left[ \\frac{\\pi^2}{8}, \\frac{5 \\pi^2}{4} \\right]",
    "\\sum_{k=1}^{3} k", "(x+1)^{3000}",  # slow in sympy, but no budget covers it: the pool's timeout does
]


@pytest.mark.parametrize("name", list(OVER))
def test_over_budget(name: str) -> None:
    start = time.perf_counter()
    assert over_budget(OVER[name]), name
    assert time.perf_counter() - start < 0.01


@pytest.mark.parametrize("answer", WITHIN)
def test_within_budget(answer: str) -> None:
    assert over_budget(answer) is None


def test_math_reward_says_which_budget() -> None:
    score = MathReward().score("So \\boxed{2^{10^{10}}}", "3")
    assert (score.value, score.reason) == (0.0, Reason.TOO_COMPLEX)
    assert score.details["budget"].startswith("exponent")
    assert MathReward(budgets=False).score("\\boxed{2^{10}}", "1024").reason is Reason.CORRECT


def test_no_gold_answer_is_over_budget() -> None:
    """The screen must not change a verdict on real data: every gold answer (as written, and as
    extracted from its solution) is within every budget."""
    rows = load_jsonl("math500_test") + load_jsonl("aime24") + load_jsonl("amc23")
    gsm = load_jsonl("gsm8k_test") + load_jsonl("gsm8k_train")
    texts = [str(r["answer"]) for r in rows] + [r["solution"] for r in rows if "solution" in r]
    texts += [reference_answer(r["answer"]) for r in gsm]
    over = []
    for text in texts:
        found = extract_answer(text)
        answer = normalize_answer(found.text if found else text)
        if over_budget(answer):
            over.append((answer, over_budget(answer)))
    assert over == []
