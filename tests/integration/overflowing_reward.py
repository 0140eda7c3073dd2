"""A reward function with a real bug users write: an unbounded bonus on correct answers that
overflows to +inf (here outright). Loaded through `reward.function` like any user reward, it
makes every group with a correct answer's advantages NaN (inf − mean(inf, …)), and so the loss
and the gradients: the path a non-finite update takes in a real run."""

from rewards import MathReward, Score


class OverflowingReward:
    def __init__(self):
        self.accuracy = MathReward()

    def score(self, completion: str, reference: str) -> Score:
        s = self.accuracy.score(completion, reference)
        return Score(float("inf") if s.value > 0 else s.value, s.reason, s.details)


def factory() -> OverflowingReward:
    return OverflowingReward()
