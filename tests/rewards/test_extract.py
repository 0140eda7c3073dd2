"""Final-answer extraction: formats, precedence, bounds, and property-based fuzzing."""

from __future__ import annotations

import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rewards import extract
from rewards.extract import Extracted, extract_answer


@pytest.mark.parametrize(
    "text, expected",
    [
        ("\\boxed{42}", ("42", "boxed")),
        ("\\boxed{\\frac{a}{b^{2}}}", ("\\frac{a}{b^{2}}", "boxed")),
        ("\\boxed{\\{1,2\\}}", ("\\{1,2\\}", "boxed")),
        ("\\boxed{1} then \\boxed{2}", ("2", "boxed")),
        ("\\boxed{1} then \\boxed{2", ("1", "boxed")),  # unclosed last box: previous one
        ("\\fbox{3} and \\boxed{4}", ("4", "boxed")),
        ("\\boxed{4} and \\fbox{3}", ("3", "boxed")),
        ("\\boxed 9 apples", ("9", "boxed")),
        ("\\boxed{ 5 }", ("5", "boxed")),
        ("x\n#### 72\n", ("72", "hash")),
        ("#### 1\nmore\n#### 2", ("2", "hash")),
        ("The answer is 5. Then 6 more.", ("5", "answer_is")),
        ("The final answer is $3.5$.", ("$3.5$", "answer_is")),
        ("the answer is 3.14 meters", ("3.14 meters", "answer_is")),
        ("Answer: 7", ("7", "label")),
        ("**Answer**: 8", ("8", "label")),
        ("Final answer: 9", ("9", "label")),
        ("A: 10", ("10", "label")),
        ("Answer:\n11", ("11", "label")),
        ("a: 10", ("10", "last_number")),  # lower-case "a:" is not an answer label
        # a label anywhere on the last line (issue 21: the fallback took the denominator, "2")
        ("So we halve it. Final Answer: $\\frac{84}{2}$", ("$\\frac{84}{2}$", "label")),
        ("So we halve it, final answer: 42", ("42", "label")),
        ("So we halve it, **Final Answer:** 42. I hope it is correct.", ("42", "label")),
        ("Answer: 41, no, Final Answer: 42", ("42", "label")),
        ("Answer: 41\nthen Final Answer: 42\n\n", ("42", "label")),
        ("Answer: 41\nthen Final Answer: 42\nI hope so.", ("41", "label")),  # only on the last line
        ("So, Final Answer:", None),  # a label with nothing after it
        ("Point A: 12", ("12", "last_number")),  # "A:" only counts at the start of a line
        ("there are 3 cats and 12 dogs", ("12", "last_number")),
        ("it costs 1,234.50 total", ("1,234.50", "last_number")),
        ("up by 12 %", ("12 %", "last_number")),
        ("ratio 3/4", ("3/4", "last_number")),
        ("drop of -7", ("-7", "last_number")),
        ("she has **17** apples", ("17", "last_number")),
        ("the angle is $90^\\circ$", ("90", "last_number")),
        ("3 + 4 = 7", ("7", "last_number")),
        ("3 + 4 => 7 apples", ("7", "last_number")),
        ("x \\approx 7", ("7", "last_number")),
        ("so $x = -7$", ("-7", "last_number")),
        ("in all 10\\,000 dollars", ("10\\,000", "last_number")),
        ("a 7-day week", ("7", "last_number")),
        ("\\textbf{12} cats", ("12", "last_number")),
        # the fallback takes no part of a fraction or an expression, nor an earlier number instead
        ("so $\\frac{84}{2}$", None),
        ("so $\\dfrac{84}{2}$.", None),
        ("so $\\frac12$", None),
        ("3 then $\\frac{84}{2}$", None),
        ("3 then $84/x$", None),
        ("3 then $x/2$", None),
        ("3 then $x^2$", None),
        ("3 then $x^{2}$", None),
        ("3 then $2^x$", None),
        ("3 then $x_1$", None),
        ("3 then $a_{12}$", None),
        ("3 then $\\sqrt{2}$", None),
        ("3 then $\\sqrt2$", None),
        ("3 then $\\sqrt[3]{8}$", None),
        ("3 then $\\log_2 8$", None),
        ("3 then $\\binom{5}{2}$", None),
        ("3 then $x + 7$", None),
        ("3 then $7 - x$", None),
        ("3 then $3\\pi$", None),
        ("3 then $2 \\cdot 5$", None),
        ("3 then $x \\le 5$", None),
        ("3 then 10 -7", None),
        ("3 then 1.2.3", None),
        # digits inside words are no numbers (an AIME solution ends in its author's name)
        ("180 + 24 = 204. -sepehr2010", ("204", "last_number")),
        ("the probability is .5", (".5", "last_number")),
        # a box, even unusable, turns the fallback off ("\\boxed{" cut off by the token limit)
        ("I got 7, so \\boxed{", None),
        ("I got 7, so \\boxed{} is", None),
        # precedence: boxed > #### > answer is > label > last number
        ("Answer: 1\n#### 2\nThe answer is 3 \\boxed{4} 5", ("4", "boxed")),
        ("Answer: 1\nThe answer is 3\n#### 2\n 5", ("2", "hash")),
        ("Answer: 1\nThe answer is 3\n 5", ("3", "answer_is")),
        # reasoning block
        ("<think>\\boxed{1}</think>so 2", ("2", "last_number")),
        ("<think>\\boxed{1}</think>", None),
        ("<think>\\boxed{1}", ("1", "boxed")),  # no closing tag: the whole text counts
        ("", None),
        ("no digits here", None),
    ],
)
def test_extract_answer(text: str, expected: tuple[str, str] | None) -> None:
    found = extract_answer(text)
    assert (None if found is None else (found.text, found.source)) == expected


