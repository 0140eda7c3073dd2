"""RewardPool: order, hard timeouts, crash isolation, stragglers, shutdown, GC, fuzzing."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rewards_testlib import ExitsWhenLoaded, ScriptedReward, UnloadableReward

from rewards import MathReward, PoolClosed, Reason, RewardPool, Score, WorkerStartError


def _alive(pid: int) -> bool:
    """True if `pid` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def _wait_gone(pids: list[int], timeout: float = 10.0) -> list[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        left = [p for p in pids if _alive(p)]
        if not left:
            return []
        time.sleep(0.05)
    return [p for p in pids if _alive(p)]


def _wait_pids(pool: RewardPool, n: int, timeout: float = 30.0) -> list[int]:
    deadline = time.monotonic() + timeout
    while len(pool.worker_pids()) < n and time.monotonic() < deadline:
        time.sleep(0.02)
    return pool.worker_pids()


@pytest.fixture(scope="module")
def pool():
    with RewardPool(ScriptedReward(), num_workers=2, timeout_s=1.5) as p:
        yield p


def test_scores_come_back_in_input_order(pool: RewardPool) -> None:
    items = [(f"value:{i}", f"ref{i}") for i in range(300)]
    scores = pool.score(items)
    assert [s.value for s in scores] == list(range(300))
    assert [s.details["ref"] for s in scores] == [f"ref{i}" for i in range(300)]


def test_submit_does_not_block(pool: RewardPool) -> None:
    start = time.monotonic()
    handle = pool.submit([("sleep:0.3", "a")] * 4)
    assert time.monotonic() - start < 0.2
    assert not handle.done()
    with pytest.raises(TimeoutError):
        handle.result(timeout=0.01)
    assert [s.value for s in handle.result(timeout=30)] == [1.0] * 4
    assert handle.done()


def test_two_batches_interleave_and_stay_separate(pool: RewardPool) -> None:
    first = pool.submit([(f"value:{i}", "x") for i in range(50)])
    second = pool.submit([(f"value:{-i}", "y") for i in range(50)])
    assert [s.value for s in second.result(30)] == [-i for i in range(50)]
    assert [s.value for s in first.result(30)] == list(range(50))


def test_done_callback(pool: RewardPool) -> None:
    seen = []
    handle = pool.submit([("value:1", "r")])
    handle.add_done_callback(lambda h: seen.append(len(h)))
    handle.result(30)
    deadline = time.monotonic() + 5
    while not seen and time.monotonic() < deadline:
        time.sleep(0.01)
    assert seen == [1]
    handle.add_done_callback(lambda h: seen.append(2))  # already done: runs at once
    assert seen == [1, 2]


def test_empty_batch(pool: RewardPool) -> None:
    assert pool.score([]) == []


def test_hang_is_killed_at_the_timeout_and_the_pool_goes_on(pool: RewardPool) -> None:
    before = pool.stats()
    start = time.monotonic()
    scores = pool.score([("value:1", "a"), ("hang", "b"), ("value:3", "c")])
    elapsed = time.monotonic() - start
    assert [s.reason for s in scores] == [Reason.CORRECT, Reason.TIMEOUT, Reason.CORRECT]
    assert scores[1] == Score(0.0, Reason.TIMEOUT, scores[1].details) and scores[1].details["timeout"] == "hard"
    assert [s.graded for s in scores] == [True, False, True]  # the driver masks the timeout
    assert 1.5 <= elapsed < 1.5 + 1.0
    after = pool.stats()
    assert after["timeout"] - before["timeout"] == 1
    assert after["respawns"] - before["respawns"] >= 1
    assert [s.value for s in pool.score([("value:7", "z")] * 4)] == [7.0] * 4


def test_soft_timeout_interrupts_python_loops(pool: RewardPool) -> None:
    score = pool.score([("spin", "a")])[0]
    assert score.reason is Reason.TIMEOUT and score.details["timeout"] == "soft" and not score.graded


@pytest.mark.parametrize("cmd", ["exit", "segv"])
def test_dead_worker_is_a_crash_for_its_item_only(pool: RewardPool, cmd: str) -> None:
    before = pool.stats()
    items = [(f"value:{i}", "r") for i in range(20)]
    items[7] = (cmd, "r")
    scores = pool.score(items)
    assert scores[7].reason is Reason.CRASH and scores[7].value == 0.0 and not scores[7].graded
    assert [s.value for i, s in enumerate(scores) if i != 7] == [float(i) for i in range(20) if i != 7]
    after = pool.stats()
    assert after["crash"] - before["crash"] == 1
    assert after["respawns"] - before["respawns"] >= 1


def test_exceptions_and_bad_results_are_crashes_without_respawn(pool: RewardPool) -> None:
    before = pool.stats()
    raised, none = pool.score([("raise", "r"), ("none", "r")])
    assert raised.reason is Reason.CRASH and "RuntimeError: boom" in raised.details["error"]
    assert none.reason is Reason.CRASH and "NoneType" in none.details["error"]
    assert not raised.graded and not none.graded
    assert pool.stats()["respawns"] == before["respawns"]


def test_stats_count_every_reason(pool: RewardPool) -> None:
    before = pool.stats()
    pool.score([("value:1", "a"), ("other", "b"), ("raise", "c")])
    after = pool.stats()
    delta = {k: after[k] - before[k] for k in after}
    assert (delta["scored"], delta["correct"], delta["wrong"], delta["crash"]) == (3, 1, 1, 1)
    assert set(after) >= {"scored", "correct", "wrong", "no_answer", "parse_error", "timeout", "crash", "respawns"}


def test_items_go_to_the_worker_of_their_reference() -> None:
    """A reference hashes to one worker slot, so a prompt's G completions share that worker's
    caches; another worker takes them only when its own queue is empty (the end of a batch)."""
    with RewardPool(ScriptedReward(), num_workers=2, timeout_s=30) as p:
        refs = {}  # one reference per slot (str hashes differ between processes: pick them here)
        for i in range(100):
            refs.setdefault(hash(f"ref{i}") % 2, f"ref{i}")
        items = [("pid:0.004", refs[i % 2]) for i in range(400)]  # sleeps: equal pace under any load
        deadline = time.monotonic() + 30  # both workers up, or the first one steals everything
        while len({s.value for s in p.score(items[:40])}) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        pids = [int(s.value) for s in p.score(items)]
    tops = set()
    for ref in refs.values():
        mine = [pid for (_, r), pid in zip(items, pids, strict=True) if r == ref]
        top = max(set(mine), key=mine.count)
        assert mine.count(top) >= 0.8 * len(mine), (ref, {pid: mine.count(pid) for pid in set(mine)})
        tops.add(top)
    assert len(tops) == 2  # the two references went to different workers


def test_memory_bomb_is_contained() -> None:
    with RewardPool(ScriptedReward(), num_workers=1, timeout_s=10, memory_limit_mb=256) as p:
        score = p.score([("alloc", "r"), ("value:2", "r")])
    assert score[0].reason is Reason.CRASH and "MemoryError" in score[0].details["error"]
    assert score[1].value == 2.0


def test_stragglers_do_not_hold_up_the_batch() -> None:
    """Four hangs on ONE worker: serially they would take 4 x timeout; set aside, ~1 x timeout."""
    timeout = 2.0
    with RewardPool(ScriptedReward(), num_workers=1, timeout_s=timeout, straggler_s=0.2, max_stragglers=4) as p:
        p.score([("value:0", "warm-up")])
        items = [("hang", "r") if i % 10 == 0 else (f"value:{i}", "r") for i in range(40)]
        start = time.monotonic()
        scores = p.score(items)
        elapsed = time.monotonic() - start
        assert [s.reason for i, s in enumerate(scores) if i % 10 == 0] == [Reason.TIMEOUT] * 4
        assert [s.value for i, s in enumerate(scores) if i % 10] == [float(i) for i in range(40) if i % 10]
        assert elapsed < timeout + 1.5
        assert p.stats()["stragglers"] >= 4


def test_close_kills_workers_and_fails_pending_batches() -> None:
    p = RewardPool(ScriptedReward(), num_workers=2, timeout_s=30)
    pids = _wait_pids(p, 2)
    handle = p.submit([("sleep:20", "r")] * 3)
    time.sleep(0.3)
    start = time.monotonic()
    p.close()
    assert time.monotonic() - start < 5
    with pytest.raises(PoolClosed):
        handle.result(timeout=5)
    with pytest.raises(PoolClosed):
        p.submit([("value:1", "r")])
    assert _wait_gone(pids) == []
    p.close()  # idempotent


def test_garbage_collected_pool_leaves_no_processes() -> None:
    p = RewardPool(ScriptedReward(), num_workers=2, timeout_s=5)
    assert p.score([("value:1", "r")])[0].value == 1.0
    pids = _wait_pids(p, 2)
    assert len(pids) == 2
    del p
    gc.collect()
    assert _wait_gone(pids) == []


def test_a_pending_batch_keeps_its_pool_alive() -> None:
    handle = RewardPool(ScriptedReward(), num_workers=1, timeout_s=5).submit([("sleep:0.2", "r"), ("value:3", "r")])
    gc.collect()
    assert [s.value for s in handle.result(timeout=30)] == [1.0, 3.0]


def test_a_reward_function_that_cannot_load_breaks_the_pool_loudly() -> None:
    p = RewardPool(UnloadableReward(), num_workers=1, timeout_s=5)
    with pytest.raises(PoolClosed, match="cannot be loaded"):
        p.score([("x", "y")], timeout=60)
    p.close()


def test_workers_that_die_on_start_break_the_pool_with_the_cause() -> None:
    p = RewardPool(ExitsWhenLoaded(), num_workers=2, timeout_s=5)  # max_start_failures=3
    handle = p.submit([("x", "y")] * 3)
    start = time.monotonic()
    with pytest.raises(PoolClosed, match="3 worker processes in a row died before they were ready") as info:
        handle.result(timeout=60)  # a pending batch gets the error instead of hanging
    assert time.monotonic() - start < 30
    message = str(info.value)
    assert isinstance(info.value.__cause__, WorkerStartError)
    assert "exit code 3" in message and "loading the reward function" in message
    assert "__main__" not in message  # the worker got past multiprocessing's start-up: no guard hint
    assert p.stats()["respawns"] <= 2  # 2 + at most 2 replacements, not an endless loop
    with pytest.raises(PoolClosed, match="exit code 3"):
        p.submit([("x", "y")])
    p.close()


def test_max_start_failures_is_a_setting() -> None:
    p = RewardPool(ExitsWhenLoaded(), num_workers=1, timeout_s=5, max_start_failures=1)
    with pytest.raises(PoolClosed, match="1 worker processes in a row"):
        p.score([("x", "y")], timeout=60)
    assert p.stats()["respawns"] == 0
    p.close()


_UNGUARDED_SCRIPT = """
    from rewards import Reason, RewardPool, Score

    class Constant:
        def score(self, completion, reference):
            return Score(1.0, Reason.CORRECT, {})

    # no `if __name__ == "__main__":` guard: every worker re-runs this module on start-up
    with RewardPool(Constant(), num_workers=1, timeout_s=5) as pool:
        print(pool.score([("a", "b")], timeout=60))
"""


def test_a_driver_script_without_a_main_guard_fails_fast_and_says_why(tmp_path: Path) -> None:
    script = tmp_path / "train.py"
    script.write_text(textwrap.dedent(_UNGUARDED_SCRIPT))
    repo = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(repo), os.environ.get("PYTHONPATH", "")])}
    start = time.monotonic()
    done = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=120)
    elapsed = time.monotonic() - start
    assert done.returncode != 0, done.stdout
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("rewards.batch.PoolClosed: RewardPool: 3 worker processes in a row"), done.stderr[-3000:]
    assert "exit code 1" in last and str(script) in last
    assert 'has no `if __name__ == "__main__":` guard' in last
    assert elapsed < 60  # a few seconds: the forkserver's start-up and three short-lived workers


