"""The reward worker process: score items one at a time, in order, under a soft time limit.

Protocol over one duplex pipe (parent <-> this worker), all messages pickled bytes:
    worker -> parent   ("started", pid) on entry (past multiprocessing's start-up, which re-runs
                       the driver's __main__: a later death is not that), ("ready", pid, cpu)
                       once the reward function is loaded, then ("score", key, Score, cpu,
                       done_at) per item, in order, where cpu is this process's CPU seconds so far (the parent
                       tells a busy item from a starved one by the CPU it has used since) and
                       done_at its `time.monotonic()` (system-wide on Linux): the next queued
                       item's clock starts then, however late the parent reads the message;
                       ("fatal", message) if the reward function cannot be loaded.
    parent -> worker   (key, completion, reference) per item; b"" or EOF means exit.

Two time limits protect the driver:
- soft (here): SIGALRM via `setitimer` raises `SoftTimeout` (a BaseException, so the
  `except Exception` blocks inside math-verify and sympy do not swallow it) -> Score TIMEOUT and
  the worker lives on, no respawn needed;
- hard (in the parent, pool.py): a worker still busy at `timeout_s` is killed and replaced. This
  one also covers C code that never returns to the interpreter (huge integer powers), which no
  signal handler can interrupt.

Start-up cost: the forkserver preloads `rewards._preload` (math-verify imported and warmed up
once), so a worker is a cheap fork of a warm process; under "spawn" each worker imports it.
"""

from __future__ import annotations

import os
import pickle
import signal
import time
from typing import Any

from rewards.score import Reason, Score, clip


class SoftTimeout(BaseException):
    """Raised inside the reward function when the soft time limit passes."""


_armed = False


def _on_alarm(signum: int, frame: Any) -> None:
    if _armed:  # an alarm that lands after the item finished must not escape
        raise SoftTimeout()


def score_guarded(fn: Any, completion: str, reference: str, soft_timeout_s: float | None) -> Score:
    """`fn.score(...)` that always returns a Score: TIMEOUT after `soft_timeout_s`, CRASH on
    an exception or a non-Score result. Main thread only (signals)."""
    global _armed
    start = time.perf_counter()
    try:
        try:
            if soft_timeout_s:
                _armed = True
                signal.setitimer(signal.ITIMER_REAL, soft_timeout_s)
            result = fn.score(completion, reference)
        finally:
            _armed = False
            if soft_timeout_s:
                signal.setitimer(signal.ITIMER_REAL, 0)
    except SoftTimeout:
        return Score(0.0, Reason.TIMEOUT, {"timeout": "soft", "after_s": round(time.perf_counter() - start, 3)})
    except Exception as exc:  # noqa: BLE001 - the contract says never raise; count it instead
        return Score(0.0, Reason.CRASH, {"error": clip(f"{type(exc).__name__}: {exc}")})
    if not isinstance(result, Score):
        return Score(0.0, Reason.CRASH, {"error": f"reward function returned {type(result).__name__}, not Score"})
    try:
        return Score(float(result.value), Reason(result.reason), dict(result.details))
    except (TypeError, ValueError) as exc:
        return Score(0.0, Reason.CRASH, {"error": clip(f"malformed Score from reward function: {exc}")})


def _die_with_parent() -> None:
    """Ask Linux to SIGKILL us when our parent process goes away (best effort, Linux only)."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:
        pass


def _set_memory_limit(limit_mb: int | None) -> None:
    """Cap the address space at the current footprint + `limit_mb` (the footprint differs a lot
    between a bare worker and one whose forkserver preloaded torch, so an absolute cap is wrong)."""
    if limit_mb:
        import resource

        with open("/proc/self/statm") as f:
            current = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
        limit = current + (int(limit_mb) << 20)
        soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        if hard != resource.RLIM_INFINITY:
            limit = min(limit, hard)
        resource.setrlimit(resource.RLIMIT_AS, (limit, hard))


def _encode(msg: tuple) -> bytes:
    try:
        return pickle.dumps(msg, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as exc:  # a reward fn put something unpicklable in details
        kind, key, score, *clocks = msg
        safe = Score(float(score.value), Reason(score.reason), {"error": clip(f"details not picklable: {exc}")})
        return pickle.dumps((kind, key, safe, *clocks), protocol=pickle.HIGHEST_PROTOCOL)


def _send(conn: Any, msg: tuple) -> bool:
    """Sends to the parent; False when it is gone or has closed the pipe (it is stopping): the
    worker then exits quietly, without a BrokenPipeError traceback."""
    try:
        conn.send_bytes(pickle.dumps(msg))
        return True
    except OSError:
        return False


def worker_main(conn: Any, fn_bytes: bytes, soft_timeout_s: float | None, memory_limit_mb: int | None) -> None:
    """Entry point of a worker process (multiprocessing target)."""
    # Ctrl-C and SIGTERM are the driver's to handle: a terminal's Ctrl-C reaches the whole process
    # group and `ray job stop` signals the driver's children too, while the driver finishes its
    # step (which may still need these workers). A worker ends when the driver closes its pipe,
    # and the kernel kills it if the driver dies (_die_with_parent).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGALRM, _on_alarm)
    _die_with_parent()
    if not _send(conn, ("started", os.getpid())):
        return
    try:
        _set_memory_limit(memory_limit_mb)
        fn = pickle.loads(fn_bytes)
        import rewards._preload  # noqa: F401  (no-op when the forkserver preloaded it)
    except BaseException as exc:
        _send(conn, ("fatal", f"cannot load the reward function: {type(exc).__name__}: {exc}"))
        return
    if not _send(conn, ("ready", os.getpid(), time.process_time())):
        return
    while True:
        try:
            msg = conn.recv_bytes()
        except (EOFError, OSError):
            return
        if not msg:
            return
        key, completion, reference = pickle.loads(msg)
        score = score_guarded(fn, completion, reference, soft_timeout_s)
        try:
            conn.send_bytes(_encode(("score", key, score, time.process_time(), time.monotonic())))
        except (BrokenPipeError, OSError):
            return
