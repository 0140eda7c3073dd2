"""Helpers for the rewards tests: data loading, and reward functions for pool tests (importable
by worker processes, which get the test directory on sys.path from conftest.py)."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

from rewards import Reason, Score

# ../shared/data beside the repository root (CI keeps a copy of shared/ at the same place)
DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"


def load_jsonl(name: str) -> list[dict]:
    import pytest  # lazily: worker processes import this module for the reward functions only

    path = DATA / f"{name}.jsonl"
    if not path.exists():
        pytest.skip(f"{path} not found: the data sets live in ../shared/data beside the repository (DESIGN.md §11)")
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


class ScriptedReward:
    """The completion is a command, so a test can make any item slow, hang or crash:
    `value:X` -> Score(X, CORRECT, {"ref": reference}); `sleep:S`; `spin` (Python loop, the soft
    timeout interrupts it); `hang` (SIGALRM blocked, only the hard kill ends it); `exit`
    (os._exit); `segv` (SIGSEGV); `raise` (RuntimeError); `alloc` (allocates 64 GiB);
    `none` (returns None instead of a Score); `pid:S` (sleeps S seconds; the value is the worker's process id)."""

    def score(self, completion: str, reference: str) -> Score:
        cmd, _, arg = completion.partition(":")
        if cmd == "value":
            return Score(float(arg), Reason.CORRECT, {"ref": reference})
        if cmd == "sleep":
            time.sleep(float(arg))
            return Score(1.0, Reason.CORRECT, {"ref": reference})
        if cmd == "spin":
            while True:
                pass
        if cmd == "hang":
            signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGALRM])
            time.sleep(3600)
        if cmd == "exit":
            os._exit(3)
        if cmd == "segv":
            os.kill(os.getpid(), signal.SIGSEGV)
            time.sleep(10)
        if cmd == "raise":
            raise RuntimeError("boom")
        if cmd == "alloc":
            block = bytearray(64 << 30)
            return Score(float(len(block)), Reason.CORRECT, {})
        if cmd == "pid":
            time.sleep(float(arg))
            return Score(float(os.getpid()), Reason.CORRECT, {"ref": reference})
        if cmd == "none":
            return None  # type: ignore[return-value]
        return Score(0.0, Reason.WRONG, {"ref": reference})


def _fail_in_worker() -> ScriptedReward:
    raise RuntimeError("this reward function cannot be loaded")


class UnloadableReward:
    """Pickles fine in the driver, fails to unpickle in a worker."""

    def score(self, completion: str, reference: str) -> Score:
        return Score(0.0, Reason.WRONG, {})

    def __reduce__(self):
        return (_fail_in_worker, ())


class ExitsWhenLoaded:
    """Pickles fine in the driver; unpickling it in a worker ends the worker process at once
    (exit code 3), like a module that exits on import: no exception, no message, a dead worker."""

    def score(self, completion: str, reference: str) -> Score:
        return Score(0.0, Reason.WRONG, {})

    def __reduce__(self):
        return (os._exit, (3,))
