"""What a run does about faults it can survive, and how it stops on those it cannot.

- `Restarts`: the budget of actor restarts (`faults.max_restarts`) and the `restarts/*`
  counters. The driver restarts a dead or hung group (`rl.groups.ActorFailed`): rollout engines
  in place, the trainer group from the last checkpoint; past the budget it raises `RunStopped`.
- `NonFiniteGuard`: updates whose loss or gradient norm is NaN/Inf were not applied (the rank
  skipped its optimiser step, `trainer.worker`); it counts them, logs each with its prompt ids,
  and halts the run after `faults.max_nonfinite_steps` in a row with a diagnostic dump.

`RunStopped` carries one line for the user and an exit code (rl.exit_codes); the CLI prints it
with the command that resumes the run, never a traceback.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

from rl import exit_codes
from rl.groups import ActorFailed

log = logging.getLogger("lockstep.driver")

NONFINITE_DUMP = "nonfinite.json"


class RunStopped(RuntimeError):
    """The run stops: `str(self)` is the one line saying why; `resumable` when rerunning the
    same command continues it (from the last checkpoint)."""

    def __init__(self, message: str, exit_code: int, resumable: bool):
        super().__init__(message)
        self.exit_code, self.resumable = exit_code, resumable


class Restarts:
    def __init__(self, max_restarts: int):
        self.max_restarts = max_restarts
        self.counts = {"rollout": 0, "trainer": 0}
        self.steps_redone = 0

    def allow(self, failure: ActorFailed) -> None:
        """Counts a restart of `failure.group`; raises RunStopped when the budget is spent."""
        used = sum(self.counts.values())
        if used >= self.max_restarts:
            raise RunStopped(f"{failure} ({used} restart{'s' * (used != 1)} used, faults.max_restarts="
                             f"{self.max_restarts})", exit_codes.ACTOR_FAILED, resumable=True) from None
        self.counts[failure.group] += 1
        log.warning("%s: restarting the %s (restart %d of faults.max_restarts=%d)", failure,
                    "rollout engines" if failure.group == "rollout" else "trainer group", used + 1,
                    self.max_restarts)

    def metrics(self) -> dict[str, float]:
        """Cumulative over this `lockstep run`: restarts per group, steps run again."""
        return {"restarts/rollout": float(self.counts["rollout"]), "restarts/trainer": float(self.counts["trainer"]),
                "restarts/steps_redone": float(self.steps_redone)}


class NonFiniteGuard:
    def __init__(self, max_in_a_row: int, run_dir: Path):
        self.max_in_a_row, self.run_dir = max_in_a_row, run_dir
        self.bad: list[dict] = []  # the current streak, oldest first
        self.total = 0

    def check(self, step: int, m: dict[str, float], prompt_indices: list[int]) -> bool:
        """After an update: counts it if any of its mini-batches was skipped as non-finite and
        logs it with the batch's prompt ids; returns whether the weights changed."""
        if "train/nonfinite_skipped" not in m:  # no update this step: the streak neither grows nor ends
            return True
        skipped = m["train/nonfinite_skipped"]
        if skipped:
            self.total += 1
            self.bad.append({"step": step, "loss": finite_or_str(m["train/loss"]),
                             "grad_norm": finite_or_str(m["train/grad_norm"]),
                             "minibatches_skipped": int(skipped), "prompt_indices": prompt_indices})
            log.warning("step %d: non-finite update (loss %s, grad norm %s): %d mini-batch step(s) skipped, "
                        "weights unchanged by them; prompts %s (%d in a row; the run halts at "
                        "faults.max_nonfinite_steps=%d)", step, self.bad[-1]["loss"], self.bad[-1]["grad_norm"],
                        int(skipped), prompt_indices, len(self.bad), self.max_in_a_row)
        else:
            self.bad = []
        m["train/nonfinite_in_a_row"] = float(len(self.bad))
        m["train/nonfinite_total"] = float(self.total)
        return skipped < m["train/minibatches"]

    @property
    def halting(self) -> bool:
        """The last max_in_a_row updates were all non-finite: `halt_if_due` stops the run."""
        return len(self.bad) >= self.max_in_a_row

    def halt_if_due(self) -> None:
        """Raises RunStopped after max_in_a_row non-finite updates in a row, leaving the dump."""
        if not self.halting:
            return
        last, dump = self.bad[-1], self.run_dir / NONFINITE_DUMP
        dump.write_text(json.dumps({"halted_at_step": last["step"], "in_a_row": len(self.bad),
                                    "updates": self.bad}, indent=1))
        raise RunStopped(f"step {last['step']}: {len(self.bad)} updates in a row had a non-finite loss or gradient "
                         f"(last: loss {last['loss']}, grad norm {last['grad_norm']}); none was applied. "
                         f"Diagnostics: {dump}. Check the rewards and advantages or lower trainer.lr",
                         exit_codes.NONFINITE, resumable=True)


def finite_or_str(x: float) -> float | str:
    """JSON has no NaN/Inf: those become the strings 'nan', 'inf', '-inf'."""
    return x if math.isfinite(x) else str(x)
