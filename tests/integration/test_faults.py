"""Runs that survive faults (rl.faults): a rollout engine or a trainer rank SIGKILLed mid-run,
the restart budget spent, updates that are NaN. Real actors, killed by pid; the runs share one
SFT warm start (conftest.shared_sft, copied into each run directory) to stay short."""

import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import psutil
import pytest
import ray
import yaml

from rl import checkpoint, exit_codes
from rl.config import from_data
from rl.data import DataOrder, load_examples
from rl.driver import Run
from rl.faults import NONFINITE_DUMP, RunStopped
from rl.groups import ActorFailed, gather, trainer_setup
from rl.metrics import read_history
from rl.stop import StopSignals

from trainer.batch import TrainBatch, TrainSample
from trainer.worker import TrainerRank, free_port

from .conftest import tiny_recipe

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A folder whose runs share the demo model cache (each run starts from the session's shared
    SFT export: conftest.shared_sft)."""
    return tmp_path_factory.mktemp("faults")


def recipe(tmp: Path, name: str, **sections) -> dict:
    data = tiny_recipe(tmp, name=name, ray={"address": "local"}, sft={"steps": 60}, **sections)
    data["model"]["cache_dir"] = os.environ.get("LOCKSTEP_TEST_CACHE", str(tmp / "cache"))
    return data


def pid_of(actor) -> int:
    return ray.get(actor.__ray_call__.remote(lambda self: os.getpid()), timeout=60)


def kill_when(ready, pid: int) -> threading.Thread:
    """SIGKILLs `pid` once `ready()` holds (polled), from a thread, while the run goes on."""
    def watch():
        deadline = time.time() + 300
        while not ready() and time.time() < deadline:
            time.sleep(0.05)
        os.kill(pid, signal.SIGKILL)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def steps_logged(run_dir: Path) -> list[dict]:
    return [h for h in read_history(run_dir) if "data/prompt_hash" in h]  # RL steps (eval-only: step 0)


def assert_data_order(cfg, steps: list[dict]) -> None:
    """Each step trained the prompts an uninterrupted run trains at that step."""
    order = DataOrder(len(load_examples(cfg.data.train)), cfg.seed, cfg.data.shuffle)
    per_step = cfg.rollout.prompts_per_step
    for h in steps:
        expected = order.indices((h["step"] - 1) * per_step, per_step)
        assert h["data/prompt_hash"] == f"{zlib.crc32(json.dumps(expected).encode()):08x}", h["step"]
        assert h["data/cursor"] == h["step"] * per_step


def test_engine_then_trainer_rank_killed_mid_run(base, shared_sft):
    """One run, two faults (each would cost a run of its own): the rollout engine killed after
    step 1 is restarted in place; trainer rank 1 killed once step 2's checkpoint is written
    restarts the trainer group from that checkpoint. Steps 1-4 each logged once, in order."""
    data = shared_sft(recipe(base, "kills", schedule={"steps": 4, "eval_every": 0, "save_every": 2}))
    cfg = from_data(data)
    run = Run(cfg)
    engine, rank1 = pid_of(run.rollout.actors[0]), pid_of(run.trainers.actors[1])
    kill_when(lambda: len(steps_logged(cfg.run_dir)) >= 1, engine)
    saved = lambda: (p := checkpoint.latest(cfg.run_dir)) is not None and p.name == "step_000002"  # noqa: E731
    kill_when(saved, rank1)
    summary = run.train()
    steps = steps_logged(cfg.run_dir)
    assert [h["step"] for h in steps] == [1, 2, 3, 4] and summary["steps"] == 4  # redone steps superseded
    assert steps[0]["restarts/rollout"] == 0 and steps[0]["restarts/trainer"] == 0
    assert steps[-1]["restarts/rollout"] == 1 and steps[-1]["restarts/trainer"] == 1
    assert steps[-1]["restarts/steps_redone"] >= 1
    assert_data_order(cfg, steps)
    assert checkpoint.load_state(checkpoint.latest(cfg.run_dir))["step"] == 4
    for h in steps:  # the fresh engine, and the restarted trainers, run the same weights (the probe)
        assert h["sync/probe_max_abs_diff"] <= 1e-3
    for pid in (engine, rank1):
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


def test_a_signal_during_an_engine_restart_stops_at_a_step_boundary(base, shared_sft):
    """SIGTERM while the killed engine is being replaced: the restart finishes, then the run
    saves a checkpoint at the last step boundary and stops there (no further step)."""
    data = shared_sft(recipe(base, "restart-stop", schedule={"steps": 6, "eval_every": 0, "save_every": 0}))
    cfg = from_data(data)
    stop = StopSignals()
    try:
        run = Run(cfg, stop=stop)
        kill_when(lambda: len(steps_logged(cfg.run_dir)) >= 1, pid_of(run.rollout.actors[0]))
        restarting = lambda: run.restarts.counts["rollout"] == 1  # noqa: E731  (set just before the new engines start)
        signal_when = threading.Thread(target=lambda: (wait_until(restarting), os.kill(os.getpid(), signal.SIGTERM)),
                                       daemon=True)
        signal_when.start()
        summary = run.train()
    finally:
        stop.restore()
    steps = steps_logged(cfg.run_dir)
    assert summary["stopped_by"] == "SIGTERM" and summary["steps"] == run.step < 6
    assert [h["step"] for h in steps] == list(range(1, run.step + 1))
    assert summary["restarts"]["restarts/rollout"] == 1  # (the stop's own checkpoint adds no step record)
    assert checkpoint.load_state(checkpoint.latest(cfg.run_dir))["step"] == run.step  # at the step boundary
    assert run.stopped_line().startswith(f"lockstep: stopped by SIGTERM after step {run.step}; checkpoint ")
    assert_data_order(cfg, steps)


def wait_until(ready, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while not ready() and time.time() < deadline:
        time.sleep(0.05)


def test_restarts_exhausted_stop_with_one_line(base, shared_sft, tmp_path):
    data = shared_sft(recipe(base, "exhausted", schedule={"steps": 3, "eval_every": 0, "save_every": 0}))
    recipe_file = tmp_path / "r.yaml"
    recipe_file.write_text(yaml.safe_dump(data))
    cmd = [sys.executable, "-m", "rl.cli", "run", str(recipe_file), "faults.max_restarts=0", "ray.address=local"]
    err_file = tmp_path / "stderr.txt"
    with err_file.open("w") as err_sink:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err_sink, text=True)
    try:
        for line in proc.stdout:  # the first step done: kill this run's engine (its own Ray's descendant)
            if line.startswith("step    1/"):
                break
        engines = [p for p in psutil.Process(proc.pid).children(recursive=True)
                   if "RolloutWorker" in " ".join(p.cmdline())]
        assert len(engines) == 1, engines
        engines[0].kill()
        proc.communicate(timeout=300)
    finally:
        proc.kill()
    err = err_file.read_text()
    assert proc.returncode == exit_codes.ACTOR_FAILED, err[-3000:]
    last = err.strip().splitlines()[-1]
    assert last == (f"lockstep: stopped: rollout engine 0 died (0 restarts used, faults.max_restarts=0); resume "
                    f"with: lockstep run {recipe_file} faults.max_restarts=0 ray.address=local"), err[-3000:]
    assert "Traceback" not in err and "ActorDiedError" not in err, err[-3000:]


def test_nonfinite_updates_are_skipped_then_halt_with_a_dump(base, shared_sft):
    data = shared_sft(recipe(base, "nonfinite", reward={"function": "tests.integration.overflowing_reward.factory",
                                                             "num_workers": 1},
                                 schedule={"steps": 6, "eval_every": 0, "save_every": 0},
                                 faults={"max_nonfinite_steps": 2}))
    cfg = from_data(data)
    run = Run(cfg)
    probe = run.sync.probe_ids
    before = run.trainers.probe_logprobs(probe).result()
    try:
        with pytest.raises(RunStopped) as stopped:
            run.loop()
        after = run.trainers.probe_logprobs(probe).result()
    finally:
        run.shutdown()
    assert stopped.value.exit_code == exit_codes.NONFINITE and "2 updates in a row had a non-finite" in str(stopped.value)
    assert after == before  # no update was applied: the weights are bit for bit the same
    steps = steps_logged(cfg.run_dir)
    bad = [h for h in steps if h.get("train/nonfinite_skipped")]
    assert len(bad) == 2 and [h["train/nonfinite_total"] for h in bad] == [1, 2]
    assert all("sync/version" not in h for h in bad)  # the engines were not re-synced for nothing
    synced = [h["sync/version"] for h in steps if "sync/version" in h]  # versions count applied updates only
    assert all(b - a in (0, 1) for a, b in zip([0, *synced], synced))
    assert run.weights_version == (synced[-1] if synced else 0)
    dump = json.loads((cfg.run_dir / NONFINITE_DUMP).read_text())
    assert dump["halted_at_step"] == bad[-1]["step"] and [u["step"] for u in dump["updates"]] == [h["step"] for h in bad]
    order = DataOrder(len(load_examples(cfg.data.train)), cfg.seed, cfg.data.shuffle)
    for u in dump["updates"]:
        assert u["prompt_indices"] == order.indices((u["step"] - 1) * 4, 4)
        assert u["loss"] == "nan" or u["grad_norm"] in ("nan", "inf")


def test_a_dead_or_stuck_actor_is_named(ray_local):
    """The bounded wait under every group call: a killed actor fails at once, a hung one after
    the timeout, each by name."""
    ray.init(address="local", ignore_reinit_error=True)

    @ray.remote
    class Sleeper:
        def nap(self, s: float) -> float:
            time.sleep(s)
            return s

    a, b = Sleeper.remote(), Sleeper.remote()
    assert gather([a.nap.remote(0), b.nap.remote(0)], ["actor a", "actor b"], "rollout", 30) == [0, 0]
    ray.kill(b)
    start = time.time()
    with pytest.raises(ActorFailed, match="^actor b died$") as died:
        gather([a.nap.remote(20), b.nap.remote(0)], ["actor a", "actor b"], "rollout", 60)
    assert time.time() - start < 15 and died.value.group == "rollout"
    with pytest.raises(ActorFailed, match="^actor a did not answer within faults.call_timeout_s=1 s"):
        gather([a.nap.remote(30)], ["actor a"], "trainer", 1)
    ray.kill(a)


def test_fp32_zero0_skips_a_nonfinite_update_itself(tmp_path, ray_local):
    """DeepSpeed leaves fp32 ZeRO-0 unguarded (NaN gradients reach the torch optimiser): the
    rank drops them itself, and the weights stay bit for bit; a finite update then applies."""
    from rl.model import resolve_model_path
    from rl.placement import connect

    cfg = from_data(recipe(tmp_path, "zero0", trainer={"num_ranks": 1, "zero_stage": 0, "micro_batch_size": 4}))
    connect(cfg.ray.address)
    setup = trainer_setup(cfg, resolve_model_path(cfg), 1e-2, 4, cfg.algorithm.loss())
    rank = ray.remote(TrainerRank).options(num_cpus=0).remote(0, 1, "127.0.0.1", free_port(), setup)
    probe = list(range(5, 25))

    def step(advantage: float):
        samples = [TrainSample([5, 6, 7], [8 + i, 9, 10], [-1.0, -1.0, -1.0], advantage=advantage) for i in range(4)]
        return ray.get(rank.train_step.remote(TrainBatch(samples, 12.0)), timeout=300).stats

    try:
        before = ray.get(rank.probe_logprobs.remote(probe), timeout=600)
        bad = step(math.nan)
        assert bad.skipped == 1.0 and math.isinf(bad.grad_norm)
        assert ray.get(rank.probe_logprobs.remote(probe), timeout=300) == before
        good = step(1.0)
        assert good.skipped == 0.0 and ray.get(rank.probe_logprobs.remote(probe), timeout=300) != before
    finally:
        ray.kill(rank)
