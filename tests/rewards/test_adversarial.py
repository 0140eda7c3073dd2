"""Adversarial completions through the real math pool: bounded time, score 0 with a reason,
no crash of the driver, and the pool still works afterwards."""

from __future__ import annotations

import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rewards import MathReward, Reason, RewardPool

ADVERSARIAL = {
    "power tower": "\\boxed{9^{9^{9^{9}}}}",
    "huge power": "\\boxed{2^{10^{10}}}",
    "huge power plus one": "The answer is $10^{10^{10}}+1$.",
    "huge factorial": "\\boxed{(10^{8})!}",
    "slow integral": "\\boxed{\\int_0^1 x^{1000} e^{x} \\sin(x)\\, dx}",
    "deep parentheses": "\\boxed{" + "(" * 400 + "1" + ")" * 400 + "}",
    "deep fractions": "\\boxed{" + "\\frac{1}{" * 80 + "2" + "}" * 80 + "}",
    "deep sqrt": "\\boxed{" + "\\sqrt{" * 120 + "2" + "}" * 120 + "}",
    "deep exponents": "\\boxed{" + "2^{" * 60 + "2" + "}" * 60 + "}",
    "megabyte of open braces": "{" * 1_000_000,
    "megabyte of boxes": "\\boxed{" * 150_000,
    "megabyte then a box": "}" * 1_000_000 + "\\boxed{4}",
    "hundred thousand digits": "\\boxed{" + "9" * 100_000 + "}",
    "control characters": "\x00\x01\x1b[2J\x7f The answer is \x07 4\x00",
    "invalid unicode": b"\\boxed{\xff\xfe\xfd}".decode("utf-8", errors="surrogateescape"),
    "lone surrogates": "\ud800\\boxed{\udfff3\ud800}",
    "nul bytes": "\\boxed{\x00}" + "\x00" * 10_000,
    "unbalanced": "\\boxed{\\frac{1}{2}",
    "latex garbage": "\\boxed{\\frac{\\frac{}{}}{\\sqrt[}{}}^^__}",
    "huge matrix power": "\\boxed{\\begin{pmatrix}1&1\\\\1&0\\end{pmatrix}^{100000000}}",
    # within every complexity budget, yet sympy's expansion runs for minutes: the timeout ends it
    "slow expansion": "\\boxed{(x+1)^{3000}}",
}
# reference "3": none of these completions is a correct answer 3 ("lone surrogates" is 3, so its
# reference is 4 — the surrogates must be dropped, not break parsing)
REFS = {"megabyte then a box": "5", "control characters": "5", "lone surrogates": "4"}
ALLOWED = {Reason.WRONG, Reason.NO_ANSWER, Reason.PARSE_ERROR, Reason.TOO_COMPLEX, Reason.TIMEOUT}


def test_adversarial_batch_is_bounded_and_scored_zero(math_pool: RewardPool) -> None:
    names = list(ADVERSARIAL)
    items = [(ADVERSARIAL[n], REFS.get(n, "3")) for n in names]
    math_pool.score([("\\boxed{1}", "1")] * 4)  # workers started: time the batch, not start-up
    start = time.monotonic()
    scores = math_pool.score(items, timeout=120)
    elapsed = time.monotonic() - start
    report = {n: (s.reason.value, s.details.get("timeout")) for n, s in zip(names, scores, strict=True)}
    for name, score in zip(names, scores, strict=True):
        assert score.value == 0.0 and score.reason in ALLOWED, (name, score)
    # Each item's own time is bounded by the timeout (hard kills land within a second of it on
    # a normally loaded machine; 2 s late was seen at a load average of 12 on 2 cores).
    for name, score in zip(names, scores, strict=True):
        if score.reason is Reason.TIMEOUT:
            assert score.details["after_s"] < math_pool.timeout_s + 3.0, (name, score)
    # The complexity budgets reject towers, huge powers, factorials, integrals and deep nesting in
    # microseconds; what slips through (the slow expansion) is ended by the timeout. The batch
    # is bounded by about one timeout (a margin for CI machines shared with other jobs).
    for name in ("power tower", "huge power", "huge factorial", "slow integral", "deep fractions", "deep exponents"):
        assert report[name][0] == "too_complex", (name, report)
    assert report["slow expansion"][0] == "timeout", report
    assert elapsed < math_pool.timeout_s + 5.0, (elapsed, report)
    assert report["megabyte of open braces"][0] == "no_answer"
    # and the pool still answers correctly
    assert [s.value for s in math_pool.score([("\\boxed{4}", "4"), ("#### 5", "5")])] == [1.0, 1.0]


def test_the_same_inputs_are_correct_when_they_should_be(math_pool: RewardPool) -> None:
    scores = math_pool.score(
        [
            ("}" * 1_000_000 + "\\boxed{4}", "4"),
            ("\x00\x01\x1b[2J\x7f The answer is \x07 4\x00", "4"),
            ("\ud800\\boxed{\udfff3\ud800}", "3"),
            ("\\boxed{" + "(" * 8 + "7" + ")" * 8 + "}", "7"),
        ]
    )
    assert [s.value for s in scores] == [1.0, 1.0, 1.0, 1.0]


# Issue 21, "rewards that lie": (completion, reference, verdict now; it was correct before).
LIES = [
    ("\\boxed{" + "\\frac{1}{" * 121 + "7" + "}" * 121 + "}", "7", Reason.TOO_COMPLEX),  # 1/7, over-long
    ("\\boxed{x" + " + x" * 259 + " + 7}", "7", Reason.TOO_COMPLEX),  # 1,041 characters
    ("The answer is 7. \\boxed{x" + " + x" * 259 + " + 7}", "7", Reason.TOO_COMPLEX),
    ("We halve it. Final Answer: $\\frac{84}{2}$", "2", Reason.WRONG),  # it is 42
    ("We halve it: $\\frac{84}{2}$", "2", Reason.NO_ANSWER),  # no marker, and the 2 is a denominator
]


def test_rewards_that_lied_through_the_pool(math_pool: RewardPool) -> None:
    scores = math_pool.score([(c, r) for c, r, _ in LIES], timeout=120)
    assert [(s.value, s.reason) for s in scores] == [(0.0, reason) for _, _, reason in LIES]
    assert all(s.graded for s in scores)  # verdicts on the answer: trained on, not masked
    assert math_pool.score([("We halve it. Final Answer: $\\frac{84}{2}$", "42")])[0].reason is Reason.CORRECT


# Only inputs that are fast: outside the pool there is no time limit, and what slips past the
# complexity budgets (the slow expansion) runs for minutes in-process — that is what the pool is for.
@pytest.mark.parametrize("name", [n for n in ADVERSARIAL if n != "slow expansion"])
def test_in_process_scoring_never_raises(name: str) -> None:
    score = MathReward().score(ADVERSARIAL[name], REFS.get(name, "3"))
    assert score.value == 0.0 and score.reason in ALLOWED


@settings(max_examples=15, deadline=None)
@given(st.lists(st.tuples(st.text(max_size=300), st.sampled_from(["3", "\\frac{1}{2}", "x=2", "(1,2]"])), max_size=16))
def test_fuzz_math_pool(math_pool: RewardPool, items: list[tuple[str, str]]) -> None:
    scores = math_pool.score(items, timeout=120)
    assert len(scores) == len(items)
    for score in scores:
        assert score.value in (0.0, 1.0)
        assert isinstance(score.reason, Reason) and score.reason is not Reason.CRASH
        assert (score.value == 1.0) == (score.reason is Reason.CORRECT)
