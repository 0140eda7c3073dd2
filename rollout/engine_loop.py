"""EngineLoop: a vLLM engine stepped in a thread of its own, so that work can be slotted between
its decode steps (asynchronous rollout, `rollout.max_staleness ≥ 2` or `rollout.partial`).

`LLM.generate` runs the engine until every request it was given has finished: nothing can reach
the engine meanwhile, and a weight update would have to wait for the longest sequence. Here one
thread calls `LLMEngine.step()` as long as requests are unfinished, and every other use of the
engine — adding requests, loading weights, the sync probe — waits for the step in progress to
end, runs, and lets the loop go on (`between_steps`). Sequences in flight keep their KV cache and
linear-attention state across a weight load and continue under the new weights; vLLM labels
every token with the weights version set at its step (`set_weight_version`; the finished
output's `weight_versions` spans).

The engine must run in this process (vLLM's in-process engine core): only then does `step()`
run the model, so no step can straddle a weight load. Finished requests are kept by request id
until their caller takes them.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import torch


class EngineLoop:
    def __init__(self, engine):
        self.engine = engine  # vllm's LLMEngine (LLM.llm_engine)
        self.cond = threading.Condition()
        self.waiting = 0  # callers waiting to use the engine between two steps
        self.stepping = False
        self.finished: dict[str, object] = {}  # finished RequestOutputs by request id, until taken
        self.error: BaseException | None = None  # what ended the loop, raised to every later caller
        self.steps = 0
        # OpenMP's thread count is per thread: the loop's must be the one the engine was built
        # with (vLLM's CPU attention checks it against its metadata's).
        self.threads = torch.get_num_threads()
        self.thread = threading.Thread(target=self.run, name="lockstep-engine-loop", daemon=True)
        self.thread.start()

    def run(self) -> None:
        torch._C.set_num_threads(self.threads)  # vLLM's CPU worker replaces torch.set_num_threads
        while True:
            with self.cond:
                # `waiting` first: a caller may be adding requests, so the engine is theirs now.
                while self.waiting or not self.engine.has_unfinished_requests():
                    self.cond.wait()
                self.stepping = True
            try:
                outputs = self.engine.step()
            except BaseException as e:  # the engine is broken: every waiting caller raises it
                with self.cond:
                    self.error, self.stepping = e, False
                    self.cond.notify_all()
                return
            with self.cond:
                self.stepping = False
                self.steps += 1
                for out in outputs:
                    if out.finished:
                        self.finished[out.request_id] = out
                self.cond.notify_all()

    def check(self) -> None:
        if self.error is not None:
            raise RuntimeError(f"the rollout engine's step loop failed: {self.error!r}") from self.error

    @contextmanager
    def between_steps(self) -> Iterator[object]:
        """The engine, once the step in progress has ended; the loop resumes on exit."""
        with self.cond:
            self.check()
            self.waiting += 1
            while self.stepping:
                self.cond.wait()
        try:
            yield self.engine
        finally:
            with self.cond:
                self.waiting -= 1
                self.cond.notify_all()

    def wait_for(self, request_ids: list[str]) -> list:
        """The finished outputs of `request_ids`, in that order, once all have finished."""
        with self.cond:
            while not all(r in self.finished for r in request_ids):
                self.check()
                self.cond.wait()
            return [self.finished.pop(r) for r in request_ids]

    def take(self, prefix: str, wait_s: float) -> list:
        """Every finished output whose request id starts with `prefix`, waiting up to `wait_s`
        for at least one (returns none if none finished by then)."""
        deadline = time.monotonic() + wait_s
        with self.cond:
            while True:
                self.check()
                ready = [r for r in self.finished if r.startswith(prefix)]
                left = deadline - time.monotonic()
                if ready or left <= 0:
                    return [self.finished.pop(r) for r in ready]
                self.cond.wait(left)
