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

    @property
    def graded(self) -> bool:
        """False for TIMEOUT and CRASH: no verdict on the answer was reached, so the 0 that
        comes with them says nothing about the answer. Training on it as if the answer were
        wrong teaches the policy to avoid whatever makes the verifier slow or break; a driver
        should mask such samples out of the loss (or drop their group) and count them.
        Every other reason is a verdict on the answer itself (TOO_COMPLEX and PARSE_ERROR
        included: the answer is what is too complex or unreadable)."""
        return self not in _UNGRADED


_UNGRADED = frozenset({Reason.TIMEOUT, Reason.CRASH})


@dataclass(frozen=True)
class Score:
    """value: the reward (accuracy rewards use 0.0 / 1.0); reason: why; details: small extras."""

    value: float
    reason: Reason
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def graded(self) -> bool:
        """True if the value is a verdict on the answer; False if the sample could not be
        graded (TIMEOUT, CRASH): mask it out of the loss, do not train on its 0 (see
        `Reason.graded`)."""
        return Reason(self.reason).graded


# Longest string we keep in `details` (extracted answers can be adversarially long).
DETAIL_CHARS = 200


def clip(text: str, limit: int = DETAIL_CHARS) -> str:
    """Shorten `text` for `Score.details`, marking the cut."""
    return text if len(text) <= limit else text[: limit - 3] + "..."
