"""Graceful stop: Ctrl-C, SIGTERM, `ray job stop`, a scheduler's preemption.

The first SIGINT or SIGTERM lets the step in progress finish; the driver then saves a checkpoint
at that step boundary (`schedule.save_on_stop`) and exits with the shell's code for the signal
(128 + signal number: 130 for SIGINT, 143 for SIGTERM). A second signal abandons the step: the
driver releases its actors and exits at once, and the run resumes from its last checkpoint.
During start-up there is no step to finish, so the first signal stops at once.

The handler raises `Abandoned`, a KeyboardInterrupt: Ray's `ray.get` polls for signals while it
waits and turns whatever KeyboardInterrupt a handler raises into a plain one (any other
exception would come out as a SystemError once the wait ends), so the CLI tells an abandoned run
from a stray Ctrl-C by asking this object which signals came.

Ray's `ray.init` installs its own SIGTERM handler in the driver (it exits with code 15 and no
checkpoint), so `install` must run again after Ray is up; `restore` puts back what was there.
"""

from __future__ import annotations

import signal
import sys

from rl import exit_codes

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Abandoned(KeyboardInterrupt):
    """Raised in the main thread where the driver stops at once (start-up, or a second signal)."""


class StopSignals:
    def __init__(self):
        self.received: list[int] = []  # signal numbers, in order
        self.finish_step = False  # True inside the loop: the first signal lets the step finish
        self.releasing = False  # True while the driver releases its actors: signals are noted, never raised
        self.previous: dict[int, object] = {}

    @property
    def requested(self) -> bool:
        return bool(self.received)

    @property
    def name(self) -> str:
        return signal.Signals(self.received[0]).name if self.received else ""

    @property
    def exit_code(self) -> int:
        """The shell's code for death by the first signal: 128 + its number."""
        return exit_codes.for_signal(self.received[0])

    def install(self) -> None:
        """Handles SIGINT and SIGTERM from now on (again after `ray.init`, which replaces the
        SIGTERM handler); the handlers found the first time are the ones `restore` puts back."""
        for sig in SIGNALS:
            old = signal.signal(sig, self._on_signal)
            self.previous.setdefault(sig, old)

    def restore(self) -> None:
        for sig, old in self.previous.items():
            signal.signal(sig, old)
        self.previous = {}

    def _on_signal(self, signum: int, frame) -> None:
        self.received.append(signum)
        name = signal.Signals(signum).name
        if self.releasing:
            return
        if self.finish_step and len(self.received) == 1:
            print(f"lockstep: {name}: finishing the current step, then checkpoint and exit "
                  f"(send {name} again to abandon the step)", file=sys.stderr, flush=True)
            return
        raise Abandoned()
