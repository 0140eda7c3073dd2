"""Ray actors (trainer ranks, rollout engines) run with the MKL code path of rl/blas.py: it comes
from the job's runtime_env (rl.placement.ACTOR_ENV) and survives an actor's own env_vars."""

from __future__ import annotations

import os

import pytest

from rl.blas import MKL_CBWR

pytestmark = pytest.mark.integration


def test_actors_started_with_the_project_env_run_the_code_path(monkeypatch):
    import ray

    from rl.placement import ACTOR_ENV, connect

    assert ACTOR_ENV["MKL_CBWR"] == os.environ["MKL_CBWR"]
    started = not ray.is_initialized()
    if started:
        # A local Ray instance inherits this process's environment: drop the variable while it
        # starts, so that only ACTOR_ENV can bring it to the actor (as on a `ray start` cluster).
        monkeypatch.delenv("MKL_CBWR")
        connect("local")
        monkeypatch.undo()

    @ray.remote(num_cpus=0)
    class Probe:
        def code_path(self) -> tuple[str | None, str | None]:
            from rl.blas import mkl_code_path

            return os.environ.get("MKL_CBWR"), mkl_code_path()

    try:
        # An actor's own env_vars (rl.placement gives each DS_ACCELERATOR) merge with the job's.
        probe = Probe.options(runtime_env={"env_vars": {"DS_ACCELERATOR": "cpu"}}).remote()
        value, path = ray.get(probe.code_path.remote(), timeout=300)
    finally:
        if started:
            ray.shutdown()
    assert value == os.environ["MKL_CBWR"]
    assert path != "off"
    if value == MKL_CBWR and path is not None:
        assert path == MKL_CBWR
