"""BatchHandle: the future `RewardPool.submit` returns (scores land in input order)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from rewards.score import Score

logger = logging.getLogger(__name__)


class PoolClosed(RuntimeError):
    """The pool was closed (or broke) before a batch finished."""


class BatchHandle:
    """Future of one `RewardPool.submit` call: `result()` gives the scores in input order."""

    def __init__(self, n: int, pool: object | None):
        self._scores: list[Score | None] = [None] * n
        self._remaining = n
        self._error: BaseException | None = None
        self._event = threading.Event()
        self._callbacks: list[Callable[[BatchHandle], None]] = []
        self._lock = threading.Lock()
        self._pool = pool  # keeps the pool alive while the batch runs; dropped when done
        self.submitted_at = time.monotonic()
        self.finished_at: float | None = None
        if n == 0:
            self._finish()

    def __len__(self) -> int:
        return len(self._scores)

    def done(self) -> bool:
        return self._event.is_set()

    def result(self, timeout: float | None = None) -> list[Score]:
        """Block until every item is scored; TimeoutError if `timeout` seconds pass first."""
        if not self._event.wait(timeout):
            raise TimeoutError(f"batch of {len(self)} not scored within {timeout} s ({self._remaining} left)")
        if self._error is not None:
            raise PoolClosed(str(self._error)) from self._error
        return list(self._scores)  # type: ignore[arg-type]

    def add_done_callback(self, fn: Callable[[BatchHandle], None]) -> None:
        """Call `fn(handle)` when the batch is done (from the dispatcher thread, or now)."""
        with self._lock:
            if not self._event.is_set():
                self._callbacks.append(fn)
                return
        fn(self)

    # -- dispatcher side ---------------------------------------------------------------
    def _set(self, index: int, score: Score) -> bool:
        if self._scores[index] is not None or self._event.is_set():
            return False
        self._scores[index] = score
        self._remaining -= 1
        if self._remaining == 0:
            self._finish()
        return True

    def _fail(self, error: BaseException) -> None:
        if not self._event.is_set():
            self._error = error
            self._finish()

    def _finish(self) -> None:
        self.finished_at = time.monotonic()
        with self._lock:
            self._event.set()
            callbacks, self._callbacks = self._callbacks, []
        self._pool = None
        for fn in callbacks:
            try:
                fn(self)
            except Exception:
                logger.exception("BatchHandle callback failed")
