"""The recipe's `reward` section → a reward function and the process pool that runs it.

Extension point: `reward.function` is "math" (math-verify accuracy, optionally plus a format
reward by weight) or a dotted path `package.module.factory` to a callable returning an object
with `score(completion: str, reference: str) -> rewards.Score` that never raises on model output
(it runs in the pool's worker processes, so it must be importable and picklable there).
"""

from __future__ import annotations

import importlib

from rewards import FormatReward, MathReward, RewardPool, WeightedReward
from rl.config import ConfigError, RewardConfig


def build_reward_fn(cfg: RewardConfig):
    if cfg.function == "math":
        accuracy = MathReward(fallback_last_number=cfg.fallback_last_number)
        if cfg.format_weight == 0:
            return accuracy
        return WeightedReward([(accuracy, 1.0), (FormatReward(), cfg.format_weight)])
    module_name, _, attr = cfg.function.rpartition(".")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError, ValueError) as e:
        raise ConfigError(f"reward.function {cfg.function!r}: cannot import ({e}); use 'math' or a dotted path to a factory") from None
    fn = factory()
    if not callable(getattr(fn, "score", None)):
        raise ConfigError(f"reward.function {cfg.function!r}: the factory returned {type(fn).__name__}, which has no score(completion, reference) method")
    return fn


def build_reward_pool(cfg: RewardConfig) -> RewardPool:
    return RewardPool(build_reward_fn(cfg), num_workers=cfg.num_workers, timeout_s=cfg.timeout_s)
