"""Math accuracy reward: extract the final answer, normalise it, compare it with math-verify.

Pipeline for one (completion, reference):

1. `extract.extract_answer` finds the answer text (boxed, `####`, "the answer is", `Answer:`,
   optionally the last number if it stands alone). Nothing found -> NO_ANSWER. An answer longer
   than `extract.MAX_ANSWER_CHARS` -> TOO_COMPLEX (never a number inside it instead).
2. `normalize_answer` (both sides): drops `$`/currency signs, math delimiters, markdown, trailing
   full stops, LaTeX thousands separators (`1{,}000`, `1\\,000`); applies the percent policy;
   outside strict mode also drops trailing unit words after a number (`18 dollars`, `5 \\text{cm}`).
3. `budget.over_budget` screens the prediction (power towers, huge exponents and factorials,
   integrals, deep nesting, length) -> TOO_COMPLEX in microseconds instead of a sympy hang.
4. math-verify parses both as LaTeX (wrapped in `\\boxed{}`; plain expressions such as `1/2`,
   `0.5`, `x = 3` are valid LaTeX too) and `verify(gold, pred)` decides. Parsed references are
   cached (a prompt's reference is scored G times per step).

math-verify's own timeouts use SIGALRM and would cancel the pool's soft timer, so they are turned
off here: the time limit is the job of `RewardPool` (see pool.py). Scoring untrusted text
outside the pool has no time limit.
"""

from __future__ import annotations

import functools
import logging
import re
from dataclasses import dataclass
from typing import Any

from rewards.budget import over_budget
from rewards.extract import MAX_ANSWER_CHARS, extract_answer, hash_answer, last_boxed
from rewards.score import Reason, Score, clip

logger = logging.getLogger(__name__)


@functools.lru_cache(maxsize=2)
def _math_verify(strict: bool = False) -> Any:
    """Import math-verify once per process (workers preload it; the driver never needs it)."""
    import math_verify
    from latex2sympy2_extended import NormalizationConfig
    from math_verify import grader, parser

    # We pass timeout=None on purpose (the pool enforces time); silence the one-time warning.
    parser.TIMEOUT_WARNING_SHOWN = True
    grader.TIMEOUT_WARNING_SHOWN = True
    config = math_verify.LatexExtractionConfig(
        boxed_match_priority=0,
        normalization_config=NormalizationConfig(
            basic_latex=True,
            units=not strict,
            malformed_operators=True,  # \frac12, \sqrt2
            nits=True,
            boxed="all",
            equations=False,
        ),
    )
    return math_verify, [config]


_CURRENCY = re.compile(r"\\\$|[$€£¥₹]|\\(?:euro|pounds?|yen)\b")
_MARKDOWN = re.compile(r"^(?:\*\*|__)+|(?:\*\*|__)+$")
_DELIMS = (("\\(", "\\)"), ("\\[", "\\]"))
# Thousands separators written the LaTeX way: 1{,}000 and 1\,000 / 1\;000 / 1\!000 / 1~000.
_LATEX_THOUSANDS = re.compile(r"(?<=\d)(?:\{,\}|\\[,;: !]|~)(?=\d{3}(?!\d))")
_PERCENT_NUMBER = re.compile(r"(-?\d+(?:\.\d+)?)\s*(?:\\%|%|\\text\{\s*\\?%\s*\}|\s*(?:percent|pct)\b)", re.I)
_PERCENT_ANY = re.compile(r"\\%|%|\b(?:percent|pct)\b", re.I)
# "18 dollars", "5\text{ cm}^2", "3 \mbox{ apples}.": a plain number followed by unit words.
_NUMBER_THEN_UNITS = re.compile(
    r"^(?P<num>[-+]?(?:\d[\d,]*(?:\.\d+)?|\.\d+)(?:/\d+)?)\s*"
    r"(?:\\(?:text|textbf|mbox|mathrm|rm)\s*\{\s*[A-Za-z][A-Za-z .]*\}|[A-Za-z]{2,}(?:[ -][A-Za-z]+)*)"
    r"(?:\s*\^\s*\{?\s*[23]\s*\}?)?$"
)
# Words that are math, not units ("3 pi", "2 sqrt 2" are not "3", "2").
_NOT_UNITS = re.compile(r"(?i)\b(?:pi|sqrt|sin|cos|tan|log|ln|exp|i|e|infty|inf|infinity)\b")


def normalize_answer(text: str, *, percent_as_fraction: bool = False, strict: bool = False) -> str:
    """Normalise an answer string before math-verify parses it (applied to both sides)."""
    text = _CURRENCY.sub("", text)
    text = _MARKDOWN.sub("", text).strip()
    for left, right in _DELIMS:
        if text.startswith(left) and text.endswith(right):
            text = text[len(left) : -len(right)].strip()
    text = text.rstrip(" .;,").lstrip(" :")
    while _is_outer_group(text):
        text = text[1:-1].strip()
    text = _LATEX_THOUSANDS.sub("", text)
    # Percentages: either "50%" is 50 (the sign is decoration) or "50%" is 1/2.
    if percent_as_fraction:
        text = _PERCENT_NUMBER.sub(r"(\\frac{\1}{100})", text)
    text = _PERCENT_ANY.sub("", text).strip()
    if not strict:
        m = _NUMBER_THEN_UNITS.match(text)
        if m and not _NOT_UNITS.search(text[m.end("num") :]):
            text = m.group("num")
    return text.strip()


