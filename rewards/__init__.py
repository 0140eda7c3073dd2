"""Verifiable rewards for RL post-training: verifiers and the process pool that runs them.

    from rewards import MathReward, FormatReward, WeightedReward, RewardPool
    fn = WeightedReward([(MathReward(), 1.0), (FormatReward(), 0.1)])
    with RewardPool(fn, num_workers=8, timeout_s=5.0) as pool:
        handle = pool.submit([(completion, reference), ...])   # returns at once
        scores = handle.result()                              # list[Score], input order

Standalone: imports nothing of the project (see DESIGN.md §2, §7). math-verify is imported
lazily, inside workers (or on the first `MathReward.score` call in this process).
"""

from rewards import extract
from rewards.accuracy import MathReward, normalize_answer
from rewards.format import FormatReward
from rewards.pool import BatchHandle, PoolClosed, RewardPool, WorkerStartError
from rewards.score import Reason, Score
from rewards.weighted import RewardFn, WeightedReward

__all__ = [
    "BatchHandle",
    "FormatReward",
    "MathReward",
    "PoolClosed",
    "Reason",
    "RewardFn",
    "RewardPool",
    "Score",
    "WeightedReward",
    "WorkerStartError",
    "extract",
    "normalize_answer",
]
