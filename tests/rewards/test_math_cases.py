"""Hand-written (completion, reference, expected value[, reason]) cases for MathReward.

Each expectation is what a careful human grader says, not what the code happens to return.
"""

from __future__ import annotations

import pytest

from rewards import MathReward, Reason

C, W, N, P = Reason.CORRECT, Reason.WRONG, Reason.NO_ANSWER, Reason.PARSE_ERROR

# (completion, reference, expected value, expected reason or None for "any")
CASES = [
    # --- where the answer is: boxed (nested braces), fbox, ####, "the answer is", labels --------
    ("So the result is \\boxed{42}.", "42", 1, C),
    ("\\boxed{41} is wrong, it is \\boxed{42}", "42", 1, C),
    ("\\boxed{42} ... on reflection \\boxed{41}", "42", 0, W),
    ("We get $\\boxed{\\frac{1}{2}}$", "\\frac{1}{2}", 1, C),
    ("$\\boxed{\\frac{\\sqrt{3}}{2}}$", "\\frac{\\sqrt{3}}{2}", 1, C),
    ("\\boxed{{\\left(1, \\frac{1}{2}\\right)}}", "(1, \\frac{1}{2})", 1, C),
    ("\\boxed{\\{1, 2\\}}", "\\{1,2\\}", 1, C),
    ("\\fbox{7}", "7", 1, C),
    ("Therefore \\boxed 7", "7", 1, C),
    ("\\boxed{}  so the answer is 5", "5", 1, C),
    ("Janet has 3 + 4 = 7 eggs.\n#### 7", "7", 1, C),
    ("#### 1,234", "1234", 1, C),
    ("####-5", "-5", 1, C),
    ("Blah 3 apples.\n#### 8", "3", 0, W),
    ("The answer is 12.", "12", 1, C),
    ("Thus the final answer is $\\frac{3}{4}$. I hope it is correct.", "0.75", 1, C),
    ("The answer is: 9", "9", 1, C),
    ("the answer is **17**.", "17", 1, C),
    ("Answer: 12", "12", 1, C),
    ("**Answer:** 3.5", "7/2", 1, C),
    ("Final Answer: x = 3", "3", 1, C),
    ("A: 64", "64", 1, C),
    ("Answer:\n15", "15", 1, C),
    ("I computed 2 then 5 then finally 10", "10", 1, C),
    ("I computed 2 then 5 then finally 10", "5", 0, W),
    ("There are 1,500 people", "1500", 1, C),
    ("It costs 2.50 dollars in total, 3/4 of the price", "0.75", 1, C),
    # --- reasoning block: only the text after </think> counts --------------------------------
    ("<think>maybe \\boxed{3}</think>The answer is \\boxed{4}", "4", 1, C),
    ("<think>maybe \\boxed{3}</think>The answer is \\boxed{4}", "3", 0, W),
    ("<think>it is 9</think>I am not sure.", "9", 0, N),
    ("<think>it is 9</think>So 9.", "9", 1, C),
    # --- no answer -------------------------------------------------------------------------------
    ("", "3", 0, N),
    ("I don't know.", "3", 0, N),
    ("   \n\t  ", "0", 0, N),
    ("The answer is", "3", 0, N),
    # --- 0.5 vs 1/2 vs \frac{1}{2}, 3.0 vs 3 ----------------------------------------------------
    ("\\boxed{0.5}", "\\frac{1}{2}", 1, C),
    ("\\boxed{1/2}", "\\frac{1}{2}", 1, C),
    ("\\boxed{\\frac{1}{2}}", "0.5", 1, C),
    ("\\boxed{\\dfrac{1}{2}}", "1/2", 1, C),
    ("\\boxed{\\tfrac12}", "0.5", 1, C),
    ("\\boxed{\\frac12}", "\\frac{1}{2}", 1, C),
    ("\\boxed{.5}", "1/2", 1, C),
    ("\\boxed{0.50}", "1/2", 1, C),
    ("\\boxed{2/4}", "\\frac{1}{2}", 1, C),
    ("\\boxed{0.51}", "\\frac{1}{2}", 0, W),
    ("\\boxed{3.0}", "3", 1, C),
    ("\\boxed{3}", "3.0", 1, C),
    ("\\boxed{3.00}", "3", 1, C),
    ("\\boxed{3.01}", "3", 0, W),
    ("\\boxed{0.333}", "\\frac{1}{3}", 0, W),
    ("\\boxed{0.3333333333}", "\\frac{1}{3}", 1, C),
    ("\\boxed{-3}", "3", 0, W),
    ("\\boxed{-\\frac{2}{3}}", "\\frac{-2}{3}", 1, C),
    ("\\boxed{6/-9}", "-\\frac{2}{3}", 1, C),
    # --- x = 3 vs 3, equations ------------------------------------------------------------------
    ("\\boxed{x = 3}", "3", 1, C),
    ("\\boxed{3}", "x=3", 1, C),
    ("\\boxed{x = 4}", "3", 0, W),
    ("\\boxed{y = 3 + 2x}", "y=2x+3", 1, C),
    ("\\boxed{y = 2x + 4}", "y=2x+3", 0, W),
    ("\\boxed{k=-7}", "-7", 1, C),
    # --- intervals -------------------------------------------------------------------------------
    ("\\boxed{(1, 2]}", "(1,2]", 1, C),
    ("\\boxed{[1, 2]}", "(1,2]", 0, W),
    ("\\boxed{(-\\infty, 3)}", "(-\\infty,3)", 1, C),
    ("\\boxed{(-\\infty, 3]}", "(-\\infty,3)", 0, W),
    ("\\boxed{[2, \\infty)}", "[2,\\infty)", 1, C),
    ("\\boxed{(-\\infty, 0) \\cup (1, \\infty)}", "(-\\infty,0)\\cup(1,\\infty)", 1, C),
    ("\\boxed{(1, \\infty) \\cup (-\\infty, 0)}", "(-\\infty,0)\\cup(1,\\infty)", 1, C),
    ("\\boxed{(-\\infty, 0] \\cup (1, \\infty)}", "(-\\infty,0)\\cup(1,\\infty)", 0, W),
    ("\\boxed{\\left[-\\frac{1}{2}, 4\\right)}", "[-0.5, 4)", 1, C),
    # --- sets and lists -------------------------------------------------------------------------
    ("\\boxed{\\{3, 1, 2\\}}", "\\{1,2,3\\}", 1, C),
    ("\\boxed{\\{1, 2\\}}", "\\{1,2,3\\}", 0, W),
    ("\\boxed{1, 2, 3}", "3, 2, 1", 1, C),
    ("\\boxed{-2, 5}", "5, -2", 1, C),
    ("\\boxed{-2, 6}", "5, -2", 0, W),
    ("\\boxed{\\{\\frac{1}{2}, 2\\}}", "\\{0.5, 2\\}", 1, C),
    # --- thousands separators -------------------------------------------------------------------
    ("\\boxed{1,000}", "1000", 1, C),
    ("\\boxed{1,000,000}", "1000000", 1, C),
    ("\\boxed{1{,}000}", "1000", 1, C),
    ("\\boxed{10\\,000}", "10000", 1, C),
    ("The answer is 12,345.", "12345", 1, C),
    ("#### 2,500", "2500", 1, C),
    ("\\boxed{1,001}", "1000", 0, W),
    ("\\boxed{2500}", "2,500", 1, C),
    # --- percentages (default: the % sign is decoration) --------------------------------------
    ("\\boxed{50\\%}", "50", 1, C),
    ("The answer is 50%.", "50", 1, C),
    ("\\boxed{50}", "50\\%", 1, C),
    ("\\boxed{12.5\\%}", "12.5", 1, C),
    ("\\boxed{0.5}", "50\\%", 0, W),
    ("\\boxed{40 percent}", "40", 1, C),
    # --- units and currency ---------------------------------------------------------------------
    ("\\boxed{\\$18}", "18", 1, C),
    ("The answer is $18.90.", "18.90", 1, C),
    ("\\boxed{18 \\text{ dollars}}", "18", 1, C),
    ("\\boxed{5\\text{ cm}^2}", "5", 1, C),
    ("#### 42 apples", "42", 1, C),
    ("\\boxed{12 \\mbox{ inches}}", "12", 1, C),
    ("\\boxed{90^\\circ}", "90", 1, C),
    ("\\boxed{90^{\\circ}}", "90", 1, C),
    ("\\boxed{3\\pi}", "3", 0, W),
    ("\\boxed{€20}", "20", 1, C),
    # --- symbolic equivalences ------------------------------------------------------------------
    ("\\boxed{\\sqrt{8}}", "2\\sqrt{2}", 1, C),
    ("\\boxed{2\\sqrt{3}}", "\\sqrt{12}", 1, C),
    ("\\boxed{\\sqrt{12}}", "3\\sqrt{2}", 0, W),
    ("\\boxed{x^2 + 2x + 1}", "(x+1)^2", 1, C),
    ("\\boxed{x^2 + 1}", "(x+1)^2", 0, W),
    ("\\boxed{\\frac{\\pi}{2}}", "\\pi/2", 1, C),
    ("\\boxed{2^{10}}", "1024", 1, C),
    ("\\boxed{10!}", "3628800", 1, C),
    ("\\boxed{\\binom{5}{2}}", "10", 1, C),
    ("\\boxed{e^{0}}", "1", 1, C),
    ("\\boxed{\\log_2 8}", "3", 1, C),
    ("\\boxed{3 + 4i}", "3+4i", 1, C),
    ("\\boxed{3 - 4i}", "3+4i", 0, W),
    ("\\boxed{\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}}", "\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}", 1, C),
    ("\\boxed{\\begin{pmatrix} 1 \\\\ 3 \\end{pmatrix}}", "\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}", 0, W),
    ("\\boxed{(3, \\frac{\\pi}{2})}", "\\left( 3, \\frac{\\pi}{2} \\right)", 1, C),
    ("\\boxed{(2, 3)}", "(3, 2)", 0, W),
    # --- multiple choice and words --------------------------------------------------------------
    ("\\boxed{\\text{(C)}}", "\\text{(C)}", 1, C),
    ("\\boxed{C}", "\\text{(C)}", 1, C),
    ("\\boxed{(C)}", "\\text{(C)}", 1, C),
    ("\\boxed{D}", "\\text{(C)}", 0, W),
    ("\\boxed{\\text{Evelyn}}", "\\text{Evelyn}", 1, C),
    # --- references given as full solutions ----------------------------------------------------
    ("\\boxed{72}", "She sold 48/2 = 24 in May.\n#### 72", 1, C),
    ("\\boxed{24}", "She sold 48/2 = 24 in May.\n#### 72", 0, W),
    ("\\boxed{5}", "Hence $x = \\boxed{5}$.", 1, C),
    # --- reward hacking attempts ----------------------------------------------------------------
    ("\\boxed{1, 2, 3, 4, 5, 6, 7, 8, 9, 10}", "7", 0, W),
    ("\\boxed{x}", "7", 0, W),
    ("\\boxed{\\text{the answer}}", "7", 0, W),
]


