"""Format reward: does the completion look like "reasoning block, then a final answer"?

Checks (each enabled check is worth an equal share of 1.0):
- `reasoning`: exactly one well-formed, non-empty `<think>...</think>` block (the opening tag may
  be part of the prompt, as with chat templates that open the block for the model: set
  `opened_in_prompt=True`), and, if `reasoning_first`, nothing but whitespace before it;
- `answer`: an explicit final answer (boxed / `####` / "the answer is" / `Answer:`; the
  last-number fallback does not count, nor an answer over `MAX_ANSWER_CHARS`, which is not
  gradable) after the reasoning block (anywhere if there is no block; nowhere if the block was
  opened and never closed).
"""

from __future__ import annotations

from dataclasses import dataclass

from rewards.extract import extract_answer, sanitize
from rewards.score import Reason, Score, clip


@dataclass(frozen=True)
class FormatReward:
    """Value in [0, 1]: the fraction of enabled checks that pass. Reason: CORRECT if all pass,
    NO_ANSWER if the answer check fails, WRONG otherwise."""

    open_tag: str = "<think>"
    close_tag: str = "</think>"
    opened_in_prompt: bool = False
    reasoning_first: bool = True
    require_reasoning: bool = True
    require_answer: bool = True

    def __post_init__(self) -> None:
        if not (self.require_reasoning or self.require_answer):
            raise ValueError("FormatReward needs require_reasoning or require_answer (or both)")
        if not self.open_tag or not self.close_tag:
            raise ValueError("FormatReward: open_tag and close_tag must be non-empty strings")

    def _reasoning_ok(self, text: str) -> bool:
        n_open, n_close = text.count(self.open_tag), text.count(self.close_tag)
        if n_close != 1 or n_open != (0 if self.opened_in_prompt else 1):
            return False
        start = 0
        if not self.opened_in_prompt:
            start = text.index(self.open_tag)
            if self.reasoning_first and text[:start].strip():
                return False
            start += len(self.open_tag)
        end = text.index(self.close_tag)
        return end > start and bool(text[start:end].strip())

    def _answer_region(self, text: str) -> str:
        """Where the answer may be: after the last closing tag; everywhere if there is no block at
        all; nowhere if a block was opened and never closed (truncated inside the reasoning)."""
        cut = text.rfind(self.close_tag)
        if cut >= 0:
            return text[cut + len(self.close_tag) :]
        if self.opened_in_prompt or self.open_tag in text:
            return ""
        return text

    def score(self, completion: str, reference: str) -> Score:
        try:
            text = sanitize(completion)
            checks: dict[str, bool] = {}
            if self.require_reasoning:
                checks["reasoning"] = self._reasoning_ok(text)
            if self.require_answer:
                found = extract_answer(self._answer_region(text), fallback_last_number=False, reasoning_close=None)
                checks["answer"] = found is not None and not found.too_long
            value = sum(checks.values()) / len(checks)
            if value == 1.0:
                reason = Reason.CORRECT
            elif checks.get("answer") is False:
                reason = Reason.NO_ANSWER
            else:
                reason = Reason.WRONG
            return Score(value, reason, checks)
        except Exception as exc:  # never raise on model output
            return Score(0.0, Reason.CRASH, {"error": clip(f"{type(exc).__name__}: {exc}")})
