"""Asynchronous rollout through the whole loop (rl.async_rollout): rollout.max_staleness=2 with
partial rollouts and a TIS correction, a checkpoint taken with groups in flight, and a resumed
run that samples those again — no prompt trained twice, none lost, the bound kept every step."""

import math

import pytest

from rl import checkpoint
from rl.config import from_data
from rl.data import DataOrder, load_examples
from rl.driver import Run
from rl.metrics import read_history
from rl.stop import StopSignals

from .conftest import tiny_recipe

pytestmark = pytest.mark.integration


class StopAfterStep(StopSignals):
    """A stop at the boundary of `step`, as a SIGTERM during that step would make it."""

    def __init__(self, step: int):
        super().__init__()
        self.step, self.run = step, None

    @property
    def requested(self) -> bool:
        return self.run is not None and self.run.step >= self.step


def test_async_partial_rollout_then_resume_with_groups_in_flight(tmp_path, shared_sft):
    data = tiny_recipe(tmp_path, name="async", rollout={"max_staleness": 2, "partial": True},
                       algorithm={"correction": "tis"}, sft={"steps": 60}, trainer={"num_ranks": 1},
                       schedule={"steps": 3, "eval_every": 0, "save_every": 0})
    data = shared_sft(data)  # the session's SFT export (arith-micro, 60 steps): no SFT start-up here
    cfg = from_data(data)
    P, k = cfg.rollout.prompts_per_step, cfg.rollout.max_staleness
    stop = StopAfterStep(1)
    run = stop.run = Run(cfg, stop=stop)
    try:
        run.train()  # stops after step 1 and saves, groups in flight
    finally:
        stop.restore()
    saved = checkpoint.load_state(checkpoint.latest(cfg.run_dir))
    # Step 1 filled the pool to P × (k + 1) groups and took P: the rest were in flight.
    assert saved["step"] == 1 and saved["cursor"] == P * (k + 1) and len(saved["inflight"]) == P * k
    Run(from_data(data), resume=True).train()

    steps = [h for h in read_history(cfg.run_dir) if "reward/mean" in h]
    assert [h["step"] for h in steps] == [1, 2, 3]
    for h in steps:
        assert h["offpolicy/lag_max"] <= k  # the bound
        assert math.isfinite(h["train/loss"]) and math.isfinite(h["train/correction_weight_mean"])
    # The resumed run samples the checkpoint's in-flight prompts again first, counted.
    assert steps[1]["data/inflight_resampled"] == P * k and steps[0]["data/inflight_resampled"] == 0
    # Step 3 trained groups launched at step 2 under version 1 (the updates of steps 2 and 3
    # came while they were sampled, or before they finished), by the trainer's version 2.
    assert steps[2]["offpolicy/lag_mean"] > 0 and "offpolicy/k3" in steps[2]
    # Every prompt launched is trained once, dropped (counted) or still in flight: none twice.
    trained = [int(i) for h in steps for i in h["data/prompts"].split()]
    assert len(trained) == len(set(trained)) == 3 * P
    final = checkpoint.load_state(checkpoint.latest(cfg.run_dir))
    order = DataOrder(len(load_examples(cfg.data.train)), cfg.seed, cfg.data.shuffle)
    assert sorted(trained + final["inflight"]) == sorted(order.indices(0, final["cursor"]))
    assert sum(h["offpolicy/dropped_groups"] for h in steps) == 0  # nothing aged past the bound here
