"""Weighted sum of reward functions, e.g. accuracy + 0.1 * format.

The combined score's reason is the first component's (the primary reward, normally accuracy),
so pool statistics count accuracy verdicts; every component's value and reason is in `details`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from rewards.score import Reason, Score, clip


class RewardFn(Protocol):
    """The reward-function contract: picklable, and `score` never raises on model output."""

    def score(self, completion: str, reference: str) -> Score: ...


class WeightedReward:
    """value = sum(weight_i * component_i.value); reason = first component's reason."""

    def __init__(self, components: Sequence[tuple[RewardFn, float]]):
        if not components:
            raise ValueError("WeightedReward needs at least one (reward_fn, weight) pair")
        for fn, weight in components:
            if not callable(getattr(fn, "score", None)):
                raise TypeError(f"WeightedReward: {fn!r} has no .score(completion, reference)")
            if not isinstance(weight, (int, float)) or weight != weight:
                raise TypeError(f"WeightedReward: weight {weight!r} is not a number")
        self.components = [(fn, float(w)) for fn, w in components]

    def __repr__(self) -> str:
        return f"WeightedReward({self.components!r})"

    def score(self, completion: str, reference: str) -> Score:
        parts: list[Score] = []
        for fn, _ in self.components:
            try:
                parts.append(fn.score(completion, reference))
            except Exception as exc:  # a component that breaks the contract still scores 0
                parts.append(Score(0.0, Reason.CRASH, {"error": clip(f"{type(exc).__name__}: {exc}")}))
        value = sum(w * s.value for (_, w), s in zip(self.components, parts, strict=True))
        details: dict[str, Any] = dict(parts[0].details)
        details["components"] = [
            {"name": type(fn).__name__, "weight": w, "value": s.value, "reason": s.reason.value}
            for (fn, w), s in zip(self.components, parts, strict=True)
        ]
        return Score(value, parts[0].reason, details)
