"""The exit codes of `lockstep` (one table; the CLI, the driver and the tests use these names).

| code    | name           | the run …                                                   | to go on            |
|---------|----------------|-------------------------------------------------------------|---------------------|
| 0       | OK             | finished (or the command did what it was asked)             | —                   |
| 2       | USER_ERROR     | did not start or stopped on bad input: recipe, data, model, | fix what the line   |
|         |                | checkpoint, or a checkpoint it could not write              | names, run again    |
| 3       | NONFINITE      | halted: faults.max_nonfinite_steps updates in a row were    | see nonfinite.json; |
|         |                | NaN/Inf (none applied; dump in <run_dir>/nonfinite.json)    | fix, run again      |
| 75      | ACTOR_FAILED   | lost an actor (dead or hung) with faults.max_restarts spent,| the same command    |
|         |                | or Ray did not start (rl.placement.RayUnavailable)          |                     |
|         |                | (sysexits EX_TEMPFAIL: a scheduler may requeue the job)     | (resumes)           |
| 128 + N | for_signal(N)  | stopped by signal N at a step boundary, checkpoint saved    | the same command    |
|         |                | (130 SIGINT, 143 SIGTERM: the shell's code for death by N)  | (resumes)           |
"""

OK = 0
USER_ERROR = 2
NONFINITE = 3
ACTOR_FAILED = 75
SIGNAL_BASE = 128


def for_signal(signum: int) -> int:
    """The shell's code for death by signal `signum`."""
    return SIGNAL_BASE + signum
