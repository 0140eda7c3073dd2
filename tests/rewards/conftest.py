"""Fixtures for the rewards tests: import paths and shared 2-worker math pools."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
# Worker processes unpickle test reward functions by module name: make `rewards_testlib` and the
# `rewards` package importable whatever pytest's import mode is (sys.path reaches the workers).
for path in (str(HERE), str(REPO)):
    if path not in sys.path:
        sys.path.insert(0, path)


@pytest.fixture(scope="session")
def math_pool():
    """2 MathReward workers with the default 5 s timeout (adversarial tests)."""
    from rewards import MathReward, RewardPool

    with RewardPool(MathReward(), num_workers=2, timeout_s=5.0) as pool:
        yield pool


@pytest.fixture(scope="session")
def sweep_pool():
    """2 MathReward workers for the data-set sweeps. The timeout is generous because these tests
    check verdicts, not time limits, and CI machines are shared (at a load of 8 on 2 cores a
    legitimate 1 s sympy check takes several seconds of wall time)."""
    from rewards import MathReward, RewardPool

    with RewardPool(MathReward(), num_workers=2, timeout_s=30.0) as pool:
        yield pool