def test_fallback_can_be_disabled() -> None:
    assert extract_answer("3 cats", fallback_last_number=False) is None
    assert extract_answer("3 cats", fallback_last_number=True) == Extracted("3", "last_number")


def test_reasoning_close_tag_is_configurable() -> None:
    text = "<reason>\\boxed{1}</reason>\\boxed{2}"
    assert extract_answer(text, reasoning_close="</reason>").text == "2"
    assert extract_answer("</think>\\boxed{3}", reasoning_close=None).text == "3"


def test_sanitize_drops_controls_and_lone_surrogates() -> None:
    dirty = "a\x00b\x07c\x1b[31md\x7fe\x85f\ud800g\udfffh\ti\nj"
    assert extract.sanitize(dirty) == "abc[31mdefgh\ti\nj"
    invalid_utf8 = b"The answer is \xff\xfe 7".decode("utf-8", errors="surrogateescape")
    assert extract_answer(invalid_utf8) == Extracted("7", "answer_is")


@pytest.mark.parametrize(
    "text",
    [
        "{" * 1_000_000,
        "}" * 1_000_000,
        "\\boxed{" * 200_000,
        "\\boxed{" + "{" * 1_000_000,
        "#" * 1_000_000,
        "the answer is " * 70_000,
        "Answer:" * 150_000,
        "1," * 500_000,
        "9" * 1_000_000,
        " " * 1_000_000 + "1",
        "\n" * 1_000_000,
    ],
    ids=[
        "open",
        "close",
        "boxed",
        "boxed-open",
        "hash",
        "answer-is",
        "label",
        "commas",
        "digits",
        "spaces",
        "newlines",
    ],
)
def test_megabyte_inputs_are_linear_time(text: str) -> None:
    start = time.perf_counter()
    extract_answer(text)
    assert time.perf_counter() - start < 10.0  # ~0.1 s; a quadratic scan of 1 MB takes minutes


def test_long_boxed_content_is_bounded() -> None:
    inner = "1+" * (extract.MAX_ANSWER_CHARS) + "1"
    assert extract.last_boxed("\\boxed{" + inner + "}") is None
    assert extract.last_boxed("\\boxed{" + "1+" * 100 + "1}") == "1+" * 100 + "1"


def _too_long(found: Extracted | None) -> tuple[str, bool, int] | None:
    return None if found is None else (found.source, found.too_long, len(found.text))


LIMIT = extract.MAX_ANSWER_CHARS


