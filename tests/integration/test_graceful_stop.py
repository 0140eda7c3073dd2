"""Signals, a failed save and a damaged checkpoint on a real `lockstep run` (a subprocess with its
own Ray instance, vLLM engine, DeepSpeed rank and reward pool), in two runs of one recipe:

1. the run's checkpoints folder is read-only at first (a link to /sys/kernel, where not even
   root can create a folder): step 1's save fails with one error line and checkpoint/save_failures,
   training goes on; once the folder is writable a SIGTERM stops the run at a step boundary
   with a checkpoint: exit 143, one line, no traceback, no process left behind;
2. the newest checkpoint's optimizer shard is then truncated: the same command warns, naming the
   file, resumes from the previous checkpoint, and a Ctrl-C (SIGINT to the process group, as a
   terminal sends it) stops it again: exit 130. Across both runs every step trained the prompts
   an uninterrupted run would have, in order, and metrics.jsonl holds each step once.
"""

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
import zlib
from pathlib import Path

import pytest
import yaml

from rl import checkpoint
from rl.config import load_recipe
from rl.data import DataOrder, load_examples
from rl.metrics import read_history

from .conftest import tiny_recipe

pytestmark = pytest.mark.integration


class Run:
    """`lockstep run` in its own session (a process group, as a shell job has); its output
    lines collected as they come."""

    def __init__(self, recipe: Path, mark: str):
        env = {**os.environ, "LOCKSTEP_TEST_RUN": mark, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen([sys.executable, "-m", "rl.cli", "run", str(recipe)], env=env, text=True,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
        self.out: list[str] = []
        self.err: list[str] = []
        self.readers = [threading.Thread(target=self._read, args=(stream, lines), daemon=True)
                        for stream, lines in ((self.proc.stdout, self.out), (self.proc.stderr, self.err))]
        for reader in self.readers:
            reader.start()

    @staticmethod
    def _read(stream, lines: list[str]) -> None:
        for line in stream:
            lines.append(line)

    def wait_for(self, lines: list[str], pattern: str, after: int = 0, timeout: float = 900) -> int:
        """Index of the first line from `after` on matching `pattern`."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for i in range(after, len(lines)):
                if re.search(pattern, lines[i]):
                    return i
            if self.proc.poll() is not None and all(not r.is_alive() for r in self.readers):
                break
            time.sleep(0.1)
        raise AssertionError(f"no line matching {pattern!r}; stdout:\n{''.join(self.out)}\nstderr:\n"
                             f"{''.join(self.err)[-5000:]}")

    def finish(self, timeout: float = 120) -> tuple[int, str, str]:
        code = self.proc.wait(timeout)
        for reader in self.readers:
            reader.join(10)
        return code, "".join(self.out), "".join(self.err)


def processes_marked(mark: str) -> list[str]:
    """Command lines of live processes started by the run (they inherit its environment)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            if mark.encode() in (proc / "environ").read_bytes():
                found.append((proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()[:200])
        except OSError:
            continue  # gone meanwhile, or not ours to read
    return found


def assert_nothing_left(mark: str) -> None:
    deadline = time.monotonic() + 20  # Ray's own processes end just after the driver
    while (left := processes_marked(mark)) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not left, left


def checkpoint_step(run_dir: Path) -> int:
    return checkpoint.load_state(checkpoint.latest(run_dir))["step"]


def test_signals_failed_save_and_damaged_checkpoint(tmp_path, shared_sft):
    data = tiny_recipe(tmp_path, name="stop", sft={"steps": 60}, trainer={"num_ranks": 1},
                       ray={"address": "local"}, logging={"tensorboard": False},
                       schedule={"steps": 12, "eval_every": 0, "save_every": 1, "keep_last": 3,
                                 "max_save_failures": 3})
    recipe = tmp_path / "stop.yaml"
    recipe.write_text(yaml.safe_dump(shared_sft(data)))
    cfg = load_recipe(recipe)
    ckpts = checkpoint.checkpoints_dir(cfg.run_dir)
    ckpts.parent.mkdir(parents=True, exist_ok=True)  # holds the shared SFT export already
    ckpts.symlink_to("/sys/kernel")  # sysfs: creating a folder there fails, even as root

    # 1. a failed save, then SIGTERM
    mark = uuid.uuid4().hex
    run = Run(recipe, mark)
    failed = run.wait_for(run.err, r"lockstep: error: checkpoint at step 1 failed \(PermissionError: ")
    ckpts.unlink()
    ckpts.mkdir()
    saved = run.wait_for(run.out, r"saved checkpoint .*step_0000")
    run.proc.send_signal(signal.SIGTERM)
    code, out, err = run.finish()
    assert code == 143, err[-3000:]
    assert "training goes on to the next save (1 of schedule.max_save_failures=3 in a row)" in run.err[failed]
    for noise in ("Traceback", "KeyboardInterrupt", "BrokenPipeError", "SIGABRT"):
        assert noise not in err, err[-3000:]
    stopped = [line for line in err.splitlines() if line.startswith("lockstep: stopped")]
    history = [h for h in read_history(cfg.run_dir) if "reward/mean" in h]
    last = history[-1]["step"]
    assert stopped == [f"lockstep: stopped by SIGTERM after step {last}; checkpoint {ckpts / f'step_{last:06d}'}; "
                       "run the same command to resume"]
    assert checkpoint_step(cfg.run_dir) == last and last < 12  # at the step boundary, before the end
    failures = [h["checkpoint/save_failures"] for h in history]  # in a row, until the folder was writable
    assert failures[0] == 1.0 and 0.0 in failures
    assert failures[: failures.index(0.0)] == [float(n) for n in range(1, failures.index(0.0) + 1)]
    assert_nothing_left(mark)

    # 2. a damaged newest checkpoint, then Ctrl-C
    newest = checkpoint.latest(cfg.run_dir)
    shard = sorted((newest / "engine").rglob("*optim_states.pt"))[0]
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    mark = uuid.uuid4().hex
    run = Run(recipe, mark)
    warned = run.wait_for(run.err, r"damaged checkpoint: ")
    resumed = run.wait_for(run.out, rf"resumed from {re.escape(str(ckpts / f'step_{last - 1:06d}'))} at step {last - 1}")
    run.wait_for(run.out, r"saved checkpoint ", after=resumed)
    os.killpg(run.proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does
    code, out, err = run.finish()
    assert code == 130, err[-3000:]
    assert str(shard.relative_to(newest)) in run.err[warned] and "bytes, the manifest says" in run.err[warned]
    assert (ckpts / f"damaged-step_{last:06d}").is_dir()
    for noise in ("Traceback", "KeyboardInterrupt", "BrokenPipeError"):
        assert noise not in err, err[-3000:]
    assert [line for line in err.splitlines() if line.startswith("lockstep: stopped by SIGINT after step")]
    assert_nothing_left(mark)

    # Both runs together: every step once, each on the prompts of the uninterrupted data order.
    history = [h for h in read_history(cfg.run_dir) if "reward/mean" in h]
    steps = [h["step"] for h in history]
    assert steps == list(range(1, steps[-1] + 1)) and steps[-1] > last - 1
    assert checkpoint_step(cfg.run_dir) == steps[-1]
    order = DataOrder(len(load_examples(cfg.data.train)), cfg.seed, cfg.data.shuffle)
    per_step = cfg.rollout.prompts_per_step
    for h in history:
        expected = order.indices((h["step"] - 1) * per_step, per_step)
        assert h["data/prompt_hash"] == f"{zlib.crc32(json.dumps(expected).encode()):08x}"
    assert history[last - 1]["checkpoint/damaged_skipped"] == 1.0  # the first step after the resume
    summary = json.loads((cfg.run_dir / "summary.json").read_text())
    assert summary["stopped_by"] == "SIGINT" and len(summary["damaged_checkpoints_skipped"]) == 1
