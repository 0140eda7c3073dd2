"""Hand-written (completion, reference, expected value[, reason]) cases for MathReward.

Each expectation is what a careful human grader says, not what the code happens to return.
"""

from __future__ import annotations

import pytest

from rewards import MathReward, Reason

C, W, N, P, T = Reason.CORRECT, Reason.WRONG, Reason.NO_ANSWER, Reason.PARSE_ERROR, Reason.TOO_COMPLEX


def nested_frac(levels: int, inner: str = "7") -> str:
    """`\\frac{1}{\\frac{1}{...7}}`: the value is 1/7 for an odd number of levels, 7 for an even one."""
    return "\\frac{1}{" * levels + inner + "}" * levels


def sum_ending_in_7(chars: int) -> str:
    """`x + x + ... + x + 7`, exactly `chars` characters long (chars = 1 mod 4)."""
    assert chars % 4 == 1
    return "x" + " + x" * ((chars - 5) // 4) + " + 7"

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
    # --- issue 21, "rewards that lie": an over-long box is too_complex, never a number inside it --
    ("\\boxed{" + nested_frac(121) + "}", "7", 0, T),  # 1/7, 1,211 characters: was correct (the 7)
    ("\\boxed{" + nested_frac(121) + "}", "\\frac{1}{7}", 0, T),  # over-long even when right
    ("\\boxed{" + nested_frac(80) + "}", "7", 0, T),  # 801 characters: the depth budget
    ("\\boxed{" + sum_ending_in_7(961) + "}", "7", 0, T),  # the 400-character budget
    ("\\boxed{" + sum_ending_in_7(997) + "}", "7", 0, T),  # just under the box limit: the budget
    ("\\boxed{" + sum_ending_in_7(1001) + "}", "7", 0, T),  # just over it: was correct
    ("\\boxed{" + sum_ending_in_7(1041) + "}", "7", 0, T),  # was correct (the 7)
    ("\\boxed{7} or rather \\boxed{" + sum_ending_in_7(1041) + "}", "7", 0, T),  # not the box before
    ("The answer is 7. \\boxed{" + sum_ending_in_7(1041) + "}", "7", 0, T),  # nor another marker
    ("It is 7. \\boxed{" + sum_ending_in_7(1041), "7", 0, T),  # nor a number before it (cut off)
    ("It is 7. \\boxed{x + ", "7", 0, N),  # a cut-off box: no answer, no number from elsewhere
    # --- ... and a label anywhere on the last line; a fallback that never takes part of an expression
    ("We divide the total by two. Final Answer: $\\frac{84}{2}$", "42", 1, C),  # was wrong: "2"
    ("We divide the total by two. Final Answer: $\\frac{84}{2}$", "2", 0, W),  # was correct
    ("Final Answer: $\\frac{84}{2}$", "42", 1, C),  # at the start of the line (always worked)
    ("Adding the 3 boxes, Final Answer: 42", "42", 1, C),  # a plain number
    ("Adding the 3 boxes, Final Answer: 42 apples.", "42", 1, C),
    ("Adding the 3 boxes, **Final Answer:** 42. I hope it is correct.", "42", 1, C),
    ("First Answer: 41, no, Final Answer: 42", "42", 1, C),  # the last label on the line
    ("Adding the 3 boxes, Final Answer: $\\boxed{42}$", "42", 1, C),  # with a box
    ("Adding the 3 boxes, Final Answer: $\\boxed{41}$", "42", 0, W),
    ("Point A: 42", "42", 1, C),  # "A:" inside a line is no label (the number stands alone)
    ("So the Final Answer: $\\frac{84}{2}$\nI hope it is correct.", "42", 0, N),  # not the last line
    ("So the Final Answer: $\\frac{84}{2}$\nI hope it is correct.", "2", 0, N),  # was correct: "2"
    ("so it is $\\frac{84}{2}$", "2", 0, N),  # a denominator: was correct
    ("so it is $\\frac{84}{2}$", "84", 0, N),
    ("so it is $84/x$", "84", 0, N),
    ("we get $x^2$", "2", 0, N),
    ("the sides are 3 and $\\sqrt{2}$", "2", 0, N),
    ("the sides are 3 and $\\sqrt{2}$", "3", 0, N),  # not a number before the expression either
    ("it is $x + 7$", "7", 0, N),
    ("the log is $\\log_2 8$", "8", 0, N),
    ("the area is $3\\pi$", "3", 0, N),
    ("she has **17** apples", "17", 1, C),  # standalone numbers still count
    ("the angle is $90^\\circ$.", "90", 1, C),
    ("so 3 + 4 = 7", "7", 1, C),
    ("so $x = -7$", "-7", 1, C),
    ("in all 10\\,000 dollars", "10000", 1, C),
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


def test_an_over_long_box_says_why_it_is_too_complex() -> None:
    score = MathReward().score("\\boxed{" + nested_frac(121) + "}", "7")
    assert (score.value, score.reason) == (0, T)
    assert score.details["budget"] == "answer over 1000 characters" and score.details["source"] == "boxed"
    assert score.details["answer"].startswith("\\frac{1}{\\frac{1}{")  # the box, not the 7 in it


@pytest.mark.parametrize("budgets", [True, False])
def test_the_box_limit_is_exact_and_does_not_depend_on_the_budgets(budgets: bool) -> None:
    reward = MathReward(budgets=budgets)
    under, over = "7" + " " * 999, "7" + " " * 1000  # 1,000 and 1,001 characters
    assert reward.score("\\boxed{" + under + "}", "7").reason is C
    assert reward.score("\\boxed{" + over + "}", "7").reason is T
    # without the budgets, a long answer within the limit is graded on all of it (248x + 7 != 7)
    expected = T if budgets else W
    assert reward.score("\\boxed{" + sum_ending_in_7(997) + "}", "7").reason is expected
    assert reward.score("\\boxed{" + sum_ending_in_7(1001) + "}", "7").reason is T


def test_unparseable_answer_is_a_parse_error() -> None:
    score = MathReward().score("\\boxed{\\frac{}{}{}^^}", "3")
    assert (score.value, score.reason) == (0, P)
