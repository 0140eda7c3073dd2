"""rl.faults: the restart budget and the non-finite update streak, without actors."""

import json
import math

import pytest

from rl import exit_codes
from rl.faults import NONFINITE_DUMP, NonFiniteGuard, Restarts, RunStopped
from rl.groups import ActorFailed


def test_restart_budget_counts_both_groups_then_stops_in_one_line():
    restarts = Restarts(max_restarts=2)
    restarts.allow(ActorFailed("rollout", "rollout engine 0", "died"))
    restarts.allow(ActorFailed("trainer", "trainer rank 1", "died"))
    assert restarts.metrics() == {"restarts/rollout": 1.0, "restarts/trainer": 1.0, "restarts/steps_redone": 0.0}
    with pytest.raises(RunStopped) as stopped:
        restarts.allow(ActorFailed("trainer", "trainer rank 0", "did not answer within faults.call_timeout_s=5 s"))
    assert str(stopped.value) == ("trainer rank 0 did not answer within faults.call_timeout_s=5 s "
                                  "(2 restarts used, faults.max_restarts=2)")
    assert stopped.value.exit_code == exit_codes.ACTOR_FAILED and "\n" not in str(stopped.value)
    assert restarts.metrics()["restarts/trainer"] == 1.0  # the refused one is not counted


def update(skipped: float, loss: float = 0.5, grad_norm: float = 1.0) -> dict[str, float]:
    return {"train/nonfinite_skipped": skipped, "train/minibatches": 1.0, "train/loss": loss,
            "train/grad_norm": grad_norm}


def test_nonfinite_streak_counts_resets_and_halts_with_a_dump(tmp_path):
    guard = NonFiniteGuard(max_in_a_row=2, run_dir=tmp_path)
    m = update(1.0, math.nan, math.inf)
    assert guard.check(3, m, [7, 8]) is False  # the only mini-batch skipped: weights unchanged
    assert m["train/nonfinite_in_a_row"] == 1 and m["train/nonfinite_total"] == 1
    guard.halt_if_due()
    m = update(0.0)
    assert guard.check(4, m, [9, 10]) is True and m["train/nonfinite_in_a_row"] == 0  # a good update ends it
    assert guard.check(5, {}, [11]) is True  # no update at all: neither grows nor ends the streak
    guard.check(6, update(1.0, math.inf, math.nan), [1, 2])
    assert guard.check(7, {}, [3]) is True
    guard.check(8, update(1.0, math.nan, math.inf), [4, 5])
    with pytest.raises(RunStopped) as stopped:
        guard.halt_if_due()
    assert stopped.value.exit_code == exit_codes.NONFINITE and "step 8: 2 updates in a row" in str(stopped.value)
    dump = json.loads((tmp_path / NONFINITE_DUMP).read_text())
    assert dump["halted_at_step"] == 8 and dump["in_a_row"] == 2
    assert dump["updates"] == [
        {"step": 6, "loss": "inf", "grad_norm": "nan", "minibatches_skipped": 1, "prompt_indices": [1, 2]},
        {"step": 8, "loss": "nan", "grad_norm": "inf", "minibatches_skipped": 1, "prompt_indices": [4, 5]}]


def test_some_minibatches_skipped_still_changed_the_weights(tmp_path):
    guard = NonFiniteGuard(max_in_a_row=3, run_dir=tmp_path)
    m = update(1.0) | {"train/minibatches": 2.0}
    assert guard.check(1, m, [0]) is True  # the other mini-batch stepped: the engines need the sync