def test_bad_arguments_fail_at_the_boundary() -> None:
    with pytest.raises(TypeError, match="picklable"):
        RewardPool(type("Local", (), {"score": lambda self, c, r: None})(), num_workers=1)
    with pytest.raises(TypeError, match="score"):
        RewardPool(object(), num_workers=1)
    with pytest.raises(ValueError, match="num_workers"):
        RewardPool(MathReward(), num_workers=0)
    with pytest.raises(ValueError, match="fork"):
        RewardPool(MathReward(), num_workers=1, start_method="fork")
    with pytest.raises(ValueError, match="max_start_failures"):
        RewardPool(MathReward(), num_workers=1, max_start_failures=0)


def test_non_string_items_are_rejected(pool: RewardPool) -> None:
    with pytest.raises(TypeError, match="item 1"):
        pool.submit([("value:1", "r"), (None, "r")])  # type: ignore[list-item]


def test_spawn_start_method_works() -> None:
    with RewardPool(MathReward(), num_workers=1, timeout_s=30, start_method="spawn") as p:
        assert [s.value for s in p.score([("\\boxed{0.5}", "\\frac12"), ("\\boxed{2}", "3")])] == [1.0, 0.0]


def test_default_worker_count_follows_the_cpus() -> None:
    with RewardPool(ScriptedReward()) as p:
        assert p.num_workers == len(os.sched_getaffinity(0))