def _is_outer_group(text: str) -> bool:
    """True for `{...}` where the first brace closes at the very end (a LaTeX group, not a set)."""
    if len(text) < 2 or text[0] != "{" or text[-1] != "}":
        return False
    depth = 0
    for i, ch in enumerate(text):
        if ch == "{" and (i == 0 or text[i - 1] != "\\"):
            depth += 1
        elif ch == "}" and text[i - 1] != "\\":
            depth -= 1
            if depth == 0:
                return i == len(text) - 1
    return False


def reference_answer(reference: str) -> str:
    """The answer inside a reference: a bare answer, or a full solution with `#### N` / `\\boxed{}`."""
    if "####" in reference:
        found = hash_answer(reference)
        if found:
            return found
    if "\\boxed" in reference or "\\fbox" in reference:
        found = last_boxed(reference)
        if found:
            return found
    return reference


def _is_math(obj: Any) -> bool:
    return not isinstance(obj, str)


@functools.lru_cache(maxsize=4096)
def _parse_cached(text: str, strict: bool = False) -> tuple[Any, ...]:
    return _parse(text, strict)


def _parse(text: str, strict: bool = False) -> tuple[Any, ...]:
    """math-verify parse of one normalised answer: (sympy object?, raw string fallback?)."""
    mv, config = _math_verify(strict)
    return tuple(
        mv.parse(
            "\\boxed{" + text + "}",
            extraction_config=config,
            fallback_mode="first_match",
            parsing_timeout=None,
        )
    )


@dataclass(frozen=True)
class MathReward:
    """Accuracy reward for math answers: 1.0 if the completion's final answer equals the reference.

    Args:
        fallback_last_number: with no explicit answer marker, grade the last number in the text.
        percent_as_fraction: False: "50%" == 50 (the sign is dropped). True: "50%" == 0.5 == 1/2.
        strict: no stripping of unit words after numbers, ours or math-verify's (`18 dollars`
            and `5 \\text{cm}` no longer equal 18 and 5). In both modes variable names matter
            (math-verify's non-strict renaming would make answer "D" equal "C").
        float_rounding / numeric_precision: passed to `math_verify.verify`.
        reasoning_close: closing tag of the reasoning block; the answer is looked for after it.
        budgets: screen the prediction against `rewards.budget` (TOO_COMPLEX) before sympy.
            False sends everything to sympy, where only the pool's timeout bounds it.
    """

    fallback_last_number: bool = True
    percent_as_fraction: bool = False
    strict: bool = False
    float_rounding: int = 6
    numeric_precision: int = 15
    reasoning_close: str | None = "</think>"
    budgets: bool = True

    def score(self, completion: str, reference: str) -> Score:
        try:
            return self._score(completion, reference)
        except Exception as exc:  # never raise on model output; a verifier bug scores 0 visibly
            logger.debug("MathReward crashed", exc_info=True)
            return Score(0.0, Reason.CRASH, {"error": clip(f"{type(exc).__name__}: {exc}")})

    def _verify(self, gold: tuple[Any, ...], pred: tuple[Any, ...]) -> bool:
        # strict=True: variable names matter. math-verify's non-strict mode renames variables
        # positionally, which would make the multiple-choice answer "D" equal "C".
        mv, _ = _math_verify(self.strict)
        return mv.verify(
            list(gold),
            list(pred),
            float_rounding=self.float_rounding,
            numeric_precision=self.numeric_precision,
            strict=True,
            timeout_seconds=None,
        )

    def _normalize(self, text: str) -> str:
        return normalize_answer(text, percent_as_fraction=self.percent_as_fraction, strict=self.strict)

    def _score(self, completion: str, reference: str) -> Score:
        found = extract_answer(
            completion,
            fallback_last_number=self.fallback_last_number,
            reasoning_close=self.reasoning_close,
        )
        if found is None:
            return Score(0.0, Reason.NO_ANSWER, {})
        if found.too_long:  # whatever the budgets: a cut answer is another answer
            budget = f"answer over {MAX_ANSWER_CHARS} characters"
            return Score(0.0, Reason.TOO_COMPLEX, {"answer": clip(found.text), "source": found.source, "budget": budget})
        answer = self._normalize(found.text)
        details: dict[str, Any] = {"answer": clip(answer), "source": found.source}
        if not answer:
            return Score(0.0, Reason.NO_ANSWER, details)
        beyond = over_budget(answer) if self.budgets else None  # microseconds, not a sympy hang
        if beyond:
            details["budget"] = beyond
            return Score(0.0, Reason.TOO_COMPLEX, details)

        gold = _parse_cached(self._normalize(reference_answer(reference)), self.strict)
        if not gold:
            details["error"] = "reference did not parse"
            return Score(0.0, Reason.PARSE_ERROR, details)
        pred = _parse(answer, self.strict)
        if not pred:
            return Score(0.0, Reason.PARSE_ERROR, details)

        ok = self._verify(gold, pred)
        if ok:
            return Score(1.0, Reason.CORRECT, details)
        if not any(_is_math(p) for p in pred):
            return Score(0.0, Reason.PARSE_ERROR, details)
        return Score(0.0, Reason.WRONG, details)
