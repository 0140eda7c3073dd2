"""The verdict type every reward function returns: a value and the reason for it.

`Score` crosses process boundaries (reward workers -> driver), so it is a small frozen,
picklable dataclass; `details` carries a few short fields (the extracted answer, where it was
found, an error message) and never large objects.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any


class Reason(enum.StrEnum):
    """Why a score has its value. Counted per reason in `RewardPool.stats()`."""

    CORRECT = "correct"
    WRONG = "wrong"
    NO_ANSWER = "no_answer"  # no final answer could be located in the completion
    PARSE_ERROR = "parse_error"  # an answer was found but is not a readable math expression
    TOO_COMPLEX = "too_complex"  # the answer exceeds a complexity budget (rewards/budget.py)
    TIMEOUT = "timeout"  # the verifier ran past its time limit (soft or hard)
    CRASH = "crash"  # the verifier raised, or its worker process died


@dataclass(frozen=True)
class Score:
    """value: the reward (accuracy rewards use 0.0 / 1.0); reason: why; details: small extras."""

    value: float
    reason: Reason
    details: dict[str, Any] = field(default_factory=dict)


# Longest string we keep in `details` (extracted answers can be adversarially long).
DETAIL_CHARS = 200


def clip(text: str, limit: int = DETAIL_CHARS) -> str:
    """Shorten `text` for `Score.details`, marking the cut."""
    return text if len(text) <= limit else text[: limit - 3] + "..."