@pytest.mark.parametrize("completion, reference, value, reason", CASES)
def test_math_case(completion: str, reference: str, value: float, reason: Reason) -> None:
    score = MathReward().score(completion, reference)
    assert (score.value, score.reason) == (value, reason), score


def test_there_are_at_least_100_cases() -> None:
    assert len(CASES) >= 100


# (completion, reference, expected value) with percent_as_fraction=True: "50%" is 1/2.
PERCENT_FRACTION_CASES = [
    ("\\boxed{50\\%}", "0.5", 1),
    ("\\boxed{50\\%}", "\\frac{1}{2}", 1),
    ("\\boxed{50\\%}", "50", 0),
    ("\\boxed{0.5}", "50\\%", 1),
    ("The answer is 12.5%.", "1/8", 1),
    ("\\boxed{25 percent}", "0.25", 1),
]


@pytest.mark.parametrize("completion, reference, value", PERCENT_FRACTION_CASES)
def test_percent_as_fraction(completion: str, reference: str, value: float) -> None:
    assert MathReward(percent_as_fraction=True).score(completion, reference).value == value


def test_last_number_fallback_is_configurable() -> None:
    text = "I computed 2 then 5 then finally 10"
    assert MathReward(fallback_last_number=True).score(text, "10").reason is C
    score = MathReward(fallback_last_number=False).score(text, "10")
    assert (score.value, score.reason) == (0, N)
    # explicit markers still work without the fallback
    assert MathReward(fallback_last_number=False).score("#### 10", "10").value == 1


