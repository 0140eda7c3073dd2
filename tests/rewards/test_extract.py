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
        ("there are 3 cats and 12 dogs", ("12", "last_number")),
        ("it costs 1,234.50 total", ("1,234.50", "last_number")),
        ("up by 12 %", ("12 %", "last_number")),
        ("ratio 3/4", ("3/4", "last_number")),
        ("drop of -7", ("-7", "last_number")),
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
@given(st.integers(-(10**9), 10**9), NOISE.filter(lambda s: "####" not in s and "\\" not in s))
def test_hash_line_wins_over_text(n: int, before: str) -> None:
    text = before + "\n#### " + str(n) + "\n"
    found = extract_answer(text)
    assert found == Extracted(str(n), "hash")