# --- property-based: any mix of behaviours, nothing lost or reordered ----------------------------
COMMANDS = st.one_of(
    st.integers(-1000, 1000).map(lambda i: f"value:{i}"),
    st.sampled_from(["exit", "raise", "other", "none", "sleep:0.01"]),
)


@settings(max_examples=12, deadline=None)
@given(st.lists(COMMANDS, max_size=40))
def test_fuzz_pool_results_match_a_serial_oracle(pool: RewardPool, commands: list[str]) -> None:
    items = [(c, f"ref{i}") for i, c in enumerate(commands)]
    scores = pool.score(items, timeout=120)
    assert len(scores) == len(items)
    for (cmd, ref), score in zip(items, scores, strict=True):
        if cmd.startswith("value:"):
            assert (score.value, score.reason, score.details["ref"]) == (float(cmd[6:]), Reason.CORRECT, ref)
        elif cmd.startswith("sleep"):
            assert (score.value, score.reason) == (1.0, Reason.CORRECT)
        elif cmd == "other":
            assert score.reason is Reason.WRONG
        else:
            assert score.reason is Reason.CRASH


_DRIVER_GONE_SCRIPT = """
import os, sys, time
from rewards import MathReward, RewardPool

if __name__ == "__main__":
    pool = RewardPool(MathReward(), num_workers=3, timeout_s=5.0)
    pool.submit([("The answer is 4", "4")] * 200)
    time.sleep(float(sys.argv[1]))  # the workers are starting
    print(" ".join(str(p) for p in pool.worker_pids()), flush=True)
    os._exit(0)  # the driver stops without closing the pool (killed, or stopped by a signal)
"""


def test_workers_end_quietly_when_the_driver_is_gone(tmp_path: Path) -> None:
    """Workers whose driver vanished while they start up or score exit without a traceback
    (a BrokenPipeError on their first message used to print one per worker), and nothing is
    left: their stderr closes once the last of them and the forkserver are gone."""
    script = tmp_path / "driver.py"
    script.write_text(textwrap.dedent(_DRIVER_GONE_SCRIPT))
    repo = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(repo), os.environ.get("PYTHONPATH", "")])}
    # communicate() returns when every process holding the pipes (workers, forkserver) has exited
    done = subprocess.run([sys.executable, str(script), "0.2"], env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Traceback" not in done.stderr and "BrokenPipeError" not in done.stderr, done.stderr[-3000:]
    assert _wait_gone([int(p) for p in done.stdout.split()]) == []