STRICT_CASES = [
    # (completion, reference, lenient value, strict value)
    ("\\boxed{18 \\text{ dollars}}", "18", 1, 0),
    ("\\boxed{7 bananas}", "7", 1, 0),
    ("#### 42 apples", "42", 1, 0),
    ("\\boxed{2a + 1}", "2b + 1", 0, 0),  # variable names matter in both modes
    ("\\boxed{D}", "C", 0, 0),
    ("\\boxed{\\frac{1}{2}}", "0.5", 1, 1),
    ("\\boxed{x = 3}", "3", 1, 1),
]


@pytest.mark.parametrize("completion, reference, lenient, strict", STRICT_CASES)
def test_strictness(completion: str, reference: str, lenient: float, strict: float) -> None:
    assert MathReward(strict=False).score(completion, reference).value == lenient
    assert MathReward(strict=True).score(completion, reference).value == strict


def test_details_carry_the_extracted_answer() -> None:
    score = MathReward().score("so \\boxed{\\frac{1}{2}}", "0.5")
    assert score.details == {"answer": "\\frac{1}{2}", "source": "boxed"}
    assert MathReward().score("Answer: 4", "4").details["source"] == "label"


def test_unparseable_reference_is_a_parse_error_not_a_crash() -> None:
    score = MathReward().score("\\boxed{3}", "")
    assert score.value == 0 and score.reason in (P, W)


def test_unparseable_answer_is_a_parse_error() -> None:
    score = MathReward().score("\\boxed{\\frac{}{}{}^^}", "3")
    assert (score.value, score.reason) == (0, P)