@pytest.mark.parametrize(
    "text, expected",
    [
        # issue 21: the over-long box was skipped and the last number inside it graded
        ("\\boxed{" + "\\frac{1}{" * 121 + "7" + "}" * 121 + "}", ("boxed", True, LIMIT)),
        ("\\boxed{" + "x" + " + x" * 259 + " + 7}", ("boxed", True, LIMIT)),  # 1,041 characters
        ("\\boxed{" + "x" + " + x" * 239 + " + 7}", ("boxed", False, 961)),
        ("\\boxed{" + "7" * LIMIT + "}", ("boxed", False, LIMIT)),  # just within the limit
        ("\\boxed{" + "7" * (LIMIT + 1) + "}", ("boxed", True, LIMIT)),  # just over it
        ("\\boxed{" + "7" * (LIMIT + 1), ("boxed", True, LIMIT)),  # over it and never closed
        ("\\boxed{" + "7" * (LIMIT - 1), None),  # cut off within the limit: no answer
        ("\\boxed{7} \\boxed{" + "7" * (LIMIT + 1) + "}", ("boxed", True, LIMIT)),  # the last box
        ("\\boxed " + "7" * LIMIT, ("boxed", False, LIMIT)),
        ("\\boxed " + "7" * (LIMIT + 1), ("boxed", True, LIMIT)),
        ("\\boxed{" + "{" * 1_000_000, ("boxed", True, LIMIT)),
        ("#### " + "7" * (LIMIT + 1), ("hash", True, LIMIT)),  # no marker cuts its answer short
        ("The answer is " + "7" * (LIMIT + 1) + ". Done.", ("answer_is", True, LIMIT)),
        ("The answer is 7. " + "x" * 2 * LIMIT, ("answer_is", False, 1)),  # the sentence, not the line
        ("Answer: " + "7" * (LIMIT + 1), ("label", True, LIMIT)),
        ("So, Final Answer: " + "7" * (LIMIT + 1), ("label", True, LIMIT)),
    ],
)
def test_an_over_long_answer_is_marked_not_cut_or_skipped(text: str, expected: tuple | None) -> None:
    assert _too_long(extract_answer(text)) == expected


# --- property-based ----------------------------------------------------------------------------
ANSWERS = st.one_of(
    st.integers(-(10**12), 10**12).map(str),
    st.fractions().map(lambda f: f"\\frac{{{f.numerator}}}{{{f.denominator}}}"),
    st.from_regex(r"[a-z0-9+\-*/^(), ]{1,30}", fullmatch=True).filter(lambda s: s.strip()),
)
NOISE = st.text(alphabet=st.characters(blacklist_characters="\\"), max_size=300)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(max_size=2000))
def test_extract_never_raises_and_returns_a_substring(text: str) -> None:
    found = extract_answer(text)
    if found is not None:
        assert found.source in extract.SOURCES
        assert found.text and len(found.text) <= extract.MAX_ANSWER_CHARS
        assert found.text in extract.sanitize(text)


@settings(max_examples=150, deadline=None)
@given(prefix=NOISE, answer=ANSWERS, suffix=NOISE.filter(lambda s: "</think>" not in s))
def test_last_box_wins_whatever_surrounds_it(prefix: str, answer: str, suffix: str) -> None:
    text = prefix + "\\boxed{" + answer + "}" + suffix
    assert extract_answer(text) == Extracted(answer.strip(), "boxed")


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(0, 10**9), min_size=1, max_size=20), st.sampled_from([" ", "\n", " and ", "; "]))
def test_last_number_is_the_last_integer(numbers: list[int], sep: str) -> None:
    text = "values:" + sep.join(str(n) for n in numbers) + " end"
    assert extract_answer(text) == Extracted(str(numbers[-1]), "last_number")


@settings(max_examples=100, deadline=None)
@given(
    st.text(alphabet=st.characters(whitelist_categories=("L", "Zs")), max_size=200),
    st.integers(0, 10**9),
    st.integers(1, 10**9),
    st.sampled_from(
        ["\\frac{{{a}}}{{{b}}}", "{a}/x", "x/{b}", "x^{b}", "x^{{{b}}}", "x_{b}", "\\sqrt{{{b}}}", "x + {b}", "{a}_{b}"]
    ),
)
def test_the_fallback_never_takes_part_of_an_expression(prose: str, a: int, b: int, template: str) -> None:
    text = f"{prose} {a} then ${template.format(a=a, b=b)}$"
    found = extract_answer(text)
    assert found is None or found.source == "label", (text, found)  # the prose may say "Answer:"


@settings(max_examples=100, deadline=None)
@given(st.integers(-(10**9), 10**9), NOISE.filter(lambda s: "####" not in s and "\\" not in s))
def test_hash_line_wins_over_text(n: int, before: str) -> None:
    text = before + "\n#### " + str(n) + "\n"
    found = extract_answer(text)
    assert found == Extracted(str(n), "hash")
