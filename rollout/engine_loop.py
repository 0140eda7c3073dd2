"""EngineLoop: a vLLM engine stepped in a thread of its own, so that work can be slotted between
its decode steps (asynchronous rollout, `rollout.max_staleness ≥ 2` or `rollout.partial`).

`LLM.generate` runs the engine until every request it was given has finished: nothing can reach
the engine meanwhile, and a weight update would have to wait for the longest sequence. Here one
thread calls `LLMEngine.step()` as long as requests are unfinished, and every other use of the
engine — adding requests, loading weights, the sync probe — waits for the step in progress to
end, runs, and lets the loop go on (`between_steps`). Sequences in flight keep their KV cache and
linear-attention state across a weight load and continue under the new weights.

Every token carries the weights version of the step that sampled it. vLLM ≥ 0.32 labels them
itself (`set_weight_version`; the finished output's `weight_versions` spans). Older vLLM (the
GPU kit's 0.26) has no labels: the loop then asks for cumulative outputs every step, counts each
completion's new tokens under the version it holds (`own_labels`), and hands the finished request
its completions with their spans — the same (version, count) pairs, since versions change only
between two steps, under `between_steps`.

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


def vllm_labels_versions(engine) -> bool:
    """Whether this vLLM labels each step's tokens with a weights version (0.32 and later)."""
    return hasattr(engine, "set_weight_version")


class EngineLoop:
    def __init__(self, engine):
        self.engine = engine  # vllm's LLMEngine (LLM.llm_engine)
        # vLLM labels tokens with weight versions (≥ 0.32), or the loop counts them (own_labels)
        self.own_labels = not vllm_labels_versions(engine)
        self.version = 0  # the weights the engine holds (the label of the next step's tokens)
        self.spans: dict[tuple[str, int], list[list[int]]] = {}  # (request, completion) → [[version, count], …]
        self.latest: dict[str, dict[int, object]] = {}  # request → completion index → its cumulative output
        if not self.own_labels:
            engine.set_weight_version("0")
        elif getattr(engine.vllm_config.scheduler_config, "stream_interval", 1) != 1:
            # outputs every k steps would lump tokens of two versions into one span
            raise RuntimeError("the engine loop labels tokens per step: it needs vLLM's stream_interval 1")
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
                    if self.own_labels:
                        self.count_tokens(out)
                    if out.finished:
                        self.finished[out.request_id] = out
                self.cond.notify_all()

    def output_kind(self):
        """The output kind of requests through the loop: one output when a request finishes, or,
        when the loop labels tokens itself, one per step with everything sampled so far."""
        from vllm.sampling_params import RequestOutputKind

        return RequestOutputKind.CUMULATIVE if self.own_labels else RequestOutputKind.FINAL_ONLY

    def set_version(self, version: int) -> None:
        """The weights version of the tokens of the following steps (call between steps)."""
        self.version = version
        if not self.own_labels:
            self.engine.set_weight_version(str(version))

    def count_tokens(self, out) -> None:
        """A step's cumulative output of one request: each completion's new tokens are of the
        version the engine held during the step. With n > 1 vLLM streams each completion alone
        (the parent's last output holds only the completion that finished last), so a finished
        request gets all its completions back here, each with its (version, count) spans."""
        rid = out.request_id
        latest = self.latest.setdefault(rid, {})
        for c in out.outputs:
            spans = self.spans.setdefault((rid, c.index), [])
            new = len(c.token_ids) - sum(count for _, count in spans)
            if new > 0:
                if spans and spans[-1][0] == self.version:
                    spans[-1][1] += new
                else:
                    spans.append([self.version, new])
            latest[c.index] = c
        if out.finished:
            out.outputs = [latest[i] for i in sorted(latest)]
            for c in out.outputs:
                c.lockstep_versions = tuple((v, n) for v, n in self.spans.pop((rid, c.index)))
            del self.latest[rid]

    def token_versions(self, completion) -> tuple[tuple[int, int], ...]:
        """(version, count) pairs of a finished completion's tokens, in token order."""
        if self.own_labels:
            return completion.lockstep_versions
        if completion.weight_versions is None:
            raise RuntimeError("vLLM returned no weight-version spans for a completion of the engine loop")
        return tuple((int(span.version), span.end - span.start) for span in completion.weight_versions)

    def forget(self, request_id: str) -> None:
        """Drops what the loop holds of an aborted request."""
        self.finished.pop(request_id, None)
        for index in self.latest.pop(request_id, {}):
            self.spans.pop((request_id, index), None)

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
