"""The MKL code path (rl/blas.py) reaches the processes Lockstep starts outside Ray: the test
session, the `lockstep` driver, and the reward workers it forks. Ray actors: tests/integration/
test_blas_code_path.py."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from rewards import Reason, RewardPool, Score
from rl.blas import MKL_CBWR, mkl_code_path

REPO = Path(__file__).resolve().parents[2]


def test_the_test_session_runs_mkl_in_its_reproducible_mode():
    # None: torch without MKL (nothing to pin). A user's named branch may read back as AUTO: MKL
    # honours a branch only on Intel CPUs that support it.
    path = mkl_code_path()
    assert path != "off"
    if os.environ["MKL_CBWR"] == MKL_CBWR and path is not None:
        assert path == MKL_CBWR


def _driver(env: dict) -> subprocess.CompletedProcess:
    code = "import os, rl.cli, rl.blas; print(os.environ['MKL_CBWR'], rl.blas.mkl_code_path())"
    env = {**env, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)


def test_the_driver_pins_the_code_path_before_torch_loads():
    env = {k: v for k, v in os.environ.items() if k != "MKL_CBWR"}
    out = _driver(env)
    value, path = out.stdout.split()
    assert value == MKL_CBWR
    assert path in (MKL_CBWR, "None")
    assert "MKL_CBWR" not in out.stderr


def test_the_driver_keeps_the_users_choice_and_says_so():
    out = _driver({**os.environ, "MKL_CBWR": "COMPATIBLE"})
    value, path = out.stdout.split()
    assert value == "COMPATIBLE" and path in ("COMPATIBLE", "None")
    assert out.stderr.count("MKL_CBWR=COMPATIBLE from the environment is kept") == 1


class EnvReward:
    """Scores every item 1.0 and reports the worker's MKL_CBWR (picklable by module name)."""

    def score(self, completion: str, reference: str) -> Score:
        return Score(1.0, Reason.CORRECT, {"mkl_cbwr": os.environ.get("MKL_CBWR", "unset")})


def test_reward_workers_inherit_the_code_path():
    with RewardPool(EnvReward(), num_workers=1, timeout_s=30) as pool:
        (score,) = pool.submit([("x", "y")]).result()
    assert score.reason == Reason.CORRECT, score
    assert score.details["mkl_cbwr"] == os.environ["MKL_CBWR"]
